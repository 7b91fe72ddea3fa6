"""MaskPlus's torch-only blocks: contextual fusion's conv stack (Sec. 3.1), the deconvolutional pyramid (Sec. 3.2) and
boundary refinement (Sec. 3.3)."""

from .boundary import (
    BOUNDARY_REFINEMENTS,
    DenseBoundaryModule,
    ImprovedBoundaryRefinement,
    OriginalBoundaryRefinement,
    build_boundary_refinement,
)
from .context import ContextualFusion
from .deconv_pyramid import DeconvPyramid

__all__ = [
    "BOUNDARY_REFINEMENTS",
    "ContextualFusion",
    "DeconvPyramid",
    "DenseBoundaryModule",
    "ImprovedBoundaryRefinement",
    "OriginalBoundaryRefinement",
    "build_boundary_refinement",
]
