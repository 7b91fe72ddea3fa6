"""Mask Point R-CNN's torch-only blocks: the contour-point sampler (Sec. III-C) and the fusion of the keypoint
logits into the mask logits (Eq. 1-2)."""

from .contour import CENTERS, SAMPLINGS, sample_contour_points
from .fusion import FUSIONS, REDUCTIONS, STRUCTURES, ContourFusion

__all__ = ["CENTERS", "FUSIONS", "REDUCTIONS", "SAMPLINGS", "STRUCTURES", "ContourFusion", "sample_contour_points"]
