"""RDSNet's two streams (Sec. 3.1, 4.1): the object stream's head (RetinaNet's cls and box towers plus a
representation tower) and the pixel stream (PanopticFPN's semantic branch, 256 channels, then 1x1 to d)."""

import math
from typing import List

import torch
from detectron2.config import configurable
from detectron2.layers import CycleBatchNormList, ShapeSpec, get_norm
from detectron2.modeling.meta_arch.retinanet import RetinaNetHead
from torch import nn
from torch.nn import functional as F

MASK_ASSEMBLIES = ("corr", "lc")


def _tower(in_channels: int, dims: List[int], norm: str, num_levels: int) -> nn.Sequential:
    """conv3x3 -> norm -> ReLU per width, the way RetinaNetHead builds its towers (BN: one BN per level)."""
    layers = []
    for c_in, c_out in zip([in_channels, *dims], dims):
        layers.append(nn.Conv2d(c_in, c_out, kernel_size=3, padding=1))
        if norm in ("BN", "SyncBN"):
            bn = nn.BatchNorm2d if norm == "BN" else nn.SyncBatchNorm
            layers.append(CycleBatchNormList(length=num_levels, bn_class=bn, num_features=c_out))
        elif norm:
            layers.append(get_norm(norm, c_out))
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class RDSNetHead(RetinaNetHead):
    """``RetinaNetHead`` plus the representation tower (Sec. 3.1, "a new branch in parallel with the classification
    and regression branches"): ``rep_num_convs`` x conv3x3 (+ norm) + ReLU, then a 3x3 conv (``rep_pred``) giving each
    anchor its object representation, 2 x d (``lc``: d coefficients).

    ``forward`` returns (logits, deltas, rep features) per level: the tower's output, before ``rep_pred``. Training
    applies ``rep_pred`` everywhere (``predict_reps``); inference only at the anchors of the detections kept after NMS
    (``reps_at``, the same numbers), which saves a 576-channel 3x3 conv over every position of P3-P7."""

    @configurable
    def __init__(self, *, rep_dim: int, rep_num_convs: int, mask_assembly: str = "corr", **kwargs):
        super().__init__(**kwargs)
        if mask_assembly not in MASK_ASSEMBLIES:
            raise ValueError(f"MODEL.RDSNET.MASK_ASSEMBLY must be one of {MASK_ASSEMBLIES}, got {mask_assembly!r}")
        input_shape, norm = kwargs["input_shape"], kwargs.get("norm", "")
        channels = input_shape[0].channels
        num_anchors = self.bbox_pred.out_channels // 4
        self.rep_size = (2 if mask_assembly == "corr" else 1) * rep_dim
        self.rep_subnet = _tower(channels, [channels] * rep_num_convs, norm, len(input_shape))
        self.rep_pred = nn.Conv2d(channels, num_anchors * self.rep_size, kernel_size=3, padding=1)
        for layer in [*self.rep_subnet.modules(), self.rep_pred]:
            if isinstance(layer, nn.Conv2d):
                nn.init.normal_(layer.weight, mean=0, std=0.01)
                nn.init.constant_(layer.bias, 0)

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        ret = super().from_config(cfg, input_shape)
        r = cfg.MODEL.RDSNET
        ret.update(rep_dim=r.REP_DIM, rep_num_convs=r.REP_NUM_CONVS, mask_assembly=r.MASK_ASSEMBLY)
        return ret

    def forward(self, features: List[torch.Tensor]):
        logits, deltas = super().forward(features)
        return logits, deltas, [self.rep_subnet(f) for f in features]

    def predict_reps(self, rep_features: List[torch.Tensor]) -> List[torch.Tensor]:
        """The representations of every anchor: (N, A x rep_size, H, W) per level."""
        return [self.rep_pred(f) for f in rep_features]

    def reps_at(self, rep_feature: torch.Tensor, anchor_idx: torch.Tensor) -> torch.Tensor:
        """(K, rep_size): ``rep_pred`` evaluated at the given anchors of one image's level only. ``rep_feature`` is
        (C, H, W); ``anchor_idx`` indexes detectron2's (H x W x A) order, (y * W + x) * A + a."""
        C, H, W = rep_feature.shape
        rs = self.rep_size
        A = self.rep_pred.out_channels // rs
        pos, a = anchor_idx // A, anchor_idx % A
        y, x = pos // W, pos % W
        r = torch.arange(3, device=rep_feature.device)
        padded = F.pad(rep_feature, (1, 1, 1, 1))
        patches = padded[:, (y[:, None] + r)[:, :, None], (x[:, None] + r)[:, None, :]]  # (C, K, 3, 3)
        patches = patches.permute(1, 0, 2, 3).reshape(len(anchor_idx), C * 9)
        weight = self.rep_pred.weight.view(A, rs, C * 9)
        bias = self.rep_pred.bias.view(A, rs)
        out = None
        for k in a.unique().tolist():
            sel = a == k
            r = patches[sel] @ weight[k].T + bias[k]
            if out is None:  # the result's dtype (under autocast, not the features')
                out = r.new_empty((len(anchor_idx), rs))
            out[sel] = r
        return out if out is not None else patches.new_empty((0, rs))


class PixelStream(nn.Module):
    """The pixel stream (Sec. 4.1): PanopticFPN's semantic branch merging the pyramid into one map, 256 channels.

    The authors' wiring, with s0 the finest input stride (P3: 8): a level of stride s0 * 2^n gets n x (conv3x3 +
    norm + ReLU, 2x bilinear up) (at least one conv); the levels are summed at s0; then (conv + 2x up) until the
    output stride (4), and a 1x1 conv to d (the pixel representations Psi(U))."""

    def __init__(self, input_shapes: List[ShapeSpec], conv_dim: int, norm: str, out_stride: int, out_dim: int):
        super().__init__()
        strides = [s.stride for s in input_shapes]
        s0 = min(strides)
        if out_stride > s0 or s0 % out_stride or any(s % s0 or (s // s0) & (s // s0 - 1) for s in strides):
            raise ValueError(
                f"PixelStream: input strides {strides} must be s0 x 2^n and the output stride {out_stride} a power-of-2"
                " divisor of s0"
            )

        def block(c_in):
            return nn.Sequential(
                nn.Conv2d(c_in, conv_dim, 3, padding=1, bias=not norm),
                get_norm(norm, conv_dim) or nn.Identity(),
                nn.ReLU(),
            )

        self.levels = nn.ModuleList()
        for shape in input_shapes:
            n = int(math.log2(shape.stride // s0))
            self.levels.append(nn.ModuleList([block(shape.channels if i == 0 else conv_dim) for i in range(max(n, 1))]))
        self.ups = [int(math.log2(s.stride // s0)) for s in input_shapes]
        self.tail = nn.ModuleList([block(conv_dim) for _ in range(int(math.log2(s0 // out_stride)))])
        self.predictor = nn.Conv2d(conv_dim, out_dim, 1)
        self.out_stride = out_stride
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # The authors' code starts Psi(U) near 0 (normal, std 0.01), as the representation tower's last conv: every
        # z of Eq. 1 then starts near 0 (mask loss ln 2). With Psi(U) at unit scale instead, z starts random (mask
        # loss ~2 on the synthetic data) and the optimiser first drives it to 0 before it separates foreground from
        # background: on one synthetic batch the loss leaves ln 2 after ~60 AdamW steps instead of ~15.
        nn.init.normal_(self.predictor.weight, std=0.01)

    def forward(self, features: List[torch.Tensor]) -> torch.Tensor:
        out = None
        for x, blocks, ups in zip(features, self.levels, self.ups):
            for i, blk in enumerate(blocks):
                x = blk(x)
                if i < ups:
                    x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            out = x if out is None else out + x
        for blk in self.tail:
            out = F.interpolate(blk(out), scale_factor=2, mode="bilinear", align_corners=False)
        return self.predictor(out)
