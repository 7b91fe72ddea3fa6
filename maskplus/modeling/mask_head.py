"""MaskPlus's mask head (Sec. 3.2-3.4, 4.5-4.7, Fig. 1): detectron2's ``MaskRCNNConvUpsampleHead`` with

* the deconvolutional pyramid (``DeconvPyramid``) between its convs and its 2x deconvolution (Table 2);
* boundary refinement of its logits (``none`` / ``original`` / ``improved``, Table 3);
* the quasi-multitask branch (Table 4): a second head, parallel to the main one on the same RoI features, with the
  main head's convs (its own weights) and one deconvolution less (``0.5x``: 14x14 logits) or one more (``2x``: 56x56),
  trained with its own mask loss ``loss_mask_quasi`` (weight ``QUASI_LOSS_WEIGHT``, 1: the paper gives none) against
  targets of its size. It is a scaffold (Sec. 3.4): it never runs at inference, and a checkpoint without it loads
  with no missing-key warning;
* ``mask_scale`` ``0.5x``: the main head without its deconvolution (14x14 logits, Table 4's "0.5x mask" row).

The branch takes the RoI features the main head takes (after contextual fusion, when it is on) and has neither the
pyramid nor the refinement: Sec. 4.7 builds it from L, Mask R-CNN's own mask layers. With every technique off this
head has exactly ``MaskRCNNConvUpsampleHead``'s modules, names and outputs.
"""

import logging
from typing import List

from detectron2.config import configurable
from detectron2.layers import Conv2d, ConvTranspose2d, ShapeSpec, get_norm
from detectron2.modeling.roi_heads import ROI_MASK_HEAD_REGISTRY
from detectron2.modeling.roi_heads.mask_head import (
    MaskRCNNConvUpsampleHead,
    mask_rcnn_inference,
    mask_rcnn_loss,
)
from detectron2.utils.events import get_event_storage
from fvcore.nn import weight_init
from torch import nn

from ..layers import DeconvPyramid, build_boundary_refinement

logger = logging.getLogger(__name__)

QUASI_MULTITASK_SCALES = ("none", "0.5x", "2x")
MASK_SCALES = ("1x", "0.5x")
# the quasi-multitask branch's loss (Sec. 3.4), next to detectron2's loss_mask
QUASI_LOSS = "loss_mask_quasi"


class QuasiMultitaskBranch(nn.Sequential):
    """Sec. 4.7: the layers L of the mask head (its 3x3 convs, own weights), then no deconvolution (``0.5x``, logits
    the size of the RoI features) or two 2x deconvolutions (``2x``, 4x the RoI features), then a 1x1 predictor."""

    def __init__(self, in_channels: int, conv_dims: List[int], conv_norm: str, num_classes: int, scale: str):
        super().__init__()
        if scale not in ("0.5x", "2x"):
            raise ValueError(f"QuasiMultitaskBranch: scale must be '0.5x' or '2x', got {scale!r}")
        channels = in_channels
        fills = []
        for k, dim in enumerate(conv_dims):
            conv = Conv2d(
                channels,
                dim,
                kernel_size=3,
                padding=1,
                bias=not conv_norm,
                norm=get_norm(conv_norm, dim),
                activation=nn.ReLU(),
            )
            self.add_module(f"mask_fcn{k + 1}", conv)
            fills.append(conv)
            channels = dim
        if scale == "2x":
            for k in (1, 2):
                deconv = ConvTranspose2d(channels, channels, kernel_size=2, stride=2)
                self.add_module(f"deconv{k}", deconv)
                self.add_module(f"deconv{k}_relu", nn.ReLU())
                fills.append(deconv)
        self.predictor = Conv2d(channels, num_classes, kernel_size=1)
        for layer in fills:
            weight_init.c2_msra_fill(layer)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.constant_(self.predictor.bias, 0)


def _forget_missing_quasi_keys(module, incompatible_keys):
    """Load-state-dict post hook: the quasi-multitask branch is a training scaffold (Sec. 3.4), so a checkpoint without
    it (weights kept for inference) loads with no missing-key warning, also where the model is loaded before it is put
    in eval mode (``train_net.py --eval-only``). A training model says, once, that the branch starts afresh."""
    prefix = getattr(module, "_quasi_prefix", None)
    if module.quasi is None or prefix is None:
        return
    missing = incompatible_keys.missing_keys
    kept = [k for k in missing if not k.startswith(prefix)]
    if len(kept) < len(missing) and module.training:
        logger.info("The checkpoint has no quasi-multitask branch (%s*): it is trained from its initialisation", prefix)
    missing[:] = kept


@ROI_MASK_HEAD_REGISTRY.register()
class MaskPlusMaskHead(MaskRCNNConvUpsampleHead):
    """``MaskRCNNConvUpsampleHead`` with MaskPlus's deconvolutional pyramid, boundary refinement, quasi-multitask
    branch and mask scale (``MODEL.MASKPLUS``). Losses: ``loss_mask`` and, with the branch, ``loss_mask_quasi``."""

    @configurable
    def __init__(
        self,
        input_shape: ShapeSpec,
        *,
        num_classes: int,
        conv_dims: List[int],
        conv_norm: str = "",
        deconv_pyramid: bool = False,
        boundary_refinement: str = "none",
        quasi_multitask: str = "none",
        mask_scale: str = "1x",
        quasi_loss_weight: float = 1.0,
        **kwargs,
    ):
        """
        Args:
            input_shape, num_classes, conv_dims, conv_norm, kwargs: as ``MaskRCNNConvUpsampleHead``.
            deconv_pyramid (bool): the deconvolutional pyramid after the convs (Sec. 3.2).
            boundary_refinement (str): "none", "original" or "improved" (Sec. 3.3), on the logits.
            quasi_multitask (str): "none", "0.5x" or "2x" (Sec. 3.4): the training-only branch's scale, relative to
                Mask R-CNN's 28x28 (14x14 or 56x56 with 14x14 RoI features).
            mask_scale (str): "1x", or "0.5x" for a main head without its deconvolution (Table 4, row 2).
            quasi_loss_weight (float): the branch's loss weight, relative to the main mask loss's.
        """
        super().__init__(input_shape, num_classes=num_classes, conv_dims=conv_dims, conv_norm=conv_norm, **kwargs)
        if quasi_multitask not in QUASI_MULTITASK_SCALES:
            raise ValueError(
                f"MODEL.MASKPLUS.QUASI_MULTITASK must be one of {QUASI_MULTITASK_SCALES}, got {quasi_multitask!r}"
            )
        if mask_scale not in MASK_SCALES:
            raise ValueError(f"MODEL.MASKPLUS.MASK_SCALE must be one of {MASK_SCALES}, got {mask_scale!r}")
        if mask_scale == "0.5x" and quasi_multitask == "0.5x":
            raise ValueError(
                "MODEL.MASKPLUS.QUASI_MULTITASK=0.5x trains a 14x14 branch beside a main head that is itself 14x14 "
                "(MASK_SCALE=0.5x): the branch would add nothing. Use QUASI_MULTITASK none or 2x"
            )
        in_channels = conv_dims[-2] if len(conv_dims) > 1 else input_shape.channels
        if mask_scale == "0.5x":
            if conv_dims[-1] != in_channels:
                raise ValueError("MaskPlusMaskHead with mask_scale 0.5x needs the deconv as wide as the last conv")
            self.deconv = None  # removes the module: its weights would be unused (and DDP would refuse them)
            self.deconv_relu = None
        self.pyramid = DeconvPyramid(in_channels) if deconv_pyramid else None
        refinement = build_boundary_refinement(boundary_refinement, num_classes)
        self.refinement = None if isinstance(refinement, nn.Identity) else refinement
        self.quasi = (
            QuasiMultitaskBranch(input_shape.channels, conv_dims[:-1], conv_norm, num_classes, quasi_multitask)
            if quasi_multitask != "none"
            else None
        )
        self.quasi_loss_weight = quasi_loss_weight
        self.register_load_state_dict_post_hook(_forget_missing_quasi_keys)

    @classmethod
    def from_config(cls, cfg, input_shape):
        from .roi_heads import check_maskplus_config

        check_maskplus_config(cfg)
        ret = super().from_config(cfg, input_shape)
        mp = cfg.MODEL.MASKPLUS
        ret.update(
            deconv_pyramid=mp.DECONV_PYRAMID_ON,
            boundary_refinement=mp.BOUNDARY_REFINEMENT,
            quasi_multitask=mp.QUASI_MULTITASK,
            mask_scale=mp.MASK_SCALE,
            quasi_loss_weight=mp.QUASI_LOSS_WEIGHT,
        )
        return ret

    def layers(self, x):
        for conv in self.conv_norm_relus:
            x = conv(x)
        if self.pyramid is not None:
            x = self.pyramid(x)
        if self.deconv is not None:
            x = self.deconv_relu(self.deconv(x))
        x = self.predictor(x)
        return x if self.refinement is None else self.refinement(x)

    def forward(self, x, instances):
        logits = self.layers(x)
        if not self.training:
            mask_rcnn_inference(logits, instances)
            return instances
        losses = {"loss_mask": mask_rcnn_loss(logits, instances, self.vis_period) * self.loss_weight}
        if self.quasi is not None:
            # mask_rcnn_loss crops and resizes the targets to the branch's logits (14x14 or 56x56); its accuracy
            # metrics go under quasi/ so that they do not overwrite the main head's
            with get_event_storage().name_scope("quasi"):
                quasi = mask_rcnn_loss(self.quasi(x), instances)
            losses[QUASI_LOSS] = quasi * self.loss_weight * self.quasi_loss_weight
        return losses

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self._quasi_prefix = prefix + "quasi."
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
