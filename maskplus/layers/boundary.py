"""Boundary refinement on the mask logits (MaskPlus Sec. 3.3, 4.6, Fig. 4, Table 3), residual, torch only.

* ``original`` (Peng et al. 2017, the paper's [26]): ``x + conv3x3(ReLU(conv3x3(x)))``, no normalisation, the
  convs as wide as the logits.
* ``improved`` (MaskPlus): 4 densely connected modules, each BatchNorm -> PReLU -> Conv(16) -> BatchNorm -> PReLU ->
  Conv(4) (Sec. 4.6). Module i takes the concatenation of the logits and the outputs of modules 1..i-1 (widths
  C, C+4, C+8, C+12: DenseNet-BC with growth 4, so the 16-filter conv is the 1x1 bottleneck and the 4-filter conv
  the 3x3 one); a 1x1 conv brings the concatenation of everything (C+16) back to the C logit channels, added to the
  logits.

The paper does not say how the branches start. ``original`` starts as Peng et al. initialise it (default init);
``improved``'s last 1x1 conv, which is not in the paper's figure text, starts at zero, so that the refinement
starts as the identity and learns what to add.
"""

import torch
from torch import nn

BOUNDARY_REFINEMENTS = ("none", "original", "improved")


class OriginalBoundaryRefinement(nn.Module):
    """``x + conv3x3(ReLU(conv3x3(x)))`` (Peng et al. 2017's boundary refinement block)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(torch.relu(self.conv1(x)))


class DenseBoundaryModule(nn.Sequential):
    """BatchNorm -> PReLU -> Conv1x1(bottleneck) -> BatchNorm -> PReLU -> Conv3x3(growth) (Sec. 4.6)."""

    def __init__(self, in_channels: int, bottleneck: int = 16, growth: int = 4):
        super().__init__(
            nn.BatchNorm2d(in_channels),
            nn.PReLU(in_channels),
            nn.Conv2d(in_channels, bottleneck, 1),
            nn.BatchNorm2d(bottleneck),
            nn.PReLU(bottleneck),
            nn.Conv2d(bottleneck, growth, 3, padding=1),
        )


class ImprovedBoundaryRefinement(nn.Module):
    """MaskPlus's refinement: ``x + conv1x1(concat(x, m_1, ..., m_n))``, with module ``m_i`` on
    ``concat(x, m_1, ..., m_{i-1})`` (Fig. 4; n = 4, bottleneck 16, growth 4 in Sec. 4.6)."""

    def __init__(self, channels: int, num_modules: int = 4, bottleneck: int = 16, growth: int = 4):
        super().__init__()
        if num_modules < 1:
            raise ValueError(f"ImprovedBoundaryRefinement needs >= 1 module, got {num_modules}")
        self.dense = nn.ModuleList(
            DenseBoundaryModule(channels + i * growth, bottleneck, growth) for i in range(num_modules)
        )
        self.fuse = nn.Conv2d(channels + num_modules * growth, channels, 1)
        nn.init.zeros_(self.fuse.weight)
        nn.init.zeros_(self.fuse.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for module in self.dense:
            feats.append(module(torch.cat(feats, dim=1)))
        return x + self.fuse(torch.cat(feats, dim=1))


def build_boundary_refinement(kind: str, channels: int) -> nn.Module:
    """``MODEL.MASKPLUS.BOUNDARY_REFINEMENT``: the refinement of ``channels`` mask logits (identity for ``none``)."""
    if kind == "none":
        return nn.Identity()
    if kind == "original":
        return OriginalBoundaryRefinement(channels)
    if kind == "improved":
        return ImprovedBoundaryRefinement(channels)
    raise ValueError(f"MODEL.MASKPLUS.BOUNDARY_REFINEMENT must be one of {BOUNDARY_REFINEMENTS}, got {kind!r}")
