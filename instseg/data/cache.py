"""Writes synthetic splits to disk once and reads them back as detectron2 dataset dicts.

Layout of one split (``<root>/synthetic/<split>_<key>/``)::

    images/000000.png          the image (BGR PNG)
    instances.json             detectron2 dataset dicts; masks as COCO RLE, boxes XYXY_ABS
    panoptic/000000.png        COCO panoptic PNG (rgb2id encoding)
    panoptic.json              COCO panoptic json (images, annotations with segments_info, categories)
    sem_seg/000000.png         semantic labels (contiguous ids over things then stuff; 255 = ignore)

A split is written to a temporary folder and renamed into place, so concurrent processes (e.g. the
workers of ``--num-gpus 2``) never see a half-written split.
"""

import dataclasses
import functools
import json
import multiprocessing
import os
import shutil
import tempfile
from typing import List, Optional

import cv2
import numpy as np
import pycocotools.mask as mask_util

from .panoptic import id2rgb
from .synthetic import STUFF_CLASSES, THING_CLASSES, SyntheticSpec, render_scene

# Category ids in the panoptic json (COCO-style, 1-based): things first, then stuff.
THING_IDS = list(range(1, len(THING_CLASSES) + 1))
STUFF_IDS = list(range(len(THING_CLASSES) + 1, len(THING_CLASSES) + len(STUFF_CLASSES) + 1))
IGNORE_LABEL = 255


def datasets_root() -> str:
    """Where datasets live: ``$DETECTRON2_DATASETS`` (detectron2's convention), default ``./datasets``."""
    return os.path.expanduser(os.environ.get("DETECTRON2_DATASETS", "datasets"))


def split_dir(split: str, spec: SyntheticSpec, root: Optional[str] = None) -> str:
    return os.path.join(root or datasets_root(), "synthetic", f"{split}_{spec.key()}")


def encode_rle(mask: np.ndarray) -> dict:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def panoptic_categories() -> List[dict]:
    cats = [{"id": i, "name": n, "isthing": 1} for i, n in zip(THING_IDS, THING_CLASSES)]
    cats += [{"id": i, "name": n, "isthing": 0} for i, n in zip(STUFF_IDS, STUFF_CLASSES)]
    return cats


def _write_one(path: str, spec: SyntheticSpec, idx: int):
    """Render image ``idx`` and write its files; return its (dataset dict, panoptic image, panoptic annotation)."""
    scene = render_scene(spec, idx)
    stem = f"{idx:06d}"
    img_name = os.path.join("images", stem + ".png")
    cv2.imwrite(os.path.join(path, img_name), scene.image)

    annos = []
    pan = np.zeros((spec.height, spec.width), dtype=np.int64)
    sem = np.full((spec.height, spec.width), IGNORE_LABEL, dtype=np.uint8)
    segments = []
    # stuff segments: the stuff region minus the visible things
    thing_union = np.zeros((spec.height, spec.width), dtype=bool)
    for inst in scene.instances:
        thing_union |= inst.mask
    for k, sid in enumerate(STUFF_IDS):
        m = (scene.stuff == k) & ~thing_union
        if m.sum() == 0:
            continue
        seg_id = 1000 + k  # distinct from the thing ids below
        pan[m] = seg_id
        sem[m] = len(THING_CLASSES) + k
        segments.append({"id": seg_id, "category_id": sid, "iscrowd": 0, "area": int(m.sum()), "bbox": _xywh(m)})
    for j, inst in enumerate(scene.instances):
        x1, y1, x2, y2 = inst.bbox_xyxy
        annos.append(
            {
                "bbox": [x1, y1, x2, y2],
                "bbox_mode": 0,  # BoxMode.XYXY_ABS
                "category_id": inst.category_id,
                "segmentation": encode_rle(inst.mask),
                "iscrowd": 0,
                "area": inst.area,
            }
        )
        seg_id = j + 1
        pan[inst.mask] = seg_id
        sem[inst.mask] = inst.category_id
        segments.append(
            {
                "id": seg_id,
                "category_id": THING_IDS[inst.category_id],
                "iscrowd": 0,
                "area": inst.area,
                "bbox": _xywh(inst.mask),
            }
        )
    pan_name = os.path.join("panoptic", stem + ".png")
    sem_name = os.path.join("sem_seg", stem + ".png")
    cv2.imwrite(os.path.join(path, pan_name), id2rgb(pan)[..., ::-1])  # cv2 writes BGR
    cv2.imwrite(os.path.join(path, sem_name), sem)
    record = {
        "file_name": img_name,
        "image_id": idx,
        "height": spec.height,
        "width": spec.width,
        "annotations": annos,
        "sem_seg_file_name": sem_name,
    }
    pan_image = {"id": idx, "file_name": os.path.basename(img_name), "height": spec.height, "width": spec.width}
    pan_anno = {"image_id": idx, "file_name": os.path.basename(pan_name), "segments_info": segments}
    return record, pan_image, pan_anno


def _write_split(path: str, spec: SyntheticSpec, workers: Optional[int] = None) -> None:
    for sub in ("images", "panoptic", "sem_seg"):
        os.makedirs(os.path.join(path, sub), exist_ok=True)
    workers = workers or min(os.cpu_count() or 1, 8)
    job = functools.partial(_write_one, path, spec)
    if workers > 1 and spec.num_images >= 64:
        # every image is a pure function of (spec, index): workers cannot change the result
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            results = pool.map(job, range(spec.num_images), chunksize=16)
    else:
        results = [job(i) for i in range(spec.num_images)]
    dicts = [r[0] for r in results]
    pan_images = [r[1] for r in results]
    pan_annos = [r[2] for r in results]
    with open(os.path.join(path, "instances.json"), "w") as f:
        json.dump({"spec": dataclasses.asdict(spec), "dataset_dicts": dicts}, f)
    with open(os.path.join(path, "panoptic.json"), "w") as f:
        json.dump({"images": pan_images, "annotations": pan_annos, "categories": panoptic_categories()}, f)


def _xywh(mask: np.ndarray) -> List[int]:
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    return [int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1)]


def ensure_split(split: str, spec: SyntheticSpec, root: Optional[str] = None) -> str:
    """Generate the split if it is not cached yet; return its folder."""
    path = split_dir(split, spec, root)
    if os.path.isfile(os.path.join(path, "panoptic.json")):
        return path
    parent = os.path.dirname(path)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise RuntimeError(
            f"Cannot create the synthetic dataset cache under '{parent}': {e}. "
            "Set DETECTRON2_DATASETS to a writable folder."
        ) from e
    tmp = tempfile.mkdtemp(prefix=os.path.basename(path) + ".tmp", dir=parent)
    try:
        _write_split(tmp, spec)
        try:
            os.rename(tmp, path)
        except OSError:
            if not os.path.isfile(os.path.join(path, "panoptic.json")):  # not a concurrent writer's win
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def load_instances(split: str, spec: SyntheticSpec, root: Optional[str] = None) -> List[dict]:
    """detectron2 dataset dicts of a synthetic split (absolute file names)."""
    path = ensure_split(split, spec, root)
    with open(os.path.join(path, "instances.json")) as f:
        dicts = json.load(f)["dataset_dicts"]
    for d in dicts:
        d["file_name"] = os.path.join(path, d["file_name"])
        d["sem_seg_file_name"] = os.path.join(path, d["sem_seg_file_name"])
    return dicts
