"""Mask Point R-CNN (``papers/mask_point_rcnn.txt``) as a detectron2 extension.

``maskpoint.sample_contour_points`` (the contour-point targets) and ``maskpoint.modeling.fusion`` need only
numpy/OpenCV/torch; the detectron2 parts (ROI heads, keypoint head, the dataset mapper that samples the targets)
are registered when detectron2 is installed.
"""
import importlib.util

from . import (
    data,  # noqa: F401  (with detectron2: registers ContourPointDatasetMapper)
    modeling,  # noqa: F401  (with detectron2: registers MaskPointROIHeads, ContourPointHead)
)
from instseg.registry import METHOD_CONFIG_REGISTRY, METHOD_EVALUATOR_REGISTRY

from .config import add_maskpoint_config
from .contour import sample_contour_points

METHOD_CONFIG_REGISTRY.register(add_maskpoint_config)
if importlib.util.find_spec("detectron2") is not None:
    from .evaluation import contour_keypoint_evaluators

    METHOD_EVALUATOR_REGISTRY.register(contour_keypoint_evaluators)

__all__ = ["add_maskpoint_config", "sample_contour_points"]
