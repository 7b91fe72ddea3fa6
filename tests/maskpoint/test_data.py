"""Mask Point R-CNN's contour-point targets in the data loader (item 7 of issue 12): ContourPointDatasetMapper samples
them per instance after augmentation, and the Trainer's loaders use the mapper INPUT.DATASET_MAPPER_NAME names."""

import pytest
import torch

from tests.utils import TINY, importorskip_detectron2

importorskip_detectron2()

from detectron2.data import DatasetCatalog  # noqa: E402
from detectron2.structures import BoxMode  # noqa: E402

from instseg.config import get_cfg  # noqa: E402
from instseg.data.datasets import register_synthetic_from_cfg  # noqa: E402
from instseg.engine import Trainer, UserError  # noqa: E402
from instseg.engine.trainer import build_mapper  # noqa: E402
from maskpoint.modeling import (
    ContourPointDatasetMapper,  # noqa: E402
    contour_keypoints,  # noqa: E402
)
from tests.maskpoint.test_roi_heads import CONFIG  # noqa: E402


def make_cfg(*opts):
    cfg = get_cfg()
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list(
        TINY + ["MODEL.MASK_POINT.NUM_POINTS", "16", "MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS", "17", *opts]
    )
    return cfg


@pytest.fixture
def train_dicts(datasets_dir):
    cfg = make_cfg()
    register_synthetic_from_cfg(cfg)
    return DatasetCatalog.get("synthetic_instances_train")


def test_mapper_samples_the_points_of_the_augmented_masks(train_dicts):
    # the images are doubled in size and flipped half the time: the points must follow
    cfg = make_cfg("INPUT.MIN_SIZE_TRAIN", "(192,)", "INPUT.MAX_SIZE_TRAIN", "192", "INPUT.RANDOM_FLIP", "horizontal")
    mapper = build_mapper(cfg, is_train=True)
    assert isinstance(mapper, ContourPointDatasetMapper)
    n = 0
    for d in train_dicts:
        inst = mapper(d)["instances"]
        assert inst.image_size == (192, 192)
        kp = inst.gt_keypoints.tensor
        assert kp.shape == (len(inst), 17, 3)
        if len(inst):
            torch.testing.assert_close(kp, contour_keypoints(inst.gt_masks, (192, 192), 16).tensor)
            # every contour point lies on its (augmented) mask's box
            box = inst.gt_masks.get_bounding_boxes().tensor
            assert torch.all((kp[..., 0] >= box[:, None, 0]) & (kp[..., 0] <= box[:, None, 2]))
            assert torch.all((kp[..., 1] >= box[:, None, 1]) & (kp[..., 1] <= box[:, None, 3]))
            n += len(inst)
    assert n > 10


@pytest.mark.parametrize("sampling,center", [("corner", "mass"), ("uniform", "box")])
def test_mapper_samples_as_the_config_says(train_dicts, sampling, center):
    """Table VI / VII switches reach the mapper: its points are those of the configured sampling and centre, which
    differ from the default's."""
    mapper = build_mapper(make_cfg("MODEL.MASK_POINT.SAMPLING", sampling, "MODEL.MASK_POINT.CENTER", center), True)
    d = next(d for d in train_dicts if len(d["annotations"]) > 1)
    inst = mapper(d)["instances"]
    kp = inst.gt_keypoints.tensor
    want = contour_keypoints(inst.gt_masks, inst.image_size, 16, sampling, True, center).tensor
    default = contour_keypoints(inst.gt_masks, inst.image_size, 16).tensor
    torch.testing.assert_close(kp, want)
    assert not torch.allclose(kp, default)


def test_mapper_refuses_heads_that_are_not_mask_points():
    with pytest.raises(ValueError, match="MaskPointROIHeads"):
        build_mapper(make_cfg("MODEL.ROI_HEADS.NAME", "StandardROIHeads"), True)


def test_mapper_edge_cases_are_clear(train_dicts):
    mapper = build_mapper(make_cfg(), is_train=True)
    d = dict(train_dicts[0], annotations=[])
    assert mapper(d)["instances"].gt_keypoints.tensor.shape == (0, 17, 3)
    no_masks = dict(
        train_dicts[0], annotations=[{"bbox": [10, 10, 40, 40], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0}]
    )
    with pytest.raises(ValueError, match="no 'segmentation'"):
        mapper(no_masks)
    test_out = build_mapper(make_cfg(), is_train=False)(train_dicts[0])  # inference: DatasetMapper's
    assert "instances" not in test_out and test_out["image"].shape[-2:] == (96, 96)


def test_trainer_loaders_use_the_configured_mapper(train_dicts):
    cfg = make_cfg()
    batch = next(iter(Trainer.build_train_loader(cfg)))
    assert len(batch) == cfg.SOLVER.IMS_PER_BATCH
    for d in batch:
        inst = d["instances"]
        assert inst.gt_keypoints.tensor.shape == (len(inst), 17, 3)
    # MODEL.KEYPOINT_ON is True, but the synthetic dataset has no keypoint metadata: detectron2's own mapper would
    # ask for its flip map; the configured one does not
    item = next(iter(Trainer.build_test_loader(cfg, "synthetic_instances_val")))[0]
    assert item["image"].shape[-2:] == (96, 96)
    cfg.INPUT.DATASET_MAPPER_NAME = "ContourPointMapper"
    with pytest.raises(UserError, match="registered: .*ContourPointDatasetMapper.*DatasetMapper"):
        Trainer.build_train_loader(cfg)
