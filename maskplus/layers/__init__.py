"""MaskPlus's torch-only blocks: boundary refinement (Sec. 3.3) and the deconvolutional pyramid (Sec. 3.2)."""

from .boundary import (
    BOUNDARY_REFINEMENTS,
    DenseBoundaryModule,
    ImprovedBoundaryRefinement,
    OriginalBoundaryRefinement,
    build_boundary_refinement,
)
from .deconv_pyramid import DeconvPyramid

__all__ = [
    "BOUNDARY_REFINEMENTS",
    "DeconvPyramid",
    "DenseBoundaryModule",
    "ImprovedBoundaryRefinement",
    "OriginalBoundaryRefinement",
    "build_boundary_refinement",
]
