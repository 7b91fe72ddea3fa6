"""CASNet's fusion and heads (Sec. III-A): HRNetV2-style fusion of the backbone levels, and the three fully
convolutional heads (semantic, common-attribute, box-probability), all at one output stride."""

from typing import Dict, List

import torch
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from torch import nn
from torch.nn import functional as F


class HRFusion(nn.Module):
    """HRNetV2's representation head: every level resized (bilinear) to the output stride's grid, concatenated, then a
    1x1 conv + norm + ReLU to ``channels``."""

    def __init__(
        self,
        input_shapes: Dict[str, ShapeSpec],
        in_features: List[str],
        out_stride: int,
        channels: int,
        norm: str = "BN",
    ):
        super().__init__()
        self.in_features = list(in_features)
        self.out_stride = out_stride
        total = sum(input_shapes[f].channels for f in self.in_features)
        self.fuse = Conv2d(total, channels, 1, bias=not norm, norm=get_norm(norm, channels), activation=nn.ReLU())

    def forward(self, features: Dict[str, torch.Tensor], image_size) -> torch.Tensor:
        size = (image_size[0] // self.out_stride, image_size[1] // self.out_stride)
        xs = [
            f if f.shape[-2:] == size else F.interpolate(f, size=size, mode="bilinear", align_corners=False)
            for f in (features[n] for n in self.in_features)
        ]
        return self.fuse(torch.cat(xs, dim=1))


class FCNHead(nn.Sequential):
    """FCN's head (Sec. III-A, "configured the same as FCN"): ``num_convs`` x (3x3 conv + norm + ReLU), then a 1x1
    predictor."""

    def __init__(self, in_channels: int, channels: int, num_convs: int, out_channels: int, norm: str = "BN"):
        layers = []
        for i in range(num_convs):
            layers.append(
                Conv2d(
                    in_channels if i == 0 else channels,
                    channels,
                    3,
                    padding=1,
                    bias=not norm,
                    norm=get_norm(norm, channels),
                    activation=nn.ReLU(),
                )
            )
        layers.append(nn.Conv2d(channels if num_convs else in_channels, out_channels, 1))
        super().__init__(*layers)
