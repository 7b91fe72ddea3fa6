"""Evaluation on huddled instances (DSG, Appendix 6.1, Table 4).

An instance is *huddled* when its box IoU with some other instance of its image is > T_O (T_O = -1 makes
every instance huddled); an image is selected when its fraction of huddled instances is > T_P. T_O = -1
(with T_P < 1) is the whole set: images without instances are kept then, and only then, so that their false
positives count in the "all" row as in any COCO evaluation of the set. On a subset,
AP is the **mean over instances** rather than over classes: each class's COCO AP weighted by its number of
ground-truth instances in the subset (classes with few instances would make the class mean unstable).

Works on COCO-format dicts (``images``, ``annotations`` with ``bbox`` in XYWH, ``categories``) and COCO
result lists, so any two models' ``coco_instances_results.json`` can be compared.
"""

import contextlib
import copy
import io
from typing import Dict, List, Optional, Sequence

import numpy as np

THRESHOLDS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)


def _max_other_iou(boxes_xywh: Sequence[Sequence[float]]) -> np.ndarray:
    """Per instance, its largest box IoU with another instance of the image (0 for a lone instance;
    zero-area boxes overlap nothing), with pycocotools' box IoU."""
    from pycocotools import mask as mask_util

    boxes = np.asarray(boxes_xywh, dtype=np.float64).reshape(-1, 4)
    if len(boxes) < 2:
        return np.zeros(len(boxes))
    iou = np.asarray(mask_util.iou(boxes, boxes, [0] * len(boxes)))
    np.fill_diagonal(iou, -np.inf)
    return iou.max(axis=1)


def _fraction(max_other: np.ndarray, t_o: float) -> Optional[float]:
    return float((max_other > t_o).mean()) if len(max_other) else None


def huddled_fraction(boxes_xywh: Sequence[Sequence[float]], t_o: float) -> Optional[float]:
    """Fraction of an image's instances whose box IoU with another instance is > t_o (None: no instance).
    A lone instance's overlap with "another instance" is taken as 0."""
    return _fraction(_max_other_iou(boxes_xywh), t_o)


def _image_overlaps(coco_dict: dict) -> Dict[int, np.ndarray]:
    """Image id -> the max-other-IoU of each of its (non-crowd) instances, in image order."""
    boxes: Dict[int, list] = {img["id"]: [] for img in coco_dict["images"]}
    for ann in coco_dict["annotations"]:
        if not ann.get("iscrowd", 0):
            boxes.setdefault(ann["image_id"], []).append(ann["bbox"])
    return {img["id"]: _max_other_iou(boxes[img["id"]]) for img in coco_dict["images"]}


def _select(overlaps: Dict[int, np.ndarray], t_o: float, t_p: float) -> List[int]:
    out = []
    for image_id, max_other in overlaps.items():
        frac = _fraction(max_other, t_o)
        if frac is None and t_o < 0:  # T_O = -1 makes every instance huddled, vacuously those of an empty image
            frac = 1.0
        if frac is not None and frac > t_p:
            out.append(image_id)
    return out


def select_huddled_images(coco_dict: dict, t_o: float, t_p: float) -> List[int]:
    """Ids of the images whose fraction of huddled instances (box IoU > ``t_o`` with another instance of
    the image) is > ``t_p``. Crowd annotations are not instances. Images without instances are kept only for
    ``t_o < 0`` (T_O = -1, the whole set: every instance, vacuously none, is huddled) and ``t_p < 1``."""
    return _select(_image_overlaps(coco_dict), t_o, t_p)


def _coco(coco_dict: dict):
    from pycocotools.coco import COCO

    api = COCO()
    api.dataset = copy.deepcopy(coco_dict)
    with contextlib.redirect_stdout(io.StringIO()):
        api.createIndex()
    return api


def instance_mean_ap(coco_gt, results: List[dict], iou_type: str, img_ids: Sequence[int]) -> float:
    """COCO AP (IoU 0.50:0.95, all areas, 100 detections) on ``img_ids``, as the mean over ground-truth
    instances: per-class AP weighted by the class's non-crowd instance count in those images. In percent;
    NaN when the images have no instance."""
    from pycocotools.cocoeval import COCOeval

    img_ids = list(img_ids)
    counts: Dict[int, int] = {}
    for ann in coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=img_ids, iscrowd=False)):
        counts[ann["category_id"]] = counts.get(ann["category_id"], 0) + 1
    if not counts:
        return float("nan")
    wanted = set(img_ids)
    res = [r for r in results if r["image_id"] in wanted]
    if iou_type == "segm":
        res = [{k: v for k, v in r.items() if k != "bbox"} for r in res]  # mask area, as detectron2 does
    if not res:
        return 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        dt = coco_gt.loadRes(copy.deepcopy(res))
        ev = COCOeval(coco_gt, dt, iou_type)
        ev.params.imgIds = img_ids
        ev.evaluate()
        ev.accumulate()
    precision = ev.eval["precision"][:, :, :, 0, -1]  # (T, R, K) at area "all", maxDets 100
    total, weight = 0.0, 0
    for k, cat_id in enumerate(ev.params.catIds):
        n = counts.get(cat_id, 0)
        if n == 0:
            continue
        p = precision[:, :, k]
        ap = float(p[p > -1].mean()) if (p > -1).any() else 0.0
        total += n * ap
        weight += n
    return 100.0 * total / weight


def huddled_grid(
    coco_dict: dict, results: Dict[str, List[dict]], thresholds=THRESHOLDS, iou_types=("bbox", "segm"), include_all=True
) -> List[dict]:
    """For every (T_O, T_P) (plus T_O = -1, T_P = 0: the whole set, images without instances included, whose
    detections are false positives), the number of selected images and instances and, per model in ``results``
    (name -> COCO results), the mean-over-instances AP per IoU type."""
    gt = _coco(coco_dict)
    overlaps = _image_overlaps(coco_dict)  # the IoUs do not depend on the thresholds: once
    cells = [(-1.0, 0.0)] if include_all else []
    cells += [(t_o, t_p) for t_o in thresholds for t_p in thresholds]
    rows = []
    for t_o, t_p in cells:
        ids = _select(overlaps, t_o, t_p)
        row = {
            "t_o": t_o,
            "t_p": t_p,
            "images": len(ids),
            "instances": len(gt.getAnnIds(imgIds=ids, iscrowd=False)) if ids else 0,
        }
        for name, res in results.items():
            for iou_type in iou_types:
                row[f"{name}/{iou_type}"] = instance_mean_ap(gt, res, iou_type, ids) if ids else float("nan")
        rows.append(row)
    return rows


def format_grid(rows: List[dict], model_a: str, model_b: str, thresholds=THRESHOLDS) -> str:
    """Table 4: rows T_O, columns T_P, cells "box / mask" AP improvement of ``model_b`` over ``model_a``."""

    def cell(r):
        if r is None or r["images"] == 0:
            return "-"
        db = r[f"{model_b}/bbox"] - r[f"{model_a}/bbox"]
        dm = r[f"{model_b}/segm"] - r[f"{model_a}/segm"]
        return f"{db:+.1f} / {dm:+.1f} ({r['images']})"

    by = {(r["t_o"], r["t_p"]): r for r in rows}
    lines = [
        f"box / mask AP of {model_b} minus {model_a} (mean over instances; images in subset)",
        "| T_O \\ T_P | " + " | ".join(f"{t:.1f}" for t in thresholds) + " |",
        "|---" * (len(thresholds) + 1) + "|",
    ]
    for t_o in ([-1.0] if (-1.0, 0.0) in by else []) + list(thresholds):
        cells = [cell(by.get((t_o, t_p))) if (t_o >= 0 or t_p == 0.0) else "-" for t_p in thresholds]
        lines.append(f"| {t_o:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
