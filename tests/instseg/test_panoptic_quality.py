"""Panoptic quality (Kirillov et al. 2019; the COCO panoptic rules): ``instseg.evaluation.panoptic`` on hand-built
images. detectron2's ``COCOPanopticEvaluator`` runs on it in tests/instseg/data/test_registration.py and
tests/casnet/test_panoptic.py."""

import json

import numpy as np
import pytest
from PIL import Image

from instseg.data.panoptic import id2rgb, rgb2id
from instseg.evaluation.panoptic import image_stats, pq_average, pq_compute

CATS = {1: {"id": 1, "isthing": 1}, 2: {"id": 2, "isthing": 1}, 7: {"id": 7, "isthing": 0}}


def _seg(i, c, crowd=0):
    return {"id": i, "category_id": c, "iscrowd": crowd}


def test_id2rgb_round_trip():
    ids = np.array([[0, 1, 255], [256, 65536 + 3, 256**3 - 1]])
    np.testing.assert_array_equal(rgb2id(id2rgb(ids)), ids)
    assert tuple(id2rgb(np.array([[65536 + 2 * 256 + 3]]))[0, 0]) == (3, 2, 1)


def test_pq_hand_computed():
    """Every rule once, on a 10 x 10 image:
    - gt 1 (thing 1, 20 px) vs pred 11 (thing 1, 20 px: 16 on gt 1, 4 on void): intersection 16, union
      20 + 20 - 16 - 4 = 20 (the prediction's void pixels leave the union) -> IoU 0.8, a TP; pred 15 (4 px on gt 1)
      is a second thing-1 prediction: FP;
    - gt 2 (thing 2, 10 px), predicted as class 1 (pred 12): no match (categories differ) -> FN for 2, FP for 1;
    - gt 3 (thing 1, crowd, 10 px) and pred 13 (thing 1, 10 px, 8 on the crowd): not a FP (8/10 > 0.5 ignored);
    - stuff 7: gt 4 (40 px) vs pred 14 (50 px, 40 on gt 4): IoU 40/50 = 0.8 -> TP.
    """
    gt = np.zeros((10, 10), np.int64)
    pred = np.zeros((10, 10), np.int64)
    gt[0:2, 0:10] = 1  # 20 px, thing 1
    gt[2, 0:10] = 2  # 10 px, thing 2
    gt[3, 0:10] = 3  # 10 px, crowd of thing 1
    gt[4:8, 0:10] = 4  # 40 px, stuff 7; rows 8-9 void
    pred[0:2, 0:8] = 11  # 16 px on gt 1
    pred[8, 0:4] = 11  # + 4 px on void -> area 20
    pred[0:2, 8:10] = 15  # 4 px on gt 1, a second thing-1 prediction: FP (nothing ignored)
    pred[2, 0:10] = 12  # on gt 2, class 1
    pred[3, 0:8] = 13  # 8 px on the crowd ...
    pred[9, 0:2] = 13  # ... + 2 on void: 10/10 ignored
    pred[4:8, 0:10] = 14
    pred[8, 4:10] = 14  # stuff: 40 on gt 4 + 6 on void
    pred[9, 2:6] = 14  # + 4 on void -> 50 px, 10 of them void
    gt_ann = {"image_id": 0, "segments_info": [_seg(1, 1), _seg(2, 2), _seg(3, 1, crowd=1), _seg(4, 7)]}
    pred_ann = {"image_id": 0, "segments_info": [_seg(11, 1), _seg(12, 1), _seg(13, 1), _seg(14, 7), _seg(15, 1)]}
    stats = image_stats(gt, gt_ann, pred, pred_ann, CATS)
    # thing 1: gt 1 vs pred 11: inter 16, union 20 + 20 - 16 - 4 = 20 -> 0.8 (TP); pred 12, 15 are FPs; 13 ignored
    assert stats[1]["tp"] == 1 and stats[1]["fp"] == 2 and stats[1]["fn"] == 0
    assert stats[1]["iou"] == pytest.approx(0.8)
    assert stats[2] == {"tp": 0, "fp": 0, "fn": 1, "iou": 0.0}
    # stuff 7: inter 40, union 50 + 40 - 40 - 10 = 40 -> IoU 1.0
    assert stats[7]["tp"] == 1 and stats[7]["iou"] == pytest.approx(1.0)
    res, per_class = pq_average(stats, CATS, None)
    pq1 = 0.8 / (1 + 0.5 * 2)  # 0.4
    assert per_class[1]["pq"] == pytest.approx(pq1)
    assert per_class[1]["sq"] == pytest.approx(0.8) and per_class[1]["rq"] == pytest.approx(0.5)
    assert per_class[2]["pq"] == 0.0
    assert res["n"] == 3 and res["pq"] == pytest.approx((pq1 + 0 + 1.0) / 3)
    things, _ = pq_average(stats, CATS, True)
    assert things["n"] == 2 and things["pq"] == pytest.approx(pq1 / 2)
    assert things["sq"] == pytest.approx(0.8 / 2)  # category 2 has no TP: SQ 0 in the average
    stuff, _ = pq_average(stats, CATS, False)
    assert stuff == {"pq": pytest.approx(1.0), "sq": pytest.approx(1.0), "rq": pytest.approx(1.0), "n": 1}


def test_match_needs_iou_above_half():
    gt = np.zeros((4, 4), np.int64)
    pred = np.zeros((4, 4), np.int64)
    gt[:2] = 1  # 8 px
    pred[1:3] = 2  # 8 px, 4 shared: IoU 4/12
    stats = image_stats(
        gt, {"image_id": 0, "segments_info": [_seg(1, 1)]}, pred, {"image_id": 0, "segments_info": [_seg(2, 1)]}, CATS
    )
    assert stats[1] == {"tp": 0, "fp": 1, "fn": 1, "iou": 0.0}


def test_bad_predictions_are_refused():
    gt = np.ones((2, 2), np.int64)
    ann = {"image_id": 0, "segments_info": [_seg(1, 1)]}
    with pytest.raises(KeyError, match="unknown category"):
        image_stats(gt, ann, gt, {"image_id": 0, "segments_info": [_seg(1, 5)]}, CATS)
    with pytest.raises(KeyError, match="not in segments_info"):
        image_stats(gt, ann, gt * 3, {"image_id": 0, "segments_info": [_seg(1, 1)]}, CATS)


def test_pq_compute_reads_the_coco_files(tmp_path):
    gt = np.zeros((6, 6), np.int64)
    gt[:3] = 1
    gt[3:] = 2
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    Image.fromarray(id2rgb(gt)).save(tmp_path / "gt" / "a.png")
    Image.fromarray(id2rgb(gt * 5)).save(tmp_path / "pred" / "a.png")  # same segments, other ids
    cats = [{"id": 1, "isthing": 1, "name": "x"}, {"id": 7, "isthing": 0, "name": "y"}]
    gt_json = {
        "categories": cats,
        "annotations": [{"image_id": 3, "file_name": "a.png", "segments_info": [_seg(1, 1), _seg(2, 7)]}],
    }
    pred_json = {"annotations": [{"image_id": 3, "file_name": "a.png", "segments_info": [_seg(5, 1), _seg(10, 7)]}]}
    (tmp_path / "gt.json").write_text(json.dumps(gt_json))
    (tmp_path / "pred.json").write_text(json.dumps(pred_json))
    res = pq_compute(
        str(tmp_path / "gt.json"), str(tmp_path / "pred.json"), str(tmp_path / "gt"), str(tmp_path / "pred")
    )
    assert res["All"] == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": 2}
    assert res["Things"]["n"] == 1 and res["Stuff"]["n"] == 1


def test_iou_of_exactly_half_is_no_match():
    gt = np.zeros((4, 4), np.int64)
    pred = np.zeros((4, 4), np.int64)
    gt[:, :3] = 1  # 12 px
    gt[:, 3] = 5  # stuff, so that no pixel of the prediction is void
    pred[:, 1:4] = 2  # 12 px, 8 shared: IoU 8 / 16 = 0.5
    gt_ann = {"image_id": 0, "segments_info": [_seg(1, 1), _seg(5, 7)]}
    stats = image_stats(gt, gt_ann, pred, {"image_id": 0, "segments_info": [_seg(2, 1)]}, CATS)
    assert stats[1] == {"tp": 0, "fp": 1, "fn": 1, "iou": 0.0}


def test_unmatched_prediction_ignored_only_on_void_or_its_own_category_crowd():
    """An unmatched prediction is not a FP when over half of it is void plus crowd of ITS category: on another
    category's crowd it is a FP; on 3/8 void + 2/8 own crowd (5/8 together, neither alone over half) it is ignored."""
    gt = np.zeros((4, 8), np.int64)
    gt[:, :4] = 3  # crowd of category 2
    gt[:2, 4:] = 4  # crowd of category 1 (8 px); rows 2-3, cols 4-7 void
    pred = np.zeros((4, 8), np.int64)
    pred[:, :2] = 11  # category 1 on category 2's crowd: FP
    pred[0, 4:6] = 12  # category 1: 2 px on its own crowd ...
    pred[2, 4:7] = 12  # ... + 3 px void ...
    pred[3, 2:5] = 12  # ... + 2 px on category 2's crowd + 1 px void: 8 px, 2 own crowd + 4 void = 6/8 > 1/2
    gt_ann = {"image_id": 0, "segments_info": [_seg(3, 2, crowd=1), _seg(4, 1, crowd=1)]}
    pred_ann = {"image_id": 0, "segments_info": [_seg(11, 1), _seg(12, 1)]}
    stats = image_stats(gt, gt_ann, pred, pred_ann, CATS)
    assert stats[1]["fp"] == 1 and stats[2]["fp"] == 0 and stats[1]["fn"] == 0 and stats[2]["fn"] == 0
    pred[3, 4] = 0  # now 2 own crowd + 3 void of 7: 5/7 still ignored
    pred[2, 4:7] = 0  # 2 own crowd of 4: exactly half is not over half -> FP
    stats = image_stats(gt, gt_ann, pred, pred_ann, CATS)
    assert stats[1]["fp"] == 2
