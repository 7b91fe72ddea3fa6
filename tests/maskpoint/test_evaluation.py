"""Mask Point R-CNN Table VII's AP_keypoint: ContourKeypointEvaluator scores predicted contour points against
contour points sampled, as the training targets are, from the ground-truth masks of a COCO-format dataset."""

import functools
import json

import cv2
import numpy as np
import pytest
import torch

from tests.utils import importorskip_detectron2

importorskip_detectron2()

from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.data.datasets import register_coco_instances  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402
from pycocotools import mask as mask_util  # noqa: E402

from maskpoint import sample_contour_points  # noqa: E402
from maskpoint.evaluation import ContourKeypointEvaluator  # noqa: E402

SIZE = 128


def _disc(cx, cy, r):
    m = np.zeros((SIZE, SIZE), np.uint8)
    cv2.circle(m, (cx, cy), r, 1, -1)
    return m


def _rotated_rectangle(cx, cy, w, h, angle):
    m = np.zeros((SIZE, SIZE), np.uint8)
    cv2.fillPoly(m, [cv2.boxPoints(((cx, cy), (w, h), angle)).astype(np.int32)], 1)
    return m


def _star(cx, cy, outer, inner):
    a = np.pi * np.arange(10) / 5 - np.pi / 2
    rad = np.where(np.arange(10) % 2 == 0, outer, inner)
    m = np.zeros((SIZE, SIZE), np.uint8)
    cv2.fillPoly(m, [np.stack([cx + rad * np.cos(a), cy + rad * np.sin(a)], 1).round().astype(np.int32)], 1)
    return m


def _l_shape(x0, y0):
    m = np.zeros((SIZE, SIZE), np.uint8)
    m[y0 : y0 + 50, x0 : x0 + 18] = 1
    m[y0 + 32 : y0 + 50, x0 : x0 + 55] = 1
    return m


# (image id, category id, mask): two images, two classes, convex and concave shapes, two instances per image
INSTANCES = [
    (1, 1, _disc(40, 45, 26)),
    (1, 2, _star(90, 80, 34, 15)),
    (2, 2, _rotated_rectangle(60, 40, 70, 26, 25)),
    (2, 1, _l_shape(20, 70)),
]


def _xywh(mask):
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A tiny COCO-format dataset registered the detectron2 way; its name."""
    root = tmp_path_factory.mktemp("contour_coco")
    anns = []
    for i, (image_id, cat, mask) in enumerate(INSTANCES):
        rle = mask_util.encode(np.asfortranarray(mask))
        rle["counts"] = rle["counts"].decode()
        anns.append(
            {
                "id": i + 1,
                "image_id": image_id,
                "category_id": cat,
                "iscrowd": 0,
                "segmentation": rle,
                "bbox": _xywh(mask),
                "area": float(mask.sum()),
            }
        )
    coco = {
        "images": [{"id": i, "file_name": f"{i}.png", "width": SIZE, "height": SIZE} for i in (1, 2)],
        "annotations": anns,
        "categories": [{"id": 1, "name": "round"}, {"id": 2, "name": "pointy"}],
    }
    (root / "instances.json").write_text(json.dumps(coco))
    name = "maskpoint_test_contour_coco"
    register_coco_instances(name, {}, str(root / "instances.json"), str(root))
    DatasetCatalog.get(name)  # as training does: sets the dataset -> contiguous category id mapping
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _evaluate(name, sample, points_of, evaluator=None):
    """AP_keypoint of predictions that are the ground-truth instances (boxes, classes) with keypoints
    ``points_of(mask)`` ((k [+ 1], 2) image coordinates, detectron2's convention)."""
    if evaluator is None:
        evaluator = ContourKeypointEvaluator(name, oks_sigmas=(0.025,), **sample)
    evaluator.reset()
    contiguous = MetadataCatalog.get(name).thing_dataset_id_to_contiguous_id
    for image_id in (1, 2):
        mine = [(cat, mask) for i, cat, mask in INSTANCES if i == image_id]
        inst = Instances((SIZE, SIZE))
        boxes = [_xywh(m) for _, m in mine]
        inst.pred_boxes = Boxes(torch.tensor([[x, y, x + w, y + h] for x, y, w, h in boxes]))
        inst.scores = torch.tensor([0.9, 0.8])
        inst.pred_classes = torch.tensor([contiguous[cat] for cat, _ in mine])
        kps = torch.tensor(np.stack([points_of(m) for _, m in mine]), dtype=torch.float32)
        inst.pred_keypoints = torch.cat([kps, torch.ones(*kps.shape[:2], 1)], dim=2)
        evaluator.process([{"image_id": image_id}], [{"instances": inst}])
    return evaluator.evaluate()["keypoints"]["AP"]


SAMPLINGS = [
    dict(num_points=40, sampling="uniform", with_center=True, center="mass"),
    dict(num_points=24, sampling="corner", with_center=False, center="mass"),
    # few points, so that the centre weighs 1/9 of the OKS: the box centre of the L-shape is far from its centroid
    dict(num_points=8, sampling="uniform", with_center=True, center="box"),
]


@pytest.mark.parametrize("sample", SAMPLINGS, ids=lambda s: f"{s['sampling']}{s['num_points']}-{s['center']}")
def test_table7_ap_keypoint_ground_truth_points_score_100(dataset, sample):
    ap = _evaluate(dataset, sample, lambda m: sample_contour_points(m, **sample))
    assert ap == pytest.approx(100.0)


@pytest.mark.parametrize("sample", SAMPLINGS[:2], ids=lambda s: s["sampling"])
def test_table7_ap_keypoint_falls_with_the_shift_of_the_points(dataset, sample):
    # every point moved by (d, d / 2) pixels: OKS = exp(-1.25 d^2 / (2 area (2 sigma)^2)) with sigma = 0.025 is,
    # for these 1566-2121 px^2 instances, 0.85-0.89 at d = 1 (above some of COCO's OKS thresholds 0.5:0.95, below
    # others) and 0.24-0.35 at d = 3 (below all): AP falls with the shift
    def shifted(d):
        return lambda m: sample_contour_points(m, **sample) + np.float32([d, d / 2])

    ap_small, ap_large = _evaluate(dataset, sample, shifted(1.0)), _evaluate(dataset, sample, shifted(3.0))
    assert 0.0 < ap_small < 100.0
    assert ap_large == 0.0


@pytest.mark.parametrize("sample", SAMPLINGS[:2], ids=lambda s: s["sampling"])
def test_table7_ap_keypoint_needs_the_contour_order(dataset, sample):
    # the right points in the wrong order (contour rolled by k/2: each keypoint on the opposite side) score ~0
    k = sample["num_points"]

    def rolled(m):
        pts = sample_contour_points(m, **sample)
        return np.concatenate([np.roll(pts[:k], k // 2, axis=0), pts[k:]])

    assert _evaluate(dataset, sample, rolled) < 5.0


def test_table7_ap_keypoint_evaluator_from_config_samples_as_the_config_says(dataset):
    from detectron2.config import get_cfg

    from maskpoint import add_maskpoint_config

    cfg = get_cfg()
    add_maskpoint_config(cfg)
    cfg.MODEL.MASK_POINT.NUM_POINTS = 8
    cfg.MODEL.MASK_POINT.SAMPLING = "corner"
    cfg.MODEL.MASK_POINT.WITH_CENTER = False
    cfg.MODEL.MASK_POINT.OKS_SIGMAS = [0.03] * 8
    corner = dict(num_points=8, sampling="corner", with_center=False)
    uniform = dict(corner, sampling="uniform")
    ap = {
        name: _evaluate(
            dataset,
            None,
            functools.partial(sample_contour_points, **sample),
            ContourKeypointEvaluator.from_config(cfg, dataset),
        )
        for name, sample in (("corner", corner), ("uniform", uniform))
    }
    assert ap["corner"] == pytest.approx(100.0) and ap["uniform"] < 50.0
    cfg.MODEL.MASK_POINT.OKS_SIGMAS = [0.03] * 9  # one per keypoint means 8 here
    with pytest.raises(ValueError, match="OKS_SIGMAS needs 1 or 8 values"):
        ContourKeypointEvaluator.from_config(cfg, dataset)
