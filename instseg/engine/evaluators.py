"""Evaluator selection by the dataset's ``evaluator_type`` (detectron2's evaluators only)."""

import os

from detectron2.data import MetadataCatalog
from detectron2.evaluation import (
    CityscapesSemSegEvaluator,
    COCOEvaluator,
    COCOPanopticEvaluator,
    DatasetEvaluators,
    SemSegEvaluator,
)

from instseg.compat import ensure_cityscapesscripts_alias
from instseg.evaluation.cityscapes import CityscapesInstanceEvaluator
from instseg.evaluation.panoptic import ensure_panopticapi
from instseg.registry import METHOD_EVALUATOR_REGISTRY, load_methods

from .errors import UserError

ensure_cityscapesscripts_alias()  # CityscapesInstanceEvaluator imports cityscapesscripts by an internal path
ensure_panopticapi()  # COCOPanopticEvaluator imports panopticapi, which no package index has: ours where it is absent

SUPPORTED = (
    "coco",
    "coco_panoptic_seg",
    "sem_seg",
    "cityscapes_instance",
    "cityscapes_sem_seg",
    "cityscapes_panoptic_seg",
)


def coco_tasks(cfg, dataset_name):
    """The COCO tasks a config's model is evaluated on, on ``dataset_name``: bbox; segm with MODEL.MASK_ON;
    keypoints with MODEL.KEYPOINT_ON when the dataset has keypoint ground truth (its metadata names keypoints, as
    detectron2's keypoint datasets do). Not what the predictions happen to carry: a model may predict keypoints of
    its own making (Mask Point R-CNN's contour points) that no ground truth has; its own evaluator scores them."""
    has_keypoints = bool(MetadataCatalog.get(dataset_name).get("keypoint_names", None))
    return (
        ("bbox",)
        + (("segm",) if cfg.MODEL.MASK_ON else ())
        + (("keypoints",) if cfg.MODEL.KEYPOINT_ON and has_keypoints else ())
    )


def method_evaluators(cfg, dataset_name, output_folder):
    """Evaluators the method packages add for what only they predict (``METHOD_EVALUATOR_REGISTRY``)."""
    load_methods()
    return [
        e
        for _, fn in sorted(METHOD_EVALUATOR_REGISTRY, key=lambda item: item[0])
        for e in fn(cfg, dataset_name, output_folder)
    ]


def build_evaluator(cfg, dataset_name, output_folder=None):
    """The detectron2 evaluators that fit ``dataset_name``'s ``evaluator_type``.

    coco → COCOEvaluator on the tasks the config asks for (see ``coco_tasks``); cityscapes_instance →
    CityscapesInstanceEvaluator (mask AP, AP50, under "segm") and COCO box AP (under "bbox"; the dataset is
    converted to COCO json in ``output_folder`` when its metadata has no json_file); cityscapes_sem_seg / sem_seg →
    the semantic evaluators;
    coco_panoptic_seg / cityscapes_panoptic_seg → COCOPanopticEvaluator plus the semantic evaluator where the
    metadata has ``sem_seg_root`` (and COCO instances when the metadata names an instances json).
    """
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    meta = MetadataCatalog.get(dataset_name)
    evaluator_type = meta.get("evaluator_type", None)
    evaluators = []
    if evaluator_type == "coco":
        evaluators.append(COCOEvaluator(dataset_name, tasks=coco_tasks(cfg, dataset_name), output_dir=output_folder))
    elif evaluator_type in ("sem_seg",):
        evaluators.append(SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder))
    elif evaluator_type == "cityscapes_instance":
        evaluators.append(CityscapesInstanceEvaluator(dataset_name))
        # box AP next to the Cityscapes instance metrics (Table VII of Mask Point R-CNN reports AP_bb)
        evaluators.append(COCOEvaluator(dataset_name, tasks=("bbox",), output_dir=output_folder))
    elif evaluator_type == "cityscapes_sem_seg":
        evaluators.append(CityscapesSemSegEvaluator(dataset_name))
    elif evaluator_type == "coco_panoptic_seg":
        evaluators.append(COCOPanopticEvaluator(dataset_name, output_folder))
        if meta.get("sem_seg_root", None):  # semantic labels in the model's ids (not the separated convention's)
            evaluators.append(SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder))
        if meta.get("json_file", None):
            tasks = coco_tasks(cfg, dataset_name)
            evaluators.append(COCOEvaluator(dataset_name, tasks=tasks, output_dir=output_folder))
    elif evaluator_type == "cityscapes_panoptic_seg":
        evaluators.append(COCOPanopticEvaluator(dataset_name, output_folder))
        evaluators.append(CityscapesSemSegEvaluator(dataset_name))
        evaluators.append(CityscapesInstanceEvaluator(dataset_name))
    if evaluators:
        evaluators += method_evaluators(cfg, dataset_name, output_folder)
    if not evaluators:
        raise UserError(
            f"No evaluator for dataset '{dataset_name}' (evaluator_type={evaluator_type!r}). "
            f"Set its metadata's evaluator_type to one of {', '.join(SUPPORTED)}."
        )
    return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)
