"""MaskPlus's detectron2 parts, registered on import: ``MaskPlusROIHeads``, ``MaskPlusCascadeROIHeads`` (ROI heads)
and ``MaskPlusMaskHead`` (mask head)."""

from .mask_head import QUASI_LOSS, MaskPlusMaskHead, QuasiMultitaskBranch
from .roi_heads import (
    MaskPlusCascadeROIHeads,
    MaskPlusMixin,
    MaskPlusROIHeads,
    biased_alpha,
    check_maskplus_config,
    switch_iteration,
)

__all__ = [
    "QUASI_LOSS",
    "MaskPlusCascadeROIHeads",
    "MaskPlusMaskHead",
    "MaskPlusMixin",
    "MaskPlusROIHeads",
    "QuasiMultitaskBranch",
    "biased_alpha",
    "check_maskplus_config",
    "switch_iteration",
]
