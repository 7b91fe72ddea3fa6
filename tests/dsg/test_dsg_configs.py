"""The shipped DSG configs against the paper's recipe (Sec. 4.1), and the COCO cascade config trains a step."""

import math
import os

import pytest
import torch

from tests.utils import importorskip_detectron2, synthetic_batch

importorskip_detectron2()

from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from instseg.config import get_cfg  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Sec. 4.1: "batch size 16 for 12 epochs/90k iterations": the paper's epoch is 90k * 16 / 12 images
IMAGES_PER_EPOCH = 90000 * 16 / 12


def load(name):
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(ROOT, "configs", name))
    return cfg


def epochs(cfg, iters):
    return iters * cfg.SOLVER.IMS_PER_BATCH / IMAGES_PER_EPOCH


# config -> (epochs, the epochs in which the LR drops, batch, LR): Sec. 4.1 ("multiplied by 0.1 at 8th epoch/60k
# iteration and 11th epoch/80k iteration": 80k iterations are 10.67 epochs, within the 11th)
RECIPES = {
    "DSG/dsg_R_50_FPN_1x.yaml": (12, (8, 11), 16, 0.02),
    "DSG/mask_rcnn_R_50_FPN_1x.yaml": (12, (8, 11), 16, 0.02),
    "DSG/dsg_light_R_50_FPN_1x.yaml": (12, (8, 11), 16, 0.02),
    "DSG/dsg_R_101_FPN_1x.yaml": (12, (8, 11), 16, 0.02),
    "DSG/dsg_R_50_FPN_2x.yaml": (24, (16, 22), 16, 0.02),  # 2x: 180k iterations, drops at 120k and 160k
    "DSG/dsg_X_101_32x8d_FPN_1x.yaml": (12, (8, 11), 8, 0.01),  # large models: batch 8, LR 0.01
    "DSG/cascade_dsg_R_50_FPN_20e.yaml": (20, (16, 19), 16, 0.02),  # cascade: 20 epochs, drops at 16 and 19
    "Baselines/cascade_mask_rcnn_R_50_FPN_20e.yaml": (20, (16, 19), 16, 0.02),
}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_dsg_configs_follow_sec41(name):
    cfg = load(name)
    total, drops, batch, lr = RECIPES[name]
    s = cfg.SOLVER
    assert (s.IMS_PER_BATCH, s.BASE_LR, s.MOMENTUM, s.WEIGHT_DECAY) == (batch, lr, 0.9, 0.0001)
    assert epochs(cfg, s.MAX_ITER) == pytest.approx(total)
    assert [math.ceil(epochs(cfg, x) - 1e-6) for x in s.STEPS] == list(drops)
    assert s.GAMMA == 0.1
    # "The long edge and short edge of images are resized to 1333 and 800": one scale, in training too
    i = cfg.INPUT
    assert (tuple(i.MIN_SIZE_TRAIN), i.MAX_SIZE_TRAIN, i.MIN_SIZE_TEST, i.MAX_SIZE_TEST) == ((800,), 1333, 800, 1333)
    # evaluation: score threshold 0.001 at the last box head, NMS 0.5
    assert (cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST, cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST) == (0.001, 0.5)


@pytest.mark.parametrize(
    "method,baseline",
    [
        ("DSG/dsg_R_50_FPN_1x.yaml", "DSG/mask_rcnn_R_50_FPN_1x.yaml"),
        ("DSG/cascade_dsg_R_50_FPN_20e.yaml", "Baselines/cascade_mask_rcnn_R_50_FPN_20e.yaml"),
    ],
)
def test_dsg_and_its_baseline_share_the_recipe(method, baseline):
    a, b = load(method), load(baseline)
    for node in ("SOLVER", "INPUT", "DATASETS", "DATALOADER", "TEST"):
        assert a[node] == b[node], node
    for key in ("WEIGHTS", "RESNETS", "FPN", "RPN", "ROI_BOX_HEAD", "ROI_MASK_HEAD"):
        assert a.MODEL[key] == b.MODEL[key], key
    mask_rcnn = build_model(_cpu(b)).roi_heads
    assert type(mask_rcnn).__name__ in ("StandardROIHeads", "DSGROIHeads", "CascadeROIHeads")
    assert getattr(mask_rcnn, "mpn", None) is None


def _cpu(cfg, *opts):
    cfg.merge_from_list(["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", *opts])
    return cfg


def test_cascade_dsg_coco_config_trains_a_step_with_its_class_specific_masks():
    """configs/DSG/cascade_dsg_R_50_FPN_20e.yaml (80 classes, class-specific masks) used to stop within a few
    iterations with "IndexError: index 80 is out of bounds for dimension 1 with size 80"."""
    cfg = _cpu(load("DSG/cascade_dsg_R_50_FPN_20e.yaml"), "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "96")
    assert not cfg.MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK and cfg.MODEL.ROI_HEADS.NUM_CLASSES == 80
    torch.manual_seed(0)
    model = build_model(cfg).train()
    with EventStorage(0):
        losses = model(synthetic_batch(2, empty=()))
    assert {"loss_mask_stage0", "loss_mask_stage1", "loss_mask_stage2"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
