"""Mask Point R-CNN's components. ``fusion`` needs only torch; the rest (importing them registers
``MaskPointROIHeads`` and ``ContourPointHead``) needs detectron2."""
import importlib.util

from .fusion import ContourFusion

__all__ = ["ContourFusion"]

if importlib.util.find_spec("detectron2") is not None:
    from .keypoint_head import ContourPointHead
    from .roi_heads import MaskPointROIHeads, contour_polygon_masks
    from .targets import contour_keypoints

    __all__ += ["ContourPointHead", "MaskPointROIHeads", "contour_keypoints", "contour_polygon_masks"]
