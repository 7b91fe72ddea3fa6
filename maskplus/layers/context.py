"""Contextual fusion's conv stack (MaskPlus Sec. 3.1, 4.4, Fig. 2, Table 1), torch only.

The ROI heads RoIAlign ONE full-image box per image (same output size and sampling as the mask RoIAlign) from one
FPN level; this module runs the paper's stack of 3x3, stride-1 convs on those context features and adds the result
of each image to every one of that image's RoI features, before the mask head's convs.

The paper gives the kernel, stride and widths, not the activations: a ReLU follows every conv but the last, whose
output is added to the RoI features as it is (a ReLU there could only add, never subtract, context).
"""

from typing import Sequence

import torch
from torch import nn


class ContextualFusion(nn.Module):
    """3x3 convs of widths ``conv_dims`` on the per-image context features; ``forward`` adds them to the RoIs."""

    def __init__(self, in_channels: int, conv_dims: Sequence[int]):
        super().__init__()
        conv_dims = [int(d) for d in conv_dims]
        if not conv_dims or conv_dims[-1] != in_channels:
            raise ValueError(
                f"MODEL.MASKPLUS.CONTEXT_CONV_DIMS={conv_dims}: the context is added to the mask RoI features, so "
                f"the last conv must have their {in_channels} channels"
            )
        layers = []
        for i, dim in enumerate(conv_dims):
            conv = nn.Conv2d(in_channels if i == 0 else conv_dims[i - 1], dim, 3, padding=1)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
            layers.append(conv)
            if i < len(conv_dims) - 1:
                layers.append(nn.ReLU(inplace=True))
        self.convs = nn.Sequential(*layers)

    def forward(self, roi_features: torch.Tensor, context: torch.Tensor, rois_per_image: Sequence[int]):
        """
        Args:
            roi_features: (R, C, S, S) the mask RoI features of a batch, image by image.
            context: (N, C, S, S) the RoIAligned full-image box of each of the N images.
            rois_per_image: N counts, summing to R.
        Returns:
            (R, C, S, S): each RoI's features plus the conv stack's output on its image's context.
        """
        if context.shape[0] != len(rois_per_image) or sum(rois_per_image) != roi_features.shape[0]:
            raise ValueError(
                f"ContextualFusion: {context.shape[0]} context maps and {len(rois_per_image)} images with "
                f"{sum(rois_per_image)} RoIs for {roi_features.shape[0]} RoI features"
            )
        # no early return for R = 0: the convs stay in the graph (zero gradients), as DDP expects every parameter
        repeats = torch.as_tensor(list(rois_per_image), device=context.device)
        added = self.convs(context).repeat_interleave(repeats, dim=0, output_size=roi_features.shape[0])  # no sync
        return roi_features + added
