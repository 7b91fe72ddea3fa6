"""The shipped Mask Point configs against the paper's training strategy (Sec. IV-A/B), measured in epochs of the
paper's Cityscapes train split, and their Mask R-CNN baselines trained the same way (the paper compares them so)."""

import os

import numpy as np
import pytest
import torch

from tests.utils import importorskip_detectron2

importorskip_detectron2()

from detectron2.data import transforms as T  # noqa: E402
from detectron2.data.datasets.builtin_meta import _get_builtin_metadata  # noqa: E402
from detectron2.solver import build_lr_scheduler  # noqa: E402

from instseg.config import get_cfg  # noqa: E402
from instseg.engine import Trainer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MASKPOINT = os.path.join(ROOT, "configs", "MaskPoint")
BASELINES = os.path.join(ROOT, "configs", "Baselines")

# Sec. IV-A: Cityscapes' 5000 finely annotated images are split 2975 / 500 / 1525 (train / val / test)
CITYSCAPES_TRAIN_IMAGES = 2975
# Sec. IV-B: 4 images per batch; shorter side sampled from [800, 1024]; horizontal flip with probability 0.5;
# 64 epochs, LR 0.005 for the first 48 and 0.0005 for the last 16; SGD, momentum 0.9, weight decay 1e-4
PAPER = dict(
    batch=4,
    short_side=(800, 1024),
    flip_prob=0.5,
    epochs=64,
    lr=0.005,
    drop_epoch=48,
    lr_after=0.0005,
    momentum=0.9,
    weight_decay=1e-4,
)

# (Mask Point config, its Mask R-CNN baseline): same data, schedule and input pipeline
PAIRS = [
    ("mask_point_rcnn_R_50_FPN_cityscapes.yaml", "mask_rcnn_R_50_FPN_cityscapes.yaml"),
    ("mask_point_rcnn_R_50_FPN_1x.yaml", "mask_rcnn_R_50_FPN_1x.yaml"),
    ("mask_point_rcnn_R_18_FPN_synthetic.yaml", "mask_rcnn_R_18_FPN_synthetic.yaml"),
]


def load(path):
    cfg = get_cfg()
    cfg.merge_from_file(path)
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def test_every_mask_point_config_is_checked():
    shipped = {f for f in os.listdir(MASKPOINT) if f.endswith(".yaml") and not f.startswith("Base-")}
    assert shipped == {mp for mp, _ in PAIRS}


def test_cityscapes_schedule_is_sec_4b_in_epochs():
    cfg = load(os.path.join(MASKPOINT, "mask_point_rcnn_R_50_FPN_cityscapes.yaml"))
    assert cfg.DATASETS.TRAIN == ("cityscapes_fine_instance_seg_train",)
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == len(_get_builtin_metadata("cityscapes")["thing_classes"])
    batch = cfg.SOLVER.IMS_PER_BATCH
    assert batch == PAPER["batch"]
    iters_per_epoch = CITYSCAPES_TRAIN_IMAGES / batch

    # the optimizer and LR schedule the Trainer builds, stepped through the whole run
    optimizer = Trainer.build_optimizer(cfg, torch.nn.Linear(2, 2))
    assert isinstance(optimizer, torch.optim.SGD)
    group = optimizer.param_groups[0]
    assert group["momentum"] == PAPER["momentum"] and group["weight_decay"] == pytest.approx(PAPER["weight_decay"])
    scheduler = build_lr_scheduler(cfg, optimizer)
    lrs = []
    for _ in range(cfg.SOLVER.MAX_ITER):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    lrs = np.array(lrs)
    epochs = len(lrs) / iters_per_epoch
    assert abs(epochs - PAPER["epochs"]) * iters_per_epoch < 1  # 64 epochs, to the iteration
    warmup = cfg.SOLVER.WARMUP_ITERS
    assert warmup < iters_per_epoch  # a linear warm-up within the first epoch (not in the paper), then its LR
    dropped = warmup + np.flatnonzero(lrs[warmup:] < PAPER["lr"] / 2)
    assert abs(dropped[0] / iters_per_epoch - PAPER["drop_epoch"]) * iters_per_epoch < 1  # the drop after epoch 48
    np.testing.assert_allclose(lrs[warmup : dropped[0]], PAPER["lr"])
    np.testing.assert_allclose(lrs[dropped[0] :], PAPER["lr_after"])  # the last 16 epochs
    assert np.array_equal(dropped, np.arange(dropped[0], len(lrs)))


def test_cityscapes_augmentations_are_sec_4b():
    """The training mapper's augmentations: shorter side uniform in [800, 1024] (any size, not a few choices),
    longer side within Cityscapes' 2048, horizontal flip half the time, nothing else."""
    cfg = load(os.path.join(MASKPOINT, "mask_point_rcnn_R_50_FPN_cityscapes.yaml"))
    from instseg.engine.trainer import build_mapper  # the mapper of the Trainer's train loader

    augs = build_mapper(cfg, is_train=True).augmentations.augs
    assert [type(a) for a in augs] == [T.ResizeShortestEdge, T.RandomFlip]
    resize, flip = augs
    image = np.zeros((1024, 2048, 3), dtype=np.uint8)  # a Cityscapes frame
    np.random.seed(0)
    shorter, longer, flipped = [], [], 0
    for _ in range(2000):
        t = resize.get_transform(image)
        shorter.append(min(t.new_h, t.new_w))
        longer.append(max(t.new_h, t.new_w))
        ft = flip.get_transform(image)
        flipped += isinstance(ft, T.HFlipTransform)
        assert isinstance(ft, (T.HFlipTransform, T.NoOpTransform))
    lo, hi = PAPER["short_side"]
    assert lo <= min(shorter) < lo + 5 and hi - 5 < max(shorter) <= hi
    assert len(set(shorter)) > 150  # sampled from the range
    assert max(longer) <= 2048
    assert abs(flipped / 2000 - PAPER["flip_prob"]) < 0.05


@pytest.mark.parametrize("mask_point,baseline", PAIRS, ids=[b for _, b in PAIRS])
def test_baseline_is_trained_as_mask_point(mask_point, baseline):
    mp = load(os.path.join(MASKPOINT, mask_point))
    base = load(os.path.join(BASELINES, baseline))
    assert mp.SOLVER == base.SOLVER
    assert mp.DATASETS == base.DATASETS and mp.DATALOADER == base.DATALOADER
    # the same input pipeline; only the mapper differs (Mask Point's also samples the contour points)
    mp_input, base_input = mp.INPUT.clone(), base.INPUT.clone()
    assert (mp_input.pop("DATASET_MAPPER_NAME"), base_input.pop("DATASET_MAPPER_NAME")) == (
        "ContourPointDatasetMapper",
        "DatasetMapper",
    )
    assert mp_input == base_input
    assert (mp.MODEL.WEIGHTS, mp.MODEL.RESNETS, mp.MODEL.ROI_HEADS.NUM_CLASSES) == (
        base.MODEL.WEIGHTS,
        base.MODEL.RESNETS,
        base.MODEL.ROI_HEADS.NUM_CLASSES,
    )
    assert mp.MODEL.ROI_HEADS.NAME == "MaskPointROIHeads" and base.MODEL.ROI_HEADS.NAME == "StandardROIHeads"
