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

from .errors import UserError

ensure_cityscapesscripts_alias()  # CityscapesInstanceEvaluator imports cityscapesscripts by an internal path

SUPPORTED = ("coco", "coco_panoptic_seg", "sem_seg", "cityscapes_instance", "cityscapes_sem_seg",
             "cityscapes_panoptic_seg")


def coco_tasks(cfg):
    """The COCO tasks a config's model is evaluated on: bbox, segm with MODEL.MASK_ON, keypoints with
    MODEL.KEYPOINT_ON. Not what the predictions happen to carry: Mask Point R-CNN predicts contour keypoints
    that COCO/Cityscapes ground truth does not have (its own evaluator scores them, see maskpoint)."""
    return ("bbox",) + (("segm",) if cfg.MODEL.MASK_ON else ()) + (("keypoints",) if cfg.MODEL.KEYPOINT_ON else ())


def method_evaluators(cfg, dataset_name, output_folder):
    """Evaluators a method adds for what only it predicts (Mask Point R-CNN's contour keypoints)."""
    if "MASK_POINT" in cfg.MODEL and cfg.MODEL.MASK_POINT.EVAL_KEYPOINTS:
        from maskpoint.evaluation import ContourKeypointEvaluator

        return [ContourKeypointEvaluator.from_config(cfg, dataset_name, output_folder)]
    return []


def build_evaluator(cfg, dataset_name, output_folder=None):
    """The detectron2 evaluators that fit ``dataset_name``'s ``evaluator_type``.

    coco → COCOEvaluator on the tasks the config asks for (see ``coco_tasks``); cityscapes_instance →
    CityscapesInstanceEvaluator; cityscapes_sem_seg / sem_seg → the semantic evaluators;
    coco_panoptic_seg / cityscapes_panoptic_seg → COCOPanopticEvaluator plus the semantic evaluator
    (and COCO instances when the metadata names an instances json).
    """
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    meta = MetadataCatalog.get(dataset_name)
    evaluator_type = meta.get("evaluator_type", None)
    evaluators = []
    if evaluator_type == "coco":
        evaluators.append(COCOEvaluator(dataset_name, tasks=coco_tasks(cfg), output_dir=output_folder))
    elif evaluator_type in ("sem_seg",):
        evaluators.append(SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder))
    elif evaluator_type == "cityscapes_instance":
        evaluators.append(CityscapesInstanceEvaluator(dataset_name))
    elif evaluator_type == "cityscapes_sem_seg":
        evaluators.append(CityscapesSemSegEvaluator(dataset_name))
    elif evaluator_type == "coco_panoptic_seg":
        evaluators.append(COCOPanopticEvaluator(dataset_name, output_folder))
        evaluators.append(SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder))
        if meta.get("json_file", None):
            evaluators.append(COCOEvaluator(dataset_name, tasks=coco_tasks(cfg), output_dir=output_folder))
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
