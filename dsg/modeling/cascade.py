"""Cascade DSG (Sec. 3.5, Eq. 3, Fig. 4): Cascade Mask R-CNN with a mask head per stage, where stage t's
mask prediction guides the next box head (SgRoIAlign) and its intermediate features feed the next heads.

With stage 0 the mRPN (B^0 = the RoIs, M^0 and F_-^0 from the MPN), for t = 1..T (box head t is detectron2's
stage t-1):

    F_b^t = f_s(B^{t-1}, F, M^{t-1}),            B^t = b^t(F_b^t (+) w_b^t F_-^{t-1})
    F_m^t = f(B^t, F),                (M^t, F_-^t) = m^t(F_m^t (+) w_m^t F_-^{t-1})

Box t's RoIs are B^{t-1} (one-to-one with the regressed boxes B^t), so mask head t runs on B^t: in training
these are exactly the RoIs box head t+1 is trained on ("the box head at stage t uses the same sampled RoIs as
the mask head at stage t-1", Sec. 4.1). Every mask head is trained on its RoIs with IoU >= 0.5. At test time
the intermediate mask heads run on all RoIs; the last one on the final detections, with the F_- of the RoI
each detection was regressed from.

M^{t-1}, the mask that guides box head t, is the mask head's only map when it is class-agnostic; with
class-specific mask heads it is the map of the RoI's class: the class of its matched ground truth in training
(the same class its mask loss trains), the class box head t-1 predicts for it at test time. A cascade stage
labels RoIs below its IoU threshold background, but every mask head is trained on the RoIs with IoU >= 0.5,
on the channel of their matched ground truth's class.
"""

from typing import Dict, List, Optional

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, CascadeROIHeads
from detectron2.modeling.roi_heads.cascade_rcnn import _ScaleGradient
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference
from detectron2.structures import Boxes, Instances, pairwise_iou
from detectron2.utils.events import get_event_storage
from torch import nn

from .heads import FeatureFusion, FeatureMaskRCNNHead
from .roi_heads import (
    MATCHED_CLASSES,
    MPN_FEATURES,
    MPN_PROBS,
    MPNMixin,
    check_dsg_switches,
    kept_to_proposal_indices,
)


@ROI_HEADS_REGISTRY.register()
class CascadeDSGROIHeads(MPNMixin, CascadeROIHeads):
    """``CascadeROIHeads`` with the mRPN as stage 0, a ``FeatureMaskRCNNHead`` per stage, SgRoIAlign for every
    box head (guided by the previous stage's mask) and F_- fusion into every box and mask head (Eq. 3).
    Losses: ``loss_mpn``, detectron2's per-stage box losses, ``loss_mask_stage{t}``."""

    @configurable
    def __init__(
        self,
        *,
        mpn_pooler,
        mpn,
        stage_mask_heads: List[FeatureMaskRCNNHead],
        mpn_iou_threshold: float = 0.5,
        sg_box: bool = True,
        box_fusions: Optional[List[FeatureFusion]] = None,
        mask_fusions: Optional[List[FeatureFusion]] = None,
        detach_probs: bool = False,
        **kwargs,
    ):
        """
        Args:
            mpn_pooler (ROIPooler), mpn (MaskProposalNetwork): stage 0, the mRPN's MPN and its RoIAlign (Eq. 3:
                B^0, M^0, F_-^0).
            stage_mask_heads (list[FeatureMaskRCNNHead]): mask heads m^1 .. m^{T-1}; m^T is ``mask_head``.
            mpn_iou_threshold (float): the MPN and every mask head are trained on the RoIs with at least this IoU
                (Sec. 4.1: 0.5).
            sg_box (bool): every box head pools with SgRoIAlign guided by the previous stage's mask (f_s of Eq. 3).
            box_fusions, mask_fusions (list[FeatureFusion]): w_b^t and w_m^t of Eq. 3 (one per stage), or None.
            detach_probs (bool): stop the gradient of the box losses into the mask heads through M^{t-1}.
            kwargs: the arguments of ``CascadeROIHeads``.
        """
        super().__init__(**kwargs)
        if not self.mask_on:
            raise ValueError("CascadeDSGROIHeads needs MODEL.MASK_ON=True: every stage has a mask head")
        if len(stage_mask_heads) != self.num_cascade_stages - 1:
            raise ValueError("CascadeDSGROIHeads: one mask head per stage (the last is mask_head)")
        self._set_mpn(mpn_pooler, mpn, mpn_iou_threshold, sg_box, detach_probs)
        self.stage_mask_heads = nn.ModuleList(stage_mask_heads)
        self.box_fusions = nn.ModuleList(box_fusions) if box_fusions else None
        self.mask_fusions = nn.ModuleList(mask_fusions) if mask_fusions else None

    @classmethod
    def from_config(cls, cfg, input_shape):
        dsg = cfg.MODEL.DSG
        check_dsg_switches(cfg)
        if not dsg.MRPN_ON:
            raise ValueError(
                "Cascade DSG needs MODEL.DSG.MRPN_ON=True (stage 0 is the mRPN); without it, "
                "use CascadeROIHeads (Cascade Mask R-CNN)"
            )
        if dsg.SG_ROI_ALIGN_MASK:
            raise ValueError(
                "Cascade DSG pools mask features with plain RoIAlign (Eq. 3); set MODEL.DSG.SG_ROI_ALIGN_MASK=False"
            )
        if cfg.MODEL.ROI_MASK_HEAD.NAME not in ("MaskRCNNConvUpsampleHead", "FeatureMaskRCNNHead"):
            raise ValueError(
                f"Cascade DSG's mask heads are FeatureMaskRCNNHead (they hand F_- to the next stage, "
                f"Eq. 3); MODEL.ROI_MASK_HEAD.NAME={cfg.MODEL.ROI_MASK_HEAD.NAME!r} would be ignored"
            )
        if dsg.MASK_MPN_SOURCE != "proposal":
            raise ValueError(
                "Cascade DSG's last mask head takes F_-^{T-1} of the RoI each detection was "
                "regressed from (Eq. 3); set MODEL.DSG.MASK_MPN_SOURCE=proposal"
            )
        ret = super().from_config(cfg, input_shape)
        ret.update(cls._init_mpn(cfg, input_shape))
        num_stages = len(cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS)
        in_channels = [input_shape[f].channels for f in cfg.MODEL.ROI_HEADS.IN_FEATURES][0]
        res = cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION
        shape = ShapeSpec(channels=in_channels, height=res, width=res)
        ret["mask_head"] = FeatureMaskRCNNHead(cfg, shape)
        ret["stage_mask_heads"] = [FeatureMaskRCNNHead(cfg, shape) for _ in range(num_stages - 1)]
        # F_-^{t-1} comes from the MPN (t = 1) or from mask head t-1
        dims = [ret["mpn"].conv_norm_relus[-1].out_channels] + [
            h.conv_norm_relus[-1].out_channels for h in ret["stage_mask_heads"]
        ]
        k = dsg.FUSION_KERNEL_SIZE
        ret["sg_box"] = dsg.SG_ROI_ALIGN_BOX
        if dsg.FUSE_BOX:
            box_res = cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION
            ret["box_fusions"] = [FeatureFusion(d, in_channels, box_res, k) for d in dims]
        if dsg.FUSE_MASK:
            ret["mask_fusions"] = [FeatureFusion(d, in_channels, res, k) for d in dims]
        return ret

    # ---------------------------------------------------------------------------------------------
    def _run_stage(self, features, proposals, stage, probs=None, prev_features=None):
        """Box head ``stage`` on its RoIs, guided by the previous mask prediction P and fused with F_-."""
        boxes = [x.proposal_boxes for x in proposals]
        fusion = self.box_fusions[stage] if self.box_fusions is not None else None
        box_features = self.pool_guided(self.box_pooler, features, boxes, probs, self.sg_box, fusion, prev_features)
        if self.training:
            box_features = _ScaleGradient.apply(box_features, 1.0 / self.num_cascade_stages)
        box_features = self.box_head[stage](box_features)
        return self.box_predictor[stage](box_features)

    def _run_mask_head(self, features, head, stage, boxes: List[Boxes], prev_features):
        """Mask head ``stage`` on RoIs ``boxes``: logits and its F_- (Eq. 3, second line)."""
        x = [features[f] for f in self.mask_in_features]
        fusion = self.mask_fusions[stage] if self.mask_fusions is not None else None
        feats = self.pool_guided(self.mask_pooler, x, boxes, None, False, fusion, prev_features)
        return head.layers_with_features(feats)

    def _next_rois(self, boxes: List[torch.Tensor], image_sizes):
        """The regressed boxes as the next RoIs, and per image the indices of the ones kept (training drops
        empty boxes, as detectron2's cascade does) so that per-RoI tensors follow them."""
        rois, kept = [], []
        for b, size in zip(boxes, image_sizes):
            b = Boxes(b.detach())
            b.clip(size)
            keep = b.nonempty().nonzero().squeeze(1) if self.training else torch.arange(len(b), device=b.device)
            inst = Instances(size)
            inst.proposal_boxes = b[keep]
            rois.append(inst)
            kept.append(keep)
        return rois, kept

    @torch.no_grad()
    def _match_and_label_boxes(self, proposals, stage, targets):
        proposals = super()._match_and_label_boxes(proposals, stage, targets)
        # the mask heads are trained on these RoIs too (those with IoU >= 0.5, which may be below this stage's
        # threshold): they need the matched ground truth's mask and class
        for p, t in zip(proposals, targets):
            if len(t) > 0 and t.has("gt_masks") and len(p) > 0:
                idx = pairwise_iou(t.gt_boxes, p.proposal_boxes).argmax(dim=0)
                p.gt_masks = t.gt_masks[idx]
                p.set(MATCHED_CLASSES, t.gt_classes[idx])
        return proposals

    def _guide_classes(self, predictor, predictions, proposals, kept, rois) -> torch.Tensor:
        """The class whose mask guides the next box head, per RoI of ``rois`` (class-specific mask heads): in
        training the class of the ground truth the RoI is matched to, at test time (and for the RoIs of images
        without ground truth) the class box head t predicts for it (its best foreground score)."""
        with torch.no_grad():
            probs = predictor.predict_probs(predictions, proposals)
        out = []
        for s, k, r in zip(probs, kept, rois):
            if self.training and r.has(MATCHED_CLASSES):
                out.append(r.get(MATCHED_CLASSES))
            else:
                out.append(s[k, :-1].argmax(dim=1))
        return torch.cat(out)

    def _forward_box(self, features: Dict[str, torch.Tensor], proposals: List[Instances], targets=None):
        box_features = [features[f] for f in self.box_in_features]
        image_sizes = [x.image_size for x in proposals]
        logits, prev_feat = self.run_mpn(features, [p.proposal_boxes for p in proposals])  # stage 0: mRPN
        prev_probs = self.probs_of(logits)
        losses = {"loss_mpn": self.mask_loss_on_matched(self.mpn, logits, proposals)} if self.training else {}
        head_outputs = []
        for k in range(self.num_cascade_stages):
            predictions = self._run_stage(box_features, proposals, k, prev_probs, prev_feat)
            head_outputs.append((self.box_predictor[k], predictions, proposals, prev_feat, prev_probs))
            last = k == self.num_cascade_stages - 1
            if last and not self.training:
                break
            rois, kept = self._next_rois(self.box_predictor[k].predict_boxes(predictions, proposals), image_sizes)
            sizes = [len(p) for p in proposals]
            prev_feat = torch.cat([f[i] for f, i in zip(prev_feat.split(sizes), kept)])
            if self.training:
                rois = self._match_and_label_boxes(rois, min(k + 1, self.num_cascade_stages - 1), targets)
            head = self.mask_head if last else self.stage_mask_heads[k]
            mask_logits, feat = self._run_mask_head(features, head, k, [r.proposal_boxes for r in rois], prev_feat)
            if self.training:
                losses[f"loss_mask_stage{k}"] = self.mask_loss_on_matched(head, mask_logits, rois)
            if last:  # training: the last mask head guides no box head
                break
            classes = None
            if mask_logits.shape[1] > 1:  # class-specific: the mask of each RoI's class guides (Eq. 3, M^t)
                classes = self._guide_classes(self.box_predictor[k], predictions, proposals, kept, rois)
            proposals, prev_feat, prev_probs = rois, feat, self.probs_of(mask_logits, classes)

        if self.training:
            storage = get_event_storage()
            for stage, (predictor, predictions, props, _, _) in enumerate(head_outputs):
                with storage.name_scope("stage{}".format(stage)):
                    stage_losses = predictor.losses(predictions, props)
                losses.update({k + "_stage{}".format(stage): v for k, v in stage_losses.items()})
            return losses

        scores_per_stage = [h[0].predict_probs(h[1], h[2]) for h in head_outputs]
        scores = [sum(list(s)) * (1.0 / self.num_cascade_stages) for s in zip(*scores_per_stage)]
        predictor, predictions, props, last_feat, last_probs = head_outputs[-1]
        boxes = predictor.predict_boxes(predictions, props)
        pred_instances, kept = fast_rcnn_inference(
            boxes,
            scores,
            image_sizes,
            predictor.test_score_thresh,
            predictor.test_nms_thresh,
            predictor.test_topk_per_image,
        )
        sizes = [len(p) for p in props]
        kept = kept_to_proposal_indices(boxes, scores, kept)
        for inst, k, f, pr in zip(pred_instances, kept, last_feat.split(sizes), last_probs.split(sizes)):
            inst.set(MPN_FEATURES, f[k])  # F_-^{T-1} of the RoI each detection was regressed from
            inst.set(MPN_PROBS, pr[k])
        return pred_instances

    def _forward_mask(self, features: Dict[str, torch.Tensor], instances: List[Instances]):
        if self.training:
            return {}  # every stage's mask head was trained in _forward_box, on its own RoIs
        if all(i.has(MPN_FEATURES) for i in instances):
            prev = torch.cat([i.get(MPN_FEATURES) for i in instances])
        else:  # boxes given from outside: no RoI they were regressed from; use the MPN on the boxes
            prev = self.run_mpn(features, [i.pred_boxes for i in instances])[1]
            if len(self.stage_mask_heads):
                raise ValueError(
                    "CascadeDSGROIHeads.forward_with_given_boxes needs the instances of its own "
                    "box branch (they carry each detection's stage features)"
                )
        stage = self.num_cascade_stages - 1
        logits, _ = self._run_mask_head(features, self.mask_head, stage, [i.pred_boxes for i in instances], prev)
        return self.mask_head.inference(logits, instances)
