"""Mask Point R-CNN's detectron2 components (importing this registers ``MaskPointROIHeads``, ``ContourPointHead`` and
``ContourPointDatasetMapper``)."""

from .dataset_mapper import ContourPointDatasetMapper
from .keypoint_head import ContourPointHead
from .roi_heads import MaskPointROIHeads, contour_polygon_masks
from .targets import contour_keypoints

__all__ = [
    "ContourPointDatasetMapper",
    "ContourPointHead",
    "MaskPointROIHeads",
    "contour_keypoints",
    "contour_polygon_masks",
]
