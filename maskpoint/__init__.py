"""Mask Point R-CNN (``papers/mask_point_rcnn.txt``) as a detectron2 extension.

``maskpoint.layers`` (the contour-point sampler of Sec. III-C and the fusion of Eq. 1-2) needs only numpy, OpenCV and
torch. With detectron2 installed, importing the package registers the detectron2 parts (``maskpoint.modeling``: ROI
heads, contour keypoint head, the dataset mapper that samples the targets) and the contour-keypoint evaluator
(``maskpoint.evaluation``); it always registers ``add_maskpoint_config``.
"""

import importlib.util

from instseg.registry import METHOD_CONFIG_REGISTRY, METHOD_EVALUATOR_REGISTRY

from . import layers  # noqa: F401
from .config import add_maskpoint_config
from .layers import sample_contour_points

METHOD_CONFIG_REGISTRY.register(add_maskpoint_config)

if importlib.util.find_spec("detectron2") is not None:
    from . import modeling  # noqa: F401  (registers MaskPointROIHeads, ContourPointHead, ContourPointDatasetMapper)
    from .evaluation import contour_keypoint_evaluators

    METHOD_EVALUATOR_REGISTRY.register(contour_keypoint_evaluators)

__all__ = ["add_maskpoint_config", "sample_contour_points"]
