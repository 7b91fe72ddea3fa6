"""RoI feature extraction guided by a probability map (DSG Sec. 3.4), with one call signature
``pooler(features, boxes, probs)``:

* :class:`ShapeGuidedROIPooler`: detectron2's multi-level (FPN) ``ROIPooler`` whose level poolers are SgRoIAlign
  (``dsg.layers.SgROIAlign``, Eq. 1-2). Boxes go to FPN levels exactly as in ``ROIPooler``
  (``assign_boxes_to_levels``, FPN Eq. 1) and every RoI's probability map goes along to the level that pools it.
  With all-zero maps it returns what ``ROIPooler`` returns.
* :class:`BinApproxShapeGuidedPooler`: the bin approximation of Eq. 2.
"""

from typing import List

import torch
from detectron2.layers import nonzero_tuple
from detectron2.modeling.poolers import ROIPooler, assign_boxes_to_levels, convert_boxes_to_pooler_format
from detectron2.structures import Boxes
from torch import nn
from torch.nn import functional as F

from ..layers import SgROIAlign

SG_MODES = ("exact", "bin_approx")


class ShapeGuidedROIPooler(ROIPooler):
    """``ROIPooler`` whose level poolers are :class:`SgROIAlign`.

    Args:
        output_size, scales, sampling_ratio, canonical_box_size, canonical_level: as ``ROIPooler``.
        pooler_type: "ROIAlignV2" (aligned, detectron2's default) or "ROIAlign" (legacy, not aligned); the
            other ``ROIPooler`` types (ROIPool, ROIAlignRotated) have no shape-guided form.
    """

    def __init__(
        self,
        output_size,
        scales,
        sampling_ratio,
        pooler_type: str = "ROIAlignV2",
        canonical_box_size: int = 224,
        canonical_level: int = 4,
    ):
        if pooler_type not in ("ROIAlign", "ROIAlignV2"):
            raise ValueError(
                f"ShapeGuidedROIPooler: pooler_type must be 'ROIAlign' or 'ROIAlignV2', got {pooler_type!r}"
            )
        super().__init__(
            output_size,
            scales,
            sampling_ratio,
            pooler_type,
            canonical_box_size=canonical_box_size,
            canonical_level=canonical_level,
        )
        aligned = pooler_type == "ROIAlignV2"
        self.level_poolers = nn.ModuleList(
            SgROIAlign(self.output_size, spatial_scale=scale, sampling_ratio=sampling_ratio, aligned=aligned)
            for scale in scales
        )

    def forward(self, x: List[torch.Tensor], box_lists: List[Boxes], probs: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: feature maps (N, C, H_l, W_l), one per level, with the scales this pooler was built with.
            box_lists: N ``Boxes`` in image coordinates.
            probs: (M, Hp, Wp) probability map of each box, in the order of the concatenated ``box_lists``.

        Returns:
            (M, C, output_size[0], output_size[1]).
        """
        num_levels = len(self.level_poolers)
        if not isinstance(x, list) or not isinstance(box_lists, list):
            raise ValueError("ShapeGuidedROIPooler: features and box_lists must be lists")
        if len(x) != num_levels:
            raise ValueError(f"ShapeGuidedROIPooler: expected {num_levels} feature maps, got {len(x)}")
        if len(box_lists) != x[0].size(0):
            raise ValueError(
                f"ShapeGuidedROIPooler: got {len(box_lists)} box lists for a batch of {x[0].size(0)} images"
            )
        num_boxes = sum(len(b) for b in box_lists)
        if not isinstance(probs, torch.Tensor) or probs.dim() != 3 or probs.shape[0] != num_boxes:
            shape = tuple(probs.shape) if isinstance(probs, torch.Tensor) else type(probs).__name__
            raise ValueError(f"ShapeGuidedROIPooler: probs must be ({num_boxes}, Hp, Wp), got {shape}")

        num_channels = x[0].shape[1]
        if num_boxes == 0:  # as ROIPooler: an empty (0, C, oh, ow) result
            return x[0].new_zeros(0, num_channels, *self.output_size)
        pooler_fmt_boxes = convert_boxes_to_pooler_format(box_lists)
        if num_levels == 1:
            return self.level_poolers[0](x[0], pooler_fmt_boxes, probs)

        level_assignments = assign_boxes_to_levels(
            box_lists, self.min_level, self.max_level, self.canonical_box_size, self.canonical_level
        )
        output = x[0].new_zeros(num_boxes, num_channels, *self.output_size)
        for level, pooler in enumerate(self.level_poolers):
            inds = nonzero_tuple(level_assignments == level)[0]
            output.index_put_((inds,), pooler(x[level], pooler_fmt_boxes[inds], probs[inds]))
        return output


class BinApproxShapeGuidedPooler(ROIPooler):
    """RoIAlign, then each bin times (1 + P averaged over the bin): the approximation of Eq. 2 that the
    authors' later code uses (P sampled once per bin instead of at every sampling point)."""

    def forward(self, x: List[torch.Tensor], box_lists: List[Boxes], probs: torch.Tensor) -> torch.Tensor:
        feats = super().forward(x, box_lists)
        if probs.shape[0] != feats.shape[0]:
            raise ValueError(
                f"BinApproxShapeGuidedPooler: probs must have one map per box ({feats.shape[0]}), "
                f"got {tuple(probs.shape)}"
            )
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
