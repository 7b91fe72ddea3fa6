"""Registers the synthetic datasets in detectron2's catalogs.

Names (sizes and seed from :class:`SyntheticSpec`, overridable by ``DATASETS.SYNTHETIC`` in a config):

* ``synthetic_instances_train`` / ``synthetic_instances_val`` — instance segmentation, COCO evaluator;
* ``synthetic_panoptic_train`` / ``synthetic_panoptic_val`` — the same scenes in detectron2's panoptic
  format (``pan_seg_file_name`` + ``segments_info``, and ``sem_seg_file_name``), COCO panoptic evaluator;
* ``synthetic_panoptic_separated_train`` / ``..._val`` — the same panoptic files with detectron2's "separated"
  contiguous ids (as ``coco_2017_*_panoptic_separated``): stuff 1..3 after one "things" class 0, which is what
  Panoptic FPN's semantic head predicts (``PanopticDatasetMapper`` labels every thing pixel 0:
  ``sem_seg_things_label``).

Real datasets need no code here: detectron2 registers COCO (``coco_2017_train``, ...) and Cityscapes
(``cityscapes_fine_instance_seg_train``, ...) itself, under ``$DETECTRON2_DATASETS``.
"""

import json
import os
from typing import Dict, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog

from .cache import IGNORE_LABEL, STUFF_IDS, THING_IDS, ensure_split, load_instances, split_dir
from .synthetic import STUFF_CLASSES, THING_CLASSES, SyntheticSpec

# default specs of the registered splits; the val split uses another seed, so no image is shared
DEFAULT_SPECS: Dict[str, SyntheticSpec] = {
    "train": SyntheticSpec(num_images=2000, seed=0),
    "val": SyntheticSpec(num_images=200, seed=1),
}

# a colour per thing class, for detectron2's Visualizer
THING_COLORS = [(220, 20, 60), (0, 130, 200), (255, 180, 0), (60, 180, 75), (145, 30, 180)]
STUFF_COLORS = [(135, 206, 235), (170, 110, 90), (90, 140, 60)]


def synthetic_instances_metadata() -> dict:
    return {"thing_classes": list(THING_CLASSES), "thing_colors": THING_COLORS, "evaluator_type": "coco"}


def synthetic_panoptic_metadata() -> dict:
    # detectron2's "standard" panoptic convention (as for coco_2017_*_panoptic): contiguous ids run over
    # things then stuff, and both thing_* and stuff_* lists name every category.
    names = list(THING_CLASSES) + list(STUFF_CLASSES)
    colors = THING_COLORS + STUFF_COLORS
    return {
        "thing_classes": names,
        "thing_colors": colors,
        "stuff_classes": names,
        "stuff_colors": colors,
        "thing_dataset_id_to_contiguous_id": {d: i for i, d in enumerate(THING_IDS)},
        "stuff_dataset_id_to_contiguous_id": {d: i for i, d in enumerate(THING_IDS + STUFF_IDS)},
        "ignore_label": IGNORE_LABEL,
        "label_divisor": 1000,
        "evaluator_type": "coco_panoptic_seg",
    }


def synthetic_panoptic_separated_metadata() -> dict:
    # detectron2's "separated" convention (register_coco_panoptic_separated): things 0..4 among the things; stuff
    # 1..3, 0 being "things" in the semantic labels
    return {
        "thing_classes": list(THING_CLASSES),
        "thing_colors": THING_COLORS,
        "stuff_classes": ["things"] + list(STUFF_CLASSES),
        "stuff_colors": [(82, 18, 128)] + STUFF_COLORS,
        "thing_dataset_id_to_contiguous_id": {d: i for i, d in enumerate(THING_IDS)},
        "stuff_dataset_id_to_contiguous_id": {d: i + 1 for i, d in enumerate(STUFF_IDS)},
        "sem_seg_things_label": 0,
        "ignore_label": IGNORE_LABEL,
        "label_divisor": 1000,
        "evaluator_type": "coco_panoptic_seg",
    }


def load_panoptic(split: str, spec: SyntheticSpec, root: Optional[str] = None, separated: bool = False):
    """Dataset dicts in detectron2's panoptic format (contiguous category ids, ``isthing`` flags); ``separated``:
    detectron2's separated ids (no ``sem_seg_file_name``: its labels are in the standard ids)."""
    path = ensure_split(split, spec, root)
    meta = synthetic_panoptic_separated_metadata() if separated else synthetic_panoptic_metadata()
    with open(os.path.join(path, "panoptic.json")) as f:
        pan = json.load(f)
    images = {im["id"]: im for im in pan["images"]}
    out = []
    for ann in pan["annotations"]:
        im = images[ann["image_id"]]
        segs = []
        for s in ann["segments_info"]:
            s = dict(s)
            is_thing = s["category_id"] in meta["thing_dataset_id_to_contiguous_id"]
            ids = meta[
                "thing_dataset_id_to_contiguous_id" if separated and is_thing else "stuff_dataset_id_to_contiguous_id"
            ]
            s["category_id"] = ids[s["category_id"]]
            s["isthing"] = is_thing
            segs.append(s)
        stem = os.path.splitext(ann["file_name"])[0]
        out.append(
            {
                "file_name": os.path.join(path, "images", im["file_name"]),
                "image_id": ann["image_id"],
                "height": im["height"],
                "width": im["width"],
                "pan_seg_file_name": os.path.join(path, "panoptic", ann["file_name"]),
                "segments_info": segs,
            }
        )
        if not separated:
            out[-1]["sem_seg_file_name"] = os.path.join(path, "sem_seg", stem + ".png")
    return out


def _register(name: str, loader, metadata: dict) -> None:
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(**metadata)


def register_synthetic(split: str, spec: SyntheticSpec, root: Optional[str] = None, prefix: str = "synthetic"):
    """Register ``<prefix>_instances_<split>``, ``<prefix>_panoptic_<split>`` and
    ``<prefix>_panoptic_separated_<split>`` for ``spec``.

    Loading is lazy: the split is generated (and cached) the first time a loader is called.
    """
    inst_name = f"{prefix}_instances_{split}"
    pan_name = f"{prefix}_panoptic_{split}"
    folder = split_dir(split, spec, root)
    _register(
        inst_name,
        lambda: load_instances(split, spec, root),
        {**synthetic_instances_metadata(), "synthetic_spec": spec, "image_root": os.path.join(folder, "images")},
    )
    # COCOPanopticEvaluator reads panoptic_json / panoptic_root from the metadata: they exist once the
    # split has been generated, which happens before evaluation (the loader is called first).
    _register(
        pan_name,
        lambda: load_panoptic(split, spec, root),
        {
            **synthetic_panoptic_metadata(),
            "synthetic_spec": spec,
            "image_root": os.path.join(folder, "images"),
            "panoptic_root": os.path.join(folder, "panoptic"),
            "panoptic_json": os.path.join(folder, "panoptic.json"),
            "sem_seg_root": os.path.join(folder, "sem_seg"),
        },
    )
    _register(
        f"{prefix}_panoptic_separated_{split}",
        lambda: load_panoptic(split, spec, root, separated=True),
        {
            **synthetic_panoptic_separated_metadata(),
            "synthetic_spec": spec,
            "image_root": os.path.join(folder, "images"),
            "panoptic_root": os.path.join(folder, "panoptic"),
            "panoptic_json": os.path.join(folder, "panoptic.json"),
        },
    )
    return inst_name, pan_name


def register_all_synthetic(specs: Optional[Dict[str, SyntheticSpec]] = None, root: Optional[str] = None):
    for split, spec in (specs or DEFAULT_SPECS).items():
        register_synthetic(split, spec, root)


def specs_from_cfg(cfg) -> Dict[str, SyntheticSpec]:
    """The train/val specs named by ``cfg.DATASETS.SYNTHETIC``."""
    node = cfg.DATASETS.SYNTHETIC
    h, w = node.IMAGE_SIZE
    common = dict(height=int(h), width=int(w), max_instances=int(node.MAX_INSTANCES))
    return {
        "train": SyntheticSpec(num_images=int(node.NUM_TRAIN), seed=int(node.SEED), **common),
        "val": SyntheticSpec(num_images=int(node.NUM_VAL), seed=int(node.SEED) + 1, **common),
    }


def register_synthetic_from_cfg(cfg) -> None:
    """(Re-)register the synthetic names with the sizes and seed of ``cfg.DATASETS.SYNTHETIC``."""
    register_all_synthetic(specs_from_cfg(cfg))
