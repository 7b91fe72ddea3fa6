"""RoI feature extraction guided by a probability map (DSG Sec. 3.4): exact SgRoIAlign or the bin
approximation, with the same call signature."""
from typing import List

import torch
from detectron2.modeling.poolers import ROIPooler
from detectron2.structures import Boxes
from torch import nn
from torch.nn import functional as F

from ..layers import ShapeGuidedROIPooler

SG_MODES = ("exact", "bin_approx")


class BinApproxShapeGuidedPooler(ROIPooler):
    """RoIAlign, then each bin times (1 + P averaged over the bin): the approximation of Eq. 2 that the
    authors' later code uses (P sampled once per bin instead of at every sampling point)."""

    def forward(self, x: List[torch.Tensor], box_lists: List[Boxes], probs: torch.Tensor) -> torch.Tensor:
        feats = super().forward(x, box_lists)
        if probs.shape[0] != feats.shape[0]:
            raise ValueError(f"BinApproxShapeGuidedPooler: probs must have one map per box ({feats.shape[0]}), "
                             f"got {tuple(probs.shape)}")
        p = F.adaptive_avg_pool2d(probs[:, None].to(feats.dtype), feats.shape[-2:])
        return feats * (1.0 + p)


def pooler_args(cfg, input_shape, node):
    """ROIPooler arguments of a head config node (ROI_BOX_HEAD / ROI_MASK_HEAD), as detectron2 builds them."""
    in_features = cfg.MODEL.ROI_HEADS.IN_FEATURES
    return dict(
        output_size=node.POOLER_RESOLUTION,
        scales=tuple(1.0 / input_shape[k].stride for k in in_features),
        sampling_ratio=node.POOLER_SAMPLING_RATIO,
        pooler_type=node.POOLER_TYPE,
    )


def build_guided_pooler(mode: str, **pooler_kwargs) -> nn.Module:
    """A pooler called as ``pooler(features, boxes, probs)``: SgRoIAlign (``exact``) or ``bin_approx``."""
    if mode == "exact":
        return ShapeGuidedROIPooler(**pooler_kwargs)
    if mode == "bin_approx":
        return BinApproxShapeGuidedPooler(**pooler_kwargs)
    raise ValueError(f"MODEL.DSG.SG_MODE must be one of {SG_MODES}, got {mode!r}")
