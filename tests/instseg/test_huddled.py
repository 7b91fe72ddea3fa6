"""DSG Appendix 6.1 (Table 4): huddled-image selection by T_O / T_P and AP as the mean over instances."""

import math

import numpy as np
import pytest

from instseg.evaluation.huddled import (
    _coco,
    format_grid,
    huddled_fraction,
    huddled_grid,
    instance_mean_ap,
    select_huddled_images,
)


def _dataset():
    # image 1: two boxes with IoU 1/3 (10x10 at x=0 and x=5) and a far one -> huddled fraction 2/3 at T_O < 1/3
    # image 2: two boxes with IoU 1/7 (x=0 and x=15 of width 20... computed below) -> 1.0 at T_O < 1/7
    # image 3: one lone instance -> huddled only for T_O < 0
    # image 4: no instance; image 5: a crowd region over an instance (crowds are not instances)
    anns = [
        (1, [0, 0, 10, 10]),
        (1, [5, 0, 10, 10]),
        (1, [50, 50, 10, 10]),
        (2, [0, 0, 20, 10]),
        (2, [15, 0, 20, 10]),
        (3, [0, 0, 10, 10]),
        (5, [0, 0, 10, 10]),
    ]
    annotations = [
        {"id": i + 1, "image_id": im, "bbox": b, "category_id": 1 + (i % 2), "iscrowd": 0, "area": b[2] * b[3]}
        for i, (im, b) in enumerate(anns)
    ]
    annotations.append({"id": 100, "image_id": 5, "bbox": [0, 0, 12, 12], "category_id": 1, "iscrowd": 1, "area": 144})
    return {
        "images": [{"id": i, "width": 100, "height": 100} for i in range(1, 6)],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }


def test_dsg_appendix_known_ious():
    assert huddled_fraction([[0, 0, 10, 10], [5, 0, 10, 10], [50, 50, 10, 10]], 0.3) == pytest.approx(2 / 3)
    assert huddled_fraction([[0, 0, 10, 10], [5, 0, 10, 10], [50, 50, 10, 10]], 1 / 3) == 0.0  # IoU > T_O strictly
    # IoU of [0,20]x[0,10] and [15,35]x[0,10]: 50 / 350 = 1/7
    assert huddled_fraction([[0, 0, 20, 10], [15, 0, 20, 10]], 0.14) == 1.0
    assert huddled_fraction([[0, 0, 20, 10], [15, 0, 20, 10]], 0.15) == 0.0
    assert huddled_fraction([], 0.0) is None
    assert huddled_fraction([[0, 0, 0, 0], [0, 0, 0, 0]], 0.0) == 0.0  # zero-area boxes overlap nothing


@pytest.mark.parametrize(
    "t_o,t_p,expected",
    [
        (-1.0, 0.0, [1, 2, 3, 4, 5]),  # every instance huddled: the whole set, image 4 without instances included
        (0.0, 0.0, [1, 2]),  # lone instances (3, 5: the crowd is not an instance) are not huddled
        (0.1, 0.5, [1, 2]),  # 2/3 > 0.5 and 1 > 0.5
        (0.1, 0.7, [2]),  # 2/3 is not > 0.7
        (0.2, 0.0, [1]),  # 1/7 is not > 0.2
        (0.4, 0.0, []),
    ],
)
def test_dsg_appendix_select_huddled_images(t_o, t_p, expected):
    assert select_huddled_images(_dataset(), t_o, t_p) == expected


def as_results(annotations, score=0.9):
    """COCO results that are exactly the given ground-truth annotations, all with one score."""
    keys = ("image_id", "category_id", "bbox", "segmentation")
    return [dict({k: a[k] for k in keys}, score=score) for a in annotations]


def _segm_dataset():
    from pycocotools import mask as mask_util

    def rle(x0, y0, w, h):
        m = np.zeros((20, 20), np.uint8, order="F")
        m[y0 : y0 + h, x0 : x0 + w] = 1
        r = mask_util.encode(np.asfortranarray(m))
        r["counts"] = r["counts"].decode()
        return r

    boxes = [(1, 1, [0, 0, 5, 5]), (1, 2, [10, 10, 5, 5]), (2, 1, [0, 10, 5, 5])]
    anns = [
        {"id": i + 1, "image_id": im, "category_id": c, "bbox": b, "area": 25, "iscrowd": 0, "segmentation": rle(*b)}
        for i, (im, c, b) in enumerate(boxes)
    ]
    return {
        "images": [{"id": 1, "width": 20, "height": 20}, {"id": 2, "width": 20, "height": 20}],
        "annotations": anns,
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }


def test_dsg_appendix_ap_is_the_mean_over_instances_not_classes():
    d = _segm_dataset()
    gt = _coco(d)
    # class 1 (2 instances): both found exactly -> AP 100; class 2 (1 instance): missed -> AP 0
    res = as_results([a for a in d["annotations"] if a["category_id"] == 1])
    for iou_type in ("bbox", "segm"):
        ap = instance_mean_ap(gt, res, iou_type, [1, 2])
        assert ap == pytest.approx(100.0 * 2 / 3)  # the class mean would be 50
    # on image 2 alone only class 1's instance exists
    assert instance_mean_ap(gt, res, "bbox", [2]) == pytest.approx(100.0)
    assert instance_mean_ap(gt, [], "bbox", [1, 2]) == 0.0


def test_dsg_appendix_grid_compares_two_models():
    d = _segm_dataset()
    good = as_results(d["annotations"])
    rows = huddled_grid(d, {"A": good[:2], "B": good}, thresholds=(0.0,))
    assert [(r["t_o"], r["t_p"], r["images"]) for r in rows] == [(-1.0, 0.0, 2), (0.0, 0.0, 0)]
    # A misses one of class 1's two instances: recall 0.5 at precision 1 is AP 51/101 on COCO's 101-point
    # recall grid; class 2's single instance is found
    a_ap = 100.0 * (2 * 51 / 101 + 1 * 1.0) / 3
    assert rows[0]["B/segm"] == pytest.approx(100.0) and rows[0]["A/segm"] == pytest.approx(a_ap)
    assert math.isnan(rows[1]["A/bbox"])
    table = format_grid(rows, "A", "B", thresholds=(0.0,))
    assert f"{100 - a_ap:+.1f} / {100 - a_ap:+.1f} (2)" in table and "| 0.0 | - |" in table


def _rect_rle(x0, y0, w, h, size=20):
    from pycocotools import mask as mask_util

    m = np.zeros((size, size), np.uint8, order="F")
    m[y0 : y0 + h, x0 : x0 + w] = 1
    r = mask_util.encode(np.asfortranarray(m))
    r["counts"] = r["counts"].decode()
    return r


def test_dsg_appendix_all_row_keeps_images_without_instances_and_their_false_positives():
    # image 1: class 1 at [0,0,10,10] and class 2 at [5,0,10,10] (IoU 1/3: huddled for T_O < 1/3);
    # image 2: a lone class-1 instance; image 3: no instance at all
    boxes = [(1, 1, [0, 0, 10, 10]), (1, 2, [5, 0, 10, 10]), (2, 1, [0, 10, 5, 5])]
    anns = [
        {
            "id": i + 1,
            "image_id": im,
            "category_id": c,
            "bbox": b,
            "area": b[2] * b[3],
            "iscrowd": 0,
            "segmentation": _rect_rle(*b),
        }
        for i, (im, c, b) in enumerate(boxes)
    ]
    d = {
        "images": [{"id": i, "width": 20, "height": 20} for i in (1, 2, 3)],
        "annotations": anns,
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }
    exact = as_results(anns)
    # model "fp" also fires, more confidently, on the empty image 3: a class-1 false positive
    fp = exact + [
        {"image_id": 3, "category_id": 1, "bbox": [2, 2, 6, 6], "score": 0.95, "segmentation": _rect_rle(2, 2, 6, 6)}
    ]
    rows = huddled_grid(d, {"exact": exact, "fp": fp}, thresholds=(0.0, 0.4))
    by = {(r["t_o"], r["t_p"]): r for r in rows}
    # T_O = -1: the whole set, the empty image included
    assert (by[-1.0, 0.0]["images"], by[-1.0, 0.0]["instances"]) == (3, 3)
    # class 1 (2 instances): the false positive ranks first, then the two hits: precision 0, 1/2, 2/3 at
    # recall 0, 1/2, 1, i.e. interpolated precision 2/3 at every recall: AP 2/3 at every IoU threshold;
    # class 2 (1 instance): AP 1. Mean over instances: (2 * 2/3 + 1 * 1) / 3 = 7/9
    for iou_type in ("bbox", "segm"):
        assert by[-1.0, 0.0][f"fp/{iou_type}"] == pytest.approx(100.0 * 7 / 9)
        assert by[-1.0, 0.0][f"exact/{iou_type}"] == pytest.approx(100.0)
    # only T_O = -1 keeps the empty image: at T_O = 0 only image 1 is huddled and the false positive on image 3
    # does not count there
    assert select_huddled_images(d, 0.0, 0.0) == [1]
    assert (by[0.0, 0.0]["images"], by[0.0, 0.0]["instances"]) == (1, 2)
    assert by[0.0, 0.0]["fp/bbox"] == pytest.approx(100.0) and by[0.0, 0.0]["fp/segm"] == pytest.approx(100.0)
    assert by[0.4, 0.0]["images"] == 0
    assert select_huddled_images(d, -1.0, 0.0) == [1, 2, 3]
