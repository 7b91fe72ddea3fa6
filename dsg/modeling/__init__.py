"""DSG's detectron2 components (importing this registers DSGROIHeads, CascadeDSGROIHeads and
FeatureMaskRCNNHead)."""

from .cascade import CascadeDSGROIHeads
from .heads import FeatureFusion, FeatureMaskRCNNHead, MaskProposalNetwork
from .poolers import BinApproxShapeGuidedPooler, ShapeGuidedROIPooler, build_guided_pooler
from .roi_heads import DSGROIHeads, MPNMixin, mpn_training_rois, proposal_indices

__all__ = [
    "BinApproxShapeGuidedPooler",
    "CascadeDSGROIHeads",
    "DSGROIHeads",
    "FeatureFusion",
    "FeatureMaskRCNNHead",
    "MPNMixin",
    "MaskProposalNetwork",
    "ShapeGuidedROIPooler",
    "build_guided_pooler",
    "mpn_training_rois",
    "proposal_indices",
]
