"""Panoptic quality (Kirillov et al., "Panoptic Segmentation", CVPR 2019) for detectron2's ``COCOPanopticEvaluator``
where ``panopticapi`` is not installed.

detectron2's evaluator imports ``panopticapi.utils.id2rgb`` and ``panopticapi.evaluation.pq_compute``; the package is
on no package index (only on GitHub), so a clean machine lacks it. ``ensure_panopticapi()`` then registers a small
``panopticapi`` module whose two functions are ours, with the COCO panoptic definitions, so the evaluator runs
unchanged. The real package, when installed, is always preferred.

The definitions (the COCO panoptic task's): segment ids 0 are void; a predicted and a ground-truth segment of one
category match when their IoU > 0.5, the union leaving out the prediction's void pixels; a ground-truth segment
marked ``iscrowd`` matches nothing, and an unmatched prediction is not a false positive when more than half of it lies
on void or on crowd regions of its category. Per category PQ = sum IoU / (TP + FP/2 + FN/2), SQ = sum IoU / TP,
RQ = TP / (TP + FP/2 + FN/2); categories with no TP, FP or FN are left out of the averages over ``All``, ``Things``
and ``Stuff``.
"""

import json
import os
import sys
import types
from collections import defaultdict
from typing import Dict, Optional

import numpy as np
from PIL import Image

from instseg.data.panoptic import id2rgb, rgb2id

VOID = 0
OFFSET = 256 * 256 * 256  # larger than any id of the 3-byte encoding


def _load_ids(folder: str, file_name: str) -> np.ndarray:
    return rgb2id(np.array(Image.open(os.path.join(folder, file_name)).convert("RGB")))


def _segments(ann: dict) -> Dict[int, dict]:
    return {int(s["id"]): s for s in ann["segments_info"]}


def image_stats(gt_ids: np.ndarray, gt_ann: dict, pred_ids: np.ndarray, pred_ann: dict, categories: dict) -> dict:
    """Per-category ``{"tp", "fp", "fn", "iou"}`` of one image (the COCO panoptic rules in the module docstring)."""
    if gt_ids.shape != pred_ids.shape:
        raise ValueError(f"image {gt_ann['image_id']}: prediction {pred_ids.shape} and ground truth {gt_ids.shape}")
    gt_segs, pred_segs = _segments(gt_ann), _segments(pred_ann)
    for sid, s in pred_segs.items():
        if s["category_id"] not in categories:
            raise KeyError(f"image {gt_ann['image_id']}: segment {sid} has unknown category {s['category_id']}")
    pred_labels, pred_areas = np.unique(pred_ids, return_counts=True)
    pred_area = dict(zip(pred_labels.tolist(), pred_areas.tolist()))
    missing = set(pred_area) - set(pred_segs) - {VOID}
    if missing:
        raise KeyError(f"image {gt_ann['image_id']}: ids {sorted(missing)} in the PNG are not in segments_info")
    gt_labels, gt_areas = np.unique(gt_ids, return_counts=True)
    gt_area = dict(zip(gt_labels.tolist(), gt_areas.tolist()))
    pairs, counts = np.unique(gt_ids.astype(np.int64) * OFFSET + pred_ids.astype(np.int64), return_counts=True)
    inter = {(int(p // OFFSET), int(p % OFFSET)): int(c) for p, c in zip(pairs, counts)}

    stats = defaultdict(lambda: {"tp": 0, "fp": 0, "fn": 0, "iou": 0.0})
    gt_matched, pred_matched = set(), set()
    for (g, p), area in inter.items():
        if g not in gt_segs or p not in pred_segs:
            continue
        gs, ps = gt_segs[g], pred_segs[p]
        if gs.get("iscrowd", 0) == 1 or gs["category_id"] != ps["category_id"]:
            continue
        union = pred_area.get(p, 0) + gt_area.get(g, 0) - area - inter.get((VOID, p), 0)
        iou = area / union
        if iou > 0.5:
            stats[gs["category_id"]]["tp"] += 1
            stats[gs["category_id"]]["iou"] += iou
            gt_matched.add(g)
            pred_matched.add(p)

    crowd_of = {}  # category -> the crowd segment's id (COCO has at most one per category and image)
    for g, gs in gt_segs.items():
        if gs.get("iscrowd", 0) == 1:
            crowd_of[gs["category_id"]] = g
        elif g not in gt_matched:
            stats[gs["category_id"]]["fn"] += 1
    for p, ps in pred_segs.items():
        if p in pred_matched or pred_area.get(p, 0) == 0:
            continue
        ignored = inter.get((VOID, p), 0)
        if ps["category_id"] in crowd_of:
            ignored += inter.get((crowd_of[ps["category_id"]], p), 0)
        if ignored / pred_area[p] > 0.5:
            continue
        stats[ps["category_id"]]["fp"] += 1
    return stats


def pq_average(stats: dict, categories: dict, isthing: Optional[bool]) -> dict:
    """``{"pq", "sq", "rq", "n"}`` averaged over the categories (of one kind when ``isthing`` is not None) that have
    any TP, FP or FN; plus ``per_class``."""
    pq = sq = rq = 0.0
    n = 0
    per_class = {}
    for cid, cat in categories.items():
        if isthing is not None and bool(cat["isthing"]) != isthing:
            continue
        s = stats.get(cid, {"tp": 0, "fp": 0, "fn": 0, "iou": 0.0})
        tp, fp, fn, iou = s["tp"], s["fp"], s["fn"], s["iou"]
        if tp + fp + fn == 0:
            per_class[cid] = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
            continue
        n += 1
        c_pq = iou / (tp + 0.5 * fp + 0.5 * fn)
        c_sq = iou / tp if tp else 0.0
        c_rq = tp / (tp + 0.5 * fp + 0.5 * fn)
        per_class[cid] = {"pq": c_pq, "sq": c_sq, "rq": c_rq}
        pq, sq, rq = pq + c_pq, sq + c_sq, rq + c_rq
    if n == 0:
        return {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}, per_class
    return {"pq": pq / n, "sq": sq / n, "rq": rq / n, "n": n}, per_class


def pq_compute(gt_json_file: str, pred_json_file: str, gt_folder: str = None, pred_folder: str = None) -> dict:
    """``panopticapi.evaluation.pq_compute``'s interface and result: ``{"All", "Things", "Stuff": {"pq", "sq", "rq",
    "n"}, "per_class"}``, fractions in [0, 1]. Every ground-truth image must have a prediction."""
    with open(gt_json_file) as f:
        gt_json = json.load(f)
    with open(pred_json_file) as f:
        pred_json = json.load(f)
    gt_folder = gt_folder or gt_json_file.replace(".json", "")
    pred_folder = pred_folder or pred_json_file.replace(".json", "")
    categories = {c["id"]: c for c in gt_json["categories"]}
    preds = {a["image_id"]: a for a in pred_json["annotations"]}
    totals = defaultdict(lambda: {"tp": 0, "fp": 0, "fn": 0, "iou": 0.0})
    for gt_ann in gt_json["annotations"]:
        if gt_ann["image_id"] not in preds:
            raise KeyError(f"no prediction for image {gt_ann['image_id']}")
        pred_ann = preds[gt_ann["image_id"]]
        stats = image_stats(
            _load_ids(gt_folder, gt_ann["file_name"]),
            gt_ann,
            _load_ids(pred_folder, pred_ann["file_name"]),
            pred_ann,
            categories,
        )
        for cid, s in stats.items():
            for k in s:
                totals[cid][k] += s[k]
    result = {}
    for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
        result[name], per_class = pq_average(totals, categories, isthing)
        if isthing is None:
            result["per_class"] = per_class
    return result


def ensure_panopticapi() -> bool:
    """Register our ``panopticapi`` (``utils.id2rgb``/``rgb2id``, ``evaluation.pq_compute``) when the real package is
    not importable; idempotent. Returns True when ours is in use."""
    import importlib.util

    existing = sys.modules.get("panopticapi")
    if existing is not None:
        return getattr(existing, "__instseg__", False)
    if importlib.util.find_spec("panopticapi") is not None:
        return False
    package = types.ModuleType("panopticapi")
    package.__instseg__ = True
    package.__path__ = []  # a package, so "import panopticapi.utils" resolves through sys.modules
    utils = types.ModuleType("panopticapi.utils")
    utils.id2rgb, utils.rgb2id = id2rgb, rgb2id
    evaluation = types.ModuleType("panopticapi.evaluation")
    evaluation.pq_compute = pq_compute
    package.utils, package.evaluation = utils, evaluation
    sys.modules.update({"panopticapi": package, "panopticapi.utils": utils, "panopticapi.evaluation": evaluation})
    return True
