"""Writes synthetic scenes in the Cityscapes layout, so that detectron2's Cityscapes loaders and the
cityscapesscripts evaluator (``CityscapesInstanceEvaluator``) run end to end without the real dataset.

Layout (as Cityscapes)::

    <root>/leftImg8bit/<split>/<city>/<city>_<seq>_000019_leftImg8bit.png
    <root>/gtFine/<split>/<city>/<city>_<seq>_000019_gtFine_{instanceIds,labelIds}.png
    <root>/gtFine/<split>/<city>/<city>_<seq>_000019_gtFine_polygons.json

The five synthetic thing classes map to the first five Cityscapes thing labels, in detectron2's
Cityscapes order (``person, rider, car, truck, bus``), so a model trained on the synthetic data predicts
the right Cityscapes category ids; the three stuff classes are Cityscapes' own ``sky``, ``wall`` and
``ground``. The instanceIds PNG is exact (holes, occlusion); the polygon json approximates each visible
connected component by its outer contour, as Cityscapes' polygons do.
"""

import json
import os
from typing import Dict, Optional

import cv2
import numpy as np

from instseg.compat import ensure_cityscapesscripts_alias

from .synthetic import STUFF_CLASSES, THING_CLASSES, SyntheticSpec, render_scene

# Cityscapes label ids (cityscapesscripts.helpers.labels): synthetic class -> Cityscapes label
CITYSCAPES_THINGS = [("person", 24), ("rider", 25), ("car", 26), ("truck", 27), ("bus", 28)]
CITYSCAPES_STUFF = {"sky": ("sky", 23), "wall": ("wall", 12), "ground": ("ground", 6)}
assert len(CITYSCAPES_THINGS) == len(THING_CLASSES)


def cityscapes_stem(city: str, index: int) -> str:
    return f"{city}_{index:06d}_000019"


def _polygons(mask: np.ndarray):
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = []
    for c in contours:
        c = c.reshape(-1, 2)
        if len(c) >= 3:
            out.append(c.tolist())
    return out


def export_cityscapes(
    spec: SyntheticSpec, root: str, split: str = "val", city: str = "synthville", overwrite: bool = False
) -> Dict[str, str]:
    """Render ``spec``'s scenes into ``root`` in the Cityscapes layout; return ``image_dir`` / ``gt_dir``."""
    image_dir = os.path.join(root, "leftImg8bit", split)
    gt_dir = os.path.join(root, "gtFine", split)
    img_city, gt_city = os.path.join(image_dir, city), os.path.join(gt_dir, city)
    done_flag = os.path.join(root, f".done_{split}_{city}_{spec.key()}")
    if os.path.isfile(done_flag) and not overwrite:
        return {"image_dir": image_dir, "gt_dir": gt_dir}
    os.makedirs(img_city, exist_ok=True)
    os.makedirs(gt_city, exist_ok=True)
    for idx in range(spec.num_images):
        scene = render_scene(spec, idx)
        stem = cityscapes_stem(city, idx)
        h, w = scene.stuff.shape
        cv2.imwrite(os.path.join(img_city, stem + "_leftImg8bit.png"), scene.image)

        label_ids = np.zeros((h, w), dtype=np.uint8)
        objects = []
        for k, name in enumerate(STUFF_CLASSES):
            cs_name, cs_id = CITYSCAPES_STUFF[name]
            m = scene.stuff == k
            label_ids[m] = cs_id
            objects += [{"label": cs_name, "polygon": p} for p in _polygons(m)]
        instance_ids = label_ids.astype(np.int32)
        per_label_count = {}
        for inst in scene.instances:  # back to front, as painted: later objects occlude earlier ones
            cs_name, cs_id = CITYSCAPES_THINGS[inst.category_id]
            n = per_label_count.get(cs_id, 0)
            per_label_count[cs_id] = n + 1
            label_ids[inst.mask] = cs_id
            instance_ids[inst.mask] = cs_id * 1000 + n
            objects += [{"label": cs_name, "polygon": p} for p in _polygons(inst.mask)]
        # cityscapesscripts reads instanceIds as 16-bit PNG
        cv2.imwrite(os.path.join(gt_city, stem + "_gtFine_instanceIds.png"), instance_ids.astype(np.uint16))
        cv2.imwrite(os.path.join(gt_city, stem + "_gtFine_labelIds.png"), label_ids)
        with open(os.path.join(gt_city, stem + "_gtFine_polygons.json"), "w") as f:
            json.dump({"imgHeight": h, "imgWidth": w, "objects": objects}, f)
    open(done_flag, "w").close()
    return {"image_dir": image_dir, "gt_dir": gt_dir}


def register_cityscapes_export(name: str, image_dir: str, gt_dir: str, from_json: bool = False) -> str:
    """Register an exported split with detectron2's Cityscapes instance loader and evaluator metadata.

    ``from_json=False`` reads the exact instanceIds PNGs (masks as RLE; use ``INPUT.MASK_FORMAT bitmask``);
    ``from_json=True`` reads the polygons, as detectron2 does for the real dataset.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets.builtin_meta import _get_builtin_metadata
    from detectron2.data.datasets.cityscapes import load_cityscapes_instances

    ensure_cityscapesscripts_alias()
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(
        name,
        lambda: load_cityscapes_instances(image_dir, gt_dir, from_json=from_json, to_polygons=from_json),
    )
    MetadataCatalog.get(name).set(
        image_dir=image_dir,
        gt_dir=gt_dir,
        evaluator_type="cityscapes_instance",
        **_get_builtin_metadata("cityscapes"),
    )
    return name


def export_and_register(
    spec: SyntheticSpec, root: Optional[str] = None, split: str = "val", name: Optional[str] = None
) -> str:
    """Export ``spec`` under ``root`` (default ``$DETECTRON2_DATASETS/synthetic_cityscapes``) and register it."""
    from .cache import datasets_root

    root = root or os.path.join(datasets_root(), "synthetic_cityscapes", spec.key())
    dirs = export_cityscapes(spec, root, split=split)
    return register_cityscapes_export(name or f"synthetic_cityscapes_instance_seg_{split}", **dirs)
