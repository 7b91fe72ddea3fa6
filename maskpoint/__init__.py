"""Mask Point R-CNN (``papers/mask_point_rcnn.txt``) as a detectron2 extension.

``maskpoint.sample_contour_points`` (the contour-point targets) and ``maskpoint.modeling.fusion`` need only
numpy/OpenCV/torch; the detectron2 parts (ROI heads, keypoint head) are registered when detectron2 is
installed.
"""
from . import modeling  # noqa: F401  (with detectron2: registers MaskPointROIHeads, ContourPointHead)
from .config import add_maskpoint_config
from .contour import sample_contour_points

__all__ = ["add_maskpoint_config", "sample_contour_points"]
