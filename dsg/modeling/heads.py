"""Mask heads that hand out their intermediate features F_- (DSG Sec. 3.2-3.3, Eq. 3), the MPN, and the
fusion conv that adds F_- to another head's RoI features."""

from typing import List

import torch
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec
from detectron2.modeling.roi_heads import ROI_MASK_HEAD_REGISTRY, MaskRCNNConvUpsampleHead
from detectron2.modeling.roi_heads.mask_head import mask_rcnn_inference, mask_rcnn_loss
from detectron2.structures import Instances
from torch import nn
from torch.nn import functional as F

from instseg.layers import upsample_and_predict


@ROI_MASK_HEAD_REGISTRY.register()
class FeatureMaskRCNNHead(MaskRCNNConvUpsampleHead):
    """detectron2's mask head (convs, 2x deconvolution, 1x1 predictor) that also returns F_-, the output of
    its last conv (before the deconvolution). The MPN is one (class-agnostic); so is every stage's mask
    head in Cascade DSG, whose F_-^t feeds the next stage (Eq. 3)."""

    def layers_with_features(self, x):
        """(mask logits (R, C, 2S, 2S), F_- (R, D, S, S)) for RoI features x (R, Cin, S, S)."""
        for conv in self.conv_norm_relus:
            x = conv(x)
        # predictor(relu(deconv(F_-))) as matrix products: same function, about half the CPU time
        return upsample_and_predict(x, self.deconv, self.predictor), x

    def layers(self, x):
        return self.layers_with_features(x)[0]

    def losses(self, logits, instances: List[Instances]):
        return mask_rcnn_loss(logits, instances, self.vis_period) * self.loss_weight

    def inference(self, logits, instances: List[Instances]):
        mask_rcnn_inference(logits, instances)
        return instances


class MaskProposalNetwork(FeatureMaskRCNNHead):
    """The MPN of the mask-supervised RPN (Sec. 3.2, Fig. 3): a class-agnostic mask head on RoIAlign
    features of the box head's RoIs. Its width, depth and resolution are ``MODEL.DSG.MPN_*``."""

    @classmethod
    def from_config(cls, cfg, input_shape):
        dsg = cfg.MODEL.DSG
        return {
            "input_shape": input_shape,
            "num_classes": 1,
            "conv_dims": [dsg.MPN_CONV_DIM] * (dsg.MPN_NUM_CONV + 1),
            "conv_norm": dsg.MPN_NORM,
            "loss_weight": dsg.MPN_LOSS_WEIGHT,
            "vis_period": 0,
        }

    @configurable
    def __init__(self, input_shape: ShapeSpec, **kwargs):
        """
        Args:
            input_shape (ShapeSpec): the RoI features' channels and resolution (``MODEL.DSG.MPN_POOLER_RESOLUTION``).
            kwargs: as ``MaskRCNNConvUpsampleHead``: ``num_classes`` (1: class-agnostic), ``conv_dims`` (the
                ``MPN_NUM_CONV`` convs of ``MPN_CONV_DIM`` channels, then the deconvolution's), ``conv_norm``,
                ``loss_weight`` (of ``loss_mpn``), ``vis_period``.
        """
        if kwargs["conv_dims"][0] < 1 or len(kwargs["conv_dims"]) < 2:
            raise ValueError("MODEL.DSG.MPN_NUM_CONV and MPN_CONV_DIM must be >= 1")
        super().__init__(input_shape, **kwargs)


class FeatureFusion(nn.Module):
    """F_- -> (adaptive average pooling to the target resolution, Sec. 3.3) -> conv -> to be summed with a
    head's RoI features. The conv starts at zero, so a model starts from its un-fused counterpart."""

    def __init__(self, in_channels: int, out_channels: int, out_size: int, kernel_size: int = 1):
        super().__init__()
        if kernel_size not in (1, 3):
            raise ValueError(f"MODEL.DSG.FUSION_KERNEL_SIZE must be 1 or 3, got {kernel_size}")
        self.out_size = out_size
        self.conv = Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        if feat.shape[-1] != self.out_size or feat.shape[-2] != self.out_size:
            feat = F.adaptive_avg_pool2d(feat, self.out_size)
        return self.conv(feat)
