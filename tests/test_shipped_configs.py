"""Every shipped config (not the Base-* files) builds and trains a step on small images, with class-agnostic and
class-specific mask heads alike, and predicts standard Instances; the step reaches every trainable parameter, as DDP
(``--num-gpus N``) requires."""

import glob
import os

import pytest
import torch

from tests.utils import SMALL_TEST, importorskip_detectron2, synthetic_batch, with_contour_targets

importorskip_detectron2()

from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from instseg.config import get_cfg  # noqa: E402
from instseg.engine import Trainer  # noqa: E402
from tools.benchmark_inference import calibrate_frozen_bn  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(
    os.path.relpath(p, os.path.join(ROOT, "configs"))
    for p in glob.glob(os.path.join(ROOT, "configs", "*", "*.yaml"))
    if not os.path.basename(p).startswith("Base-")
)
SMALL = [
    *SMALL_TEST,
    "MODEL.HRNET.PRETRAINED",  # timm's ImageNet weights: nothing is downloaded in tests
    "False",
    "INPUT.MIN_SIZE_TRAIN",
    "(96,)",
    "INPUT.MAX_SIZE_TRAIN",
    "96",
    # few RoIs and detections: the mask heads' cost grows with them, and one step proves the wiring as well
    "MODEL.RPN.POST_NMS_TOPK_TRAIN",
    "64",
    "MODEL.RPN.POST_NMS_TOPK_TEST",
    "32",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
    "32",
    "TEST.DETECTIONS_PER_IMAGE",
    "8",
]


def _with_targets(batch, cfg):
    if cfg.MODEL.ROI_HEADS.NAME == "MaskPointROIHeads":  # contour points, as its data-loader mapper gives them
        return with_contour_targets(batch, cfg)
    # sem_seg, as PanopticDatasetMapper gives it: the things' classes over one stuff class (the synthetic panoptic
    # ids: 5); Panoptic FPN's separated ids: every thing 0, the stuff 1
    panoptic_fpn = cfg.MODEL.META_ARCHITECTURE == "PanopticFPN"
    semantic = cfg.MODEL.META_ARCHITECTURE == "SemanticSegmentor" or (
        cfg.MODEL.META_ARCHITECTURE == "CASNet" and cfg.MODEL.CASNET.PANOPTIC
    )
    if panoptic_fpn or semantic:
        for d in batch:
            sem = torch.full(d["image"].shape[1:], 1 if panoptic_fpn else 5, dtype=torch.int64)
            for m, c in zip(d["instances"].gt_masks.tensor, d["instances"].gt_classes):
                sem[m] = 0 if panoptic_fpn else c
            d["sem_seg"] = sem
    return batch


@pytest.mark.parametrize("cls_agnostic", [True, False], ids=["agnostic_mask", "class_mask"])
@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_config_builds_trains_a_step_and_predicts(name, cls_agnostic):
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(ROOT, "configs", name))
    cfg.merge_from_list(SMALL + ["MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK", str(cls_agnostic)])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    images = [{k: v for k, v in d.items() if k != "instances"} for d in synthetic_batch(1, empty=())]
    # random weights behind FrozenBN blow the activations up (pretrained statistics would not): normalise them on
    # the image, as the inference benchmark does; predict before the step, whose BN statistics come from 2 images
    calibrate_frozen_bn(model, images)
    with torch.no_grad():
        out = model(images)
    if cfg.MODEL.META_ARCHITECTURE == "SemanticSegmentor":  # CASNet's external semantic model: sem_seg only
        assert out[0]["sem_seg"].shape == (cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, 96, 96)
        model.train()
        with EventStorage(0):
            losses = model(_with_targets(synthetic_batch(2, empty=(1,)), cfg))
        assert set(losses) == {"loss_sem_seg"} and torch.isfinite(losses["loss_sem_seg"])
        return
    fields = set(out[0]["instances"].get_fields())
    assert {"pred_boxes", "scores", "pred_classes"} <= fields
    assert ("pred_masks" in fields) == cfg.MODEL.MASK_ON
    model.train()
    with EventStorage(0):
        losses = model(_with_targets(synthetic_batch(2, empty=(1,)), cfg))
    assert losses and all(torch.isfinite(v) for v in losses.values())
    Trainer.build_optimizer(cfg, model)  # the config's solver builds (clipping, optimizer)
    mask_losses = [k for k in losses if k.startswith("loss_mask")]
    if cfg.MODEL.RDSNET.MBRM_STAGE:  # RDSNet's second stage trains MBRM alone (Sec. 3.4)
        assert set(losses) == {"loss_refine"}
    elif cfg.MODEL.META_ARCHITECTURE == "CASNet":  # masks from clustering: Eq. 4's three losses
        assert set(losses) == {"loss_sem", "loss_common", "loss_prob"}
    else:
        assert bool(mask_losses) == cfg.MODEL.MASK_ON
    sum(losses.values()).backward()
    # DDP's condition for --num-gpus N: the step reaches every trainable parameter
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
