"""MaskPlus's ROI heads: contextual fusion (Sec. 3.1) and biased training (Sec. 3.5) around detectron2's mask branch.

``MaskPlusROIHeads`` is ``StandardROIHeads`` (Mask R-CNN) and ``MaskPlusCascadeROIHeads`` is ``CascadeROIHeads``
(MaskPlus+, Sec. 4.9: "a naive cascade version of Mask R-CNN"), each with ``MaskPlusMixin``'s mask branch:

* contextual fusion: ONE full-image box per image (the image's own size, not the padded batch's) is RoIAligned from
  ``CONTEXT_IN_FEATURE`` with the mask RoIAlign's output size, sampling ratio and alignment ("the newly created
  RoIAlign layer and the old one have the same configuration", Sec. 3.1), run through ``ContextualFusion``'s convs
  and added to every mask RoI feature of that image, before the mask head;
* biased training: every mask loss (``loss_mask*``) is multiplied by alpha = ``BIASED_ALPHA`` while the trainer's
  iteration (detectron2's ``EventStorage.iter``, so ``--resume`` continues the schedule) is before the switch
  point, by 1 after it. alpha is logged as ``maskplus/alpha``.

The mask head's techniques (pyramid, refinement, quasi-multitask) are ``MaskPlusMaskHead``'s.
"""

from typing import Dict, List

import torch
from detectron2.config import configurable
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads import (
    ROI_HEADS_REGISTRY,
    ROI_MASK_HEAD_REGISTRY,
    CascadeROIHeads,
    StandardROIHeads,
    select_foreground_proposals,
)
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import get_event_storage

from ..layers import BOUNDARY_REFINEMENTS, ContextualFusion
from .mask_head import MASK_SCALES, QUASI_MULTITASK_SCALES, MaskPlusMaskHead


def switch_iteration(until: float, max_iter: int) -> int:
    """``MODEL.MASKPLUS.BIASED_UNTIL``, a fraction of ``SOLVER.MAX_ITER``, as the first iteration with alpha = 1."""
    if not 0.0 <= until <= 1.0:
        raise ValueError(
            f"MODEL.MASKPLUS.BIASED_UNTIL must be a fraction of SOLVER.MAX_ITER in [0, 1] (0.5: the paper's first "
            f"half), got {until}"
        )
    return int(until * max_iter)  # floor: with an odd MAX_ITER the biased part is the shorter one


def biased_alpha(iteration: int, alpha: float, until_iter: int) -> float:
    """Sec. 3.5: the weight of the mask loss at ``iteration``, ``alpha`` before ``until_iter`` and 1 from it on."""
    return float(alpha) if iteration < until_iter else 1.0


def check_maskplus_config(cfg) -> None:
    """Refuse, at build time and with one message, every ``MODEL.MASKPLUS`` setting that cannot do what it says."""
    mp = cfg.MODEL.MASKPLUS
    if mp.BOUNDARY_REFINEMENT not in BOUNDARY_REFINEMENTS:
        raise ValueError(
            f"MODEL.MASKPLUS.BOUNDARY_REFINEMENT must be one of {BOUNDARY_REFINEMENTS}, got {mp.BOUNDARY_REFINEMENT!r}"
        )
    if mp.QUASI_MULTITASK not in QUASI_MULTITASK_SCALES:
        raise ValueError(
            f"MODEL.MASKPLUS.QUASI_MULTITASK must be one of {QUASI_MULTITASK_SCALES}, got {mp.QUASI_MULTITASK!r}"
        )
    if mp.MASK_SCALE not in MASK_SCALES:
        raise ValueError(f"MODEL.MASKPLUS.MASK_SCALE must be one of {MASK_SCALES}, got {mp.MASK_SCALE!r}")
    if not mp.BIASED_ALPHA > 0:
        raise ValueError(f"MODEL.MASKPLUS.BIASED_ALPHA must be > 0, got {mp.BIASED_ALPHA}")
    switch_iteration(mp.BIASED_UNTIL, cfg.SOLVER.MAX_ITER)
    head_on = {
        "DECONV_PYRAMID_ON": mp.DECONV_PYRAMID_ON,
        "BOUNDARY_REFINEMENT": mp.BOUNDARY_REFINEMENT != "none",
        "QUASI_MULTITASK": mp.QUASI_MULTITASK != "none",
        "MASK_SCALE": mp.MASK_SCALE != "1x",
    }
    heads_on = {"CONTEXT_FUSION_ON": mp.CONTEXT_FUSION_ON, "BIASED_ALPHA": mp.BIASED_ALPHA != 1.0}
    on = [k for k, v in {**heads_on, **head_on}.items() if v]
    if on and not cfg.MODEL.MASK_ON:
        raise ValueError(
            f"MODEL.MASKPLUS.{', '.join(on)} act(s) on the mask branch, which MODEL.MASK_ON=False removes: set "
            "MODEL.MASK_ON=True, or switch them off (MaskPlus without masks is Faster R-CNN)"
        )
    head_cls = ROI_MASK_HEAD_REGISTRY.get(cfg.MODEL.ROI_MASK_HEAD.NAME)
    if any(head_on.values()) and not issubclass(head_cls, MaskPlusMaskHead):
        raise ValueError(
            f"MODEL.MASKPLUS.{', '.join(k for k, v in head_on.items() if v)} need(s) "
            f"MODEL.ROI_MASK_HEAD.NAME=MaskPlusMaskHead; {cfg.MODEL.ROI_MASK_HEAD.NAME} would ignore them"
        )
    heads_cls = ROI_HEADS_REGISTRY.get(cfg.MODEL.ROI_HEADS.NAME)
    if any(heads_on.values()) and not issubclass(heads_cls, MaskPlusMixin):
        raise ValueError(
            f"MODEL.MASKPLUS.{', '.join(k for k, v in heads_on.items() if v)} need(s) ROI heads that read them "
            f"(MODEL.ROI_HEADS.NAME=MaskPlusROIHeads or MaskPlusCascadeROIHeads); {cfg.MODEL.ROI_HEADS.NAME} would "
            "ignore them"
        )
    if mp.CONTEXT_FUSION_ON and not cfg.MODEL.ROI_MASK_HEAD.POOLER_TYPE:
        raise ValueError("MODEL.MASKPLUS.CONTEXT_FUSION_ON adds to the pooled mask features: set a POOLER_TYPE")


def _maskplus_kwargs(kwargs):
    """Pop ``MaskPlusMixin._set_maskplus``'s arguments (defaults: contextual fusion and biased training off)."""
    defaults = {"context_pooler": None, "context_fusion": None, "context_feature": "p2", "biased_alpha": 1.0}
    return [kwargs.pop(k, v) for k, v in {**defaults, "biased_until": 0}.items()]


class MaskPlusMixin:
    """The mask branch of MaskPlus's ROI heads: contextual fusion before the mask head, alpha on its losses.
    Mixed in before a ``StandardROIHeads`` subclass (it overrides ``_forward_mask``)."""

    @configurable
    def __init__(self, **kwargs):
        """
        Args:
            context_pooler (ROIPooler or None): the full-image RoIAlign of contextual fusion (None: off).
            context_fusion (ContextualFusion or None): its conv stack.
            context_feature (str): the feature map it pools (``CONTEXT_IN_FEATURE``).
            biased_alpha (float), biased_until (int): alpha of Sec. 3.5 and the iteration it becomes 1.
            kwargs: the arguments of the ROI heads it is mixed into.
        """
        maskplus = _maskplus_kwargs(kwargs)
        super().__init__(**kwargs)
        self._set_maskplus(*maskplus)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret.update(cls._init_maskplus(cfg, input_shape))
        return ret

    def _set_maskplus(self, context_pooler, context_fusion, context_feature, alpha, until_iter):
        self.context_pooler = context_pooler
        self.context_fusion = context_fusion
        self.context_feature = context_feature
        self.biased_alpha = float(alpha)
        self.biased_until = int(until_iter)

    @classmethod
    def _init_maskplus(cls, cfg, input_shape) -> dict:
        check_maskplus_config(cfg)
        mp = cfg.MODEL.MASKPLUS
        ret = {
            "context_pooler": None,
            "context_fusion": None,
            "context_feature": mp.CONTEXT_IN_FEATURE,
            "biased_alpha": mp.BIASED_ALPHA,
            "biased_until": switch_iteration(mp.BIASED_UNTIL, cfg.SOLVER.MAX_ITER),
        }
        if mp.CONTEXT_FUSION_ON:
            name = mp.CONTEXT_IN_FEATURE
            if name not in input_shape:
                raise ValueError(
                    f"MODEL.MASKPLUS.CONTEXT_IN_FEATURE={name!r} is not a backbone output ({sorted(input_shape)})"
                )
            mask_channels = {input_shape[f].channels for f in cfg.MODEL.ROI_HEADS.IN_FEATURES}
            if mask_channels != {input_shape[name].channels}:
                raise ValueError(f"contextual fusion: {name} and the mask features have different channel counts")
            head = cfg.MODEL.ROI_MASK_HEAD
            ret["context_pooler"] = ROIPooler(
                output_size=head.POOLER_RESOLUTION,
                scales=(1.0 / input_shape[name].stride,),
                sampling_ratio=head.POOLER_SAMPLING_RATIO,
                pooler_type=head.POOLER_TYPE,
            )
            ret["context_fusion"] = ContextualFusion(input_shape[name].channels, mp.CONTEXT_CONV_DIMS)
        return ret

    def mask_loss_weight(self, iteration: int) -> float:
        """alpha of Sec. 3.5 at a training iteration."""
        return biased_alpha(iteration, self.biased_alpha, self.biased_until)

    def context_features(self, features: Dict[str, torch.Tensor], instances: List[Instances]) -> torch.Tensor:
        """(N, C, S, S): the RoIAligned full-image box (0, 0, W, H) of each image, W x H its own size."""
        feat = features[self.context_feature]
        boxes = [
            Boxes(torch.tensor([[0.0, 0.0, float(x.image_size[1]), float(x.image_size[0])]], device=feat.device))
            for x in instances
        ]
        return self.context_pooler([feat], boxes)

    def _forward_mask(self, features: Dict[str, torch.Tensor], instances: List[Instances]):
        if self.context_fusion is None or not self.mask_on:
            out = super()._forward_mask(features, instances)
        else:
            if self.training:
                instances, _ = select_foreground_proposals(instances, self.num_classes)
            boxes = [x.proposal_boxes if self.training else x.pred_boxes for x in instances]
            x = self.mask_pooler([features[f] for f in self.mask_in_features], boxes)
            x = self.context_fusion(x, self.context_features(features, instances), [len(b) for b in boxes])
            out = self.mask_head(x, instances)
        if self.training and self.biased_alpha != 1.0:
            storage = get_event_storage()
            alpha = self.mask_loss_weight(storage.iter)
            storage.put_scalar("maskplus/alpha", alpha, smoothing_hint=False)
            out = {k: v * alpha if k.startswith("loss_mask") else v for k, v in out.items()}
        return out


@ROI_HEADS_REGISTRY.register()
class MaskPlusROIHeads(MaskPlusMixin, StandardROIHeads):
    """Mask R-CNN's ``StandardROIHeads`` with MaskPlus's contextual fusion and biased training (``MODEL.MASKPLUS``);
    the other three techniques are in the mask head, ``MaskPlusMaskHead``."""


@ROI_HEADS_REGISTRY.register()
class MaskPlusCascadeROIHeads(MaskPlusMixin, CascadeROIHeads):
    """MaskPlus+ (Sec. 4.9): detectron2's ``CascadeROIHeads`` (Cascade Mask R-CNN) with MaskPlus's mask branch."""
