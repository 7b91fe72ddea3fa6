"""DSG's ROI heads (Sec. 3, Fig. 2-3): the MPN half of the mask-supervised RPN, Shape-guided RoIAlign for
the box (and optionally mask) head, and fusion of the MPN's intermediate features F_- into both heads.

The MPN runs on the RoIs that go to the box head (the sampled proposals in training, all proposals at test
time), so it lives here, after detectron2's proposal sampling, rather than in the proposal generator; the
RPN itself is detectron2's. With every ``MODEL.DSG`` switch off these heads are ``StandardROIHeads``.
"""

from typing import Dict, List, Optional, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, cat
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads, select_foreground_proposals
from detectron2.structures import Boxes, Instances
from detectron2.structures.boxes import matched_pairwise_iou
from torchvision.ops import roi_align

from .heads import FeatureFusion, MaskProposalNetwork
from .poolers import SG_MODES, build_guided_pooler, pooler_args

# per-RoI fields that carry the MPN's outputs from the box branch to the mask branch, and the boxes the MPN ran on
MPN_FEATURES, MPN_PROBS, MPN_BOXES = "mpn_features", "mpn_probs", "mpn_boxes"
# per-RoI field of training RoIs: the class of the ground truth the RoI is matched to, whatever the IoU threshold
# that labelled the RoI (a cascade stage labels RoIs under its threshold background, but its mask head is trained
# on every RoI with IoU >= 0.5, Sec. 4.1, and with class-specific masks needs that RoI's class)
MATCHED_CLASSES = "gt_matched_classes"
# MODEL.DSG.MASK_MPN_SOURCE: the mask head's F_- / P at test time from each detection's proposal (the paper) or
# from the MPN run on the detection itself
MASK_MPN_SOURCES = ("proposal", "detection")


def check_dsg_switches(cfg) -> None:
    """Refuse, at build time and with one message, every ``MODEL.DSG`` setting that cannot do what it says.

    - mRPN is the necessity for the other designs (Sec. 4.2): they need its P and F_-.
    - The MPN is trained with mask supervision (Sec. 3.2): without ``MODEL.MASK_ON`` the data loader drops the
      masks, ``loss_mpn`` stays 0 and SgRoIAlign would run on an untrained P.
    - ``MASK_MPN_SOURCE detection`` and ``DETACH_PROBS`` change what the mask head (resp. the gradient through P)
      gets: without a component that uses them they would be dropped silently.
    """
    dsg = cfg.MODEL.DSG
    check_mask_mpn_source(dsg.MASK_MPN_SOURCE)
    if dsg.SG_MODE not in SG_MODES:
        raise ValueError(f"MODEL.DSG.SG_MODE must be one of {SG_MODES}, got {dsg.SG_MODE!r}")
    if dsg.FUSION_KERNEL_SIZE not in (1, 3):
        raise ValueError(f"MODEL.DSG.FUSION_KERNEL_SIZE must be 1 or 3, got {dsg.FUSION_KERNEL_SIZE}")
    needs_mrpn = [k for k in ("FUSE_MASK", "SG_ROI_ALIGN_BOX", "FUSE_BOX", "SG_ROI_ALIGN_MASK") if dsg.get(k)]
    if needs_mrpn and not dsg.MRPN_ON:
        raise ValueError(
            f"MODEL.DSG.{', '.join(needs_mrpn)} need(s) MODEL.DSG.MRPN_ON=True: their mask "
            "probabilities and features come from the mask-supervised RPN"
        )
    if dsg.MRPN_ON and not cfg.MODEL.MASK_ON:
        raise ValueError(
            "MODEL.DSG.MRPN_ON needs MODEL.MASK_ON=True: the MPN is trained on the ground-truth masks, "
            "which the data loader drops without MASK_ON (DSG without masks would use an untrained P); "
            "for a box-only model set every MODEL.DSG switch to False (Faster R-CNN)"
        )
    if dsg.MASK_MPN_SOURCE != "proposal" and not (dsg.FUSE_MASK or dsg.SG_ROI_ALIGN_MASK):
        raise ValueError(
            "MODEL.DSG.MASK_MPN_SOURCE=detection changes the F_- / P the mask head gets, but neither "
            "MODEL.DSG.FUSE_MASK nor SG_ROI_ALIGN_MASK is on: set one, or MASK_MPN_SOURCE=proposal"
        )
    if dsg.DETACH_PROBS and not (dsg.SG_ROI_ALIGN_BOX or dsg.SG_ROI_ALIGN_MASK):
        raise ValueError(
            "MODEL.DSG.DETACH_PROBS stops the gradient through P, which only SgRoIAlign uses: set "
            "MODEL.DSG.SG_ROI_ALIGN_BOX (or SG_ROI_ALIGN_MASK), or DETACH_PROBS=False"
        )


def check_mask_mpn_source(value: str) -> None:
    if value not in MASK_MPN_SOURCES:
        raise ValueError(f"MODEL.DSG.MASK_MPN_SOURCE must be one of {MASK_MPN_SOURCES}, got {value!r}")


def mpn_training_rois(proposals: List[Instances], iou_threshold: float) -> List[torch.Tensor]:
    """Per image, a bool mask of the RoIs the MPN is trained on: those matched to a ground truth with
    box IoU >= ``iou_threshold`` (Sec. 4.1); their target is the matched instance's mask, class-agnostic."""
    out = []
    for p in proposals:
        if len(p) == 0 or not p.has("gt_masks"):
            out.append(torch.zeros(len(p), dtype=torch.bool, device=p.proposal_boxes.device))
            continue
        iou = matched_pairwise_iou(p.proposal_boxes, p.gt_boxes)
        out.append(iou >= iou_threshold)
    return out


def reframe_probs(probs: torch.Tensor, src_boxes: torch.Tensor, dst_boxes: torch.Tensor) -> torch.Tensor:
    """P (R, H, W), a probability map over each box of ``src_boxes`` (R, 4), as the same-size map over the box of
    ``dst_boxes``: bilinear samples of P at the centres of dst's H x W grid (0 more than a pixel outside src).

    SgRoIAlign (Eq. 1) reads P at sampling points relative to the RoI it pools, so P must be over that RoI: at test
    time the mask head pools the regressed detection box while P was predicted over its proposal. Identical boxes
    give P back."""
    if probs.shape[0] == 0:
        return probs
    h, w = probs.shape[-2:]
    src, dst = src_boxes.to(probs.dtype), dst_boxes.to(probs.dtype)
    sw = (src[:, 2] - src[:, 0]).clamp(min=1e-6) / w
    sh = (src[:, 3] - src[:, 1]).clamp(min=1e-6) / h
    # dst in the continuous coordinates of P's grid (pixel j spans [j, j + 1]; aligned=True samples at j + 0.5)
    rois = torch.stack(
        [
            torch.arange(len(probs), device=probs.device, dtype=probs.dtype),
            (dst[:, 0] - src[:, 0]) / sw,
            (dst[:, 1] - src[:, 1]) / sh,
            (dst[:, 2] - src[:, 0]) / sw,
            (dst[:, 3] - src[:, 1]) / sh,
        ],
        dim=1,
    )
    return roi_align(probs[:, None], rois, (h, w), spatial_scale=1.0, sampling_ratio=1, aligned=True)[:, 0]


def kept_to_proposal_indices(boxes, scores, kept: List[torch.Tensor]) -> List[torch.Tensor]:
    """Map the kept indices that ``fast_rcnn_inference(boxes, scores, ...)`` returns to indices into each
    image's rows of ``boxes`` / ``scores`` (its proposals).

    detectron2 drops proposals with non-finite boxes or scores before filtering, so its indices count only
    the finite rows; undo that here so that each detection finds the proposal it was regressed from."""
    out = []
    for b, s, k in zip(boxes, scores, kept):
        valid = torch.isfinite(b).all(dim=1) & torch.isfinite(s).all(dim=1)
        out.append(k if bool(valid.all()) else valid.nonzero().squeeze(1)[k])
    return out


def proposal_indices(box_predictor, predictions, proposals, kept: List[torch.Tensor]) -> List[torch.Tensor]:
    """``kept_to_proposal_indices`` for the kept indices of ``box_predictor.inference(predictions, proposals)``."""
    boxes = box_predictor.predict_boxes(predictions, proposals)
    scores = box_predictor.predict_probs(predictions, proposals)
    return kept_to_proposal_indices(boxes, scores, kept)


class MPNMixin:
    """What DSG's ROI heads and Cascade DSG share: the MPN (stage 0, the mask half of the mRPN), its loss,
    P, and stripping the MPN's per-RoI tensors from the outputs. Needs ``mpn_pooler``, ``mpn``,
    ``mpn_iou_threshold``, ``detach_probs`` and ``box_in_features`` on the instance."""

    @classmethod
    def _init_mpn(cls, cfg, input_shape):
        dsg = cfg.MODEL.DSG
        if not dsg.MRPN_ON:
            return {}
        in_features = cfg.MODEL.ROI_HEADS.IN_FEATURES
        in_channels = [input_shape[f].channels for f in in_features][0]
        res = dsg.MPN_POOLER_RESOLUTION
        pooler = ROIPooler(
            output_size=res,
            scales=tuple(1.0 / input_shape[k].stride for k in in_features),
            sampling_ratio=dsg.MPN_POOLER_SAMPLING_RATIO,
            pooler_type=dsg.MPN_POOLER_TYPE,
        )
        mpn = MaskProposalNetwork(cfg, ShapeSpec(channels=in_channels, height=res, width=res))
        return {
            "mpn_pooler": pooler,
            "mpn": mpn,
            "mpn_iou_threshold": dsg.MPN_IOU_THRESHOLD,
            "detach_probs": dsg.DETACH_PROBS,
        }

    def _set_mpn(self, mpn_pooler, mpn, mpn_iou_threshold: float, sg_box: bool, detach_probs: bool) -> None:
        """The state every DSG ROI head keeps about the mRPN (one place for both constructors)."""
        if (mpn is None) != (mpn_pooler is None):
            raise ValueError(f"{type(self).__name__}: the MPN needs its pooler and vice versa")
        self.mpn_pooler = mpn_pooler
        self.mpn = mpn
        self.mpn_iou_threshold = mpn_iou_threshold
        self.sg_box = sg_box
        self.detach_probs = detach_probs

    def run_mpn(self, features: Dict[str, torch.Tensor], boxes: List[Boxes]) -> Tuple[torch.Tensor, torch.Tensor]:
        """MPN logits (R, 1, 2S, 2S) and intermediate features F_- (R, D, S, S) for the given RoIs."""
        x = self.mpn_pooler([features[f] for f in self.box_in_features], boxes)
        return self.mpn.layers_with_features(x)

    def mask_loss_on_matched(self, head, logits: torch.Tensor, rois: List[Instances]) -> torch.Tensor:
        """``head``'s binary mask loss on the RoIs with IoU >= 0.5 to their matched ground truth (Sec. 4.1).

        A class-specific head is trained on the channel of the matched ground truth's class
        (``MATCHED_CLASSES`` when the RoIs carry it, else their ``gt_classes``)."""
        keep = mpn_training_rois(rois, self.mpn_iou_threshold)
        kept = []
        for p, k in zip(rois, keep):
            p = p[k]
            if p.has(MATCHED_CLASSES):
                p.gt_classes = p.get(MATCHED_CLASSES)
            kept.append(p)
        return head.losses(logits[cat(keep)], kept)

    def probs_of(self, logits: torch.Tensor, classes: Optional[torch.Tensor] = None) -> torch.Tensor:
        """P: a mask head's probability map per RoI (R, Hp, Wp), detached if DETACH_PROBS.

        A class-agnostic head (one channel: the MPN, Sec. 3.2) gives its only map; a class-specific head the map
        of each RoI's class ``classes`` (R,)."""
        if logits.shape[1] == 1:
            logits = logits[:, 0]
        else:
            if classes is None or classes.shape != logits.shape[:1]:
                raise ValueError("probs_of: a class-specific mask head needs one class per RoI to pick its mask")
            logits = logits[torch.arange(len(logits), device=logits.device), classes]
        probs = logits.sigmoid()
        return probs.detach() if self.detach_probs else probs

    @staticmethod
    def pool_guided(pooler, x, boxes, probs, guided: bool, fusion, mpn_features):
        """RoI features from ``pooler``, guided by P when ``guided`` (SgRoIAlign, Sec. 3.4), plus the fused
        F_- when there is a ``fusion`` (Sec. 3.3)."""
        feats = pooler(x, boxes, probs) if guided else pooler(x, boxes)
        if fusion is not None:
            feats = feats + fusion(mpn_features)
        return feats

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        if cfg.MODEL.DSG.MRPN_ON and cfg.MODEL.DSG.SG_ROI_ALIGN_BOX:
            args = pooler_args(cfg, input_shape, cfg.MODEL.ROI_BOX_HEAD)
            ret["box_pooler"] = build_guided_pooler(cfg.MODEL.DSG.SG_MODE, **args)
        return ret

    def forward_with_given_boxes(self, features: Dict[str, torch.Tensor], instances: List[Instances]):
        instances = super().forward_with_given_boxes(features, instances)
        for inst in instances:  # the MPN's per-RoI tensors are internal, not outputs
            for name in (MPN_FEATURES, MPN_PROBS, MPN_BOXES):
                if inst.has(name):
                    inst.remove(name)
        return instances


@ROI_HEADS_REGISTRY.register()
class DSGROIHeads(MPNMixin, StandardROIHeads):
    """Mask R-CNN's ROI heads with DSG's mRPN (MPN), SgRoIAlign (SgRA_B / SgRA_M) and feature fusion (F_B / F_M).

    Training adds ``loss_mpn``. Inference carries each detection's proposal index through box regression
    and NMS, so the mask branch gets the F_- (and P) of the proposal each detection came from (Sec. 3.3)."""

    @configurable
    def __init__(
        self,
        *,
        mpn_pooler: Optional[ROIPooler] = None,
        mpn: Optional[MaskProposalNetwork] = None,
        mpn_iou_threshold: float = 0.5,
        sg_box: bool = False,
        sg_mask: bool = False,
        box_fusion: Optional[FeatureFusion] = None,
        mask_fusion: Optional[FeatureFusion] = None,
        detach_probs: bool = False,
        mask_mpn_source: str = "proposal",
        **kwargs,
    ):
        """
        Args:
            mpn_pooler (ROIPooler): RoIAlign of the MPN's RoI features (``MODEL.DSG.MPN_POOLER_*``); None without
                the mRPN (Table 1 row 0: these heads are then ``StandardROIHeads``).
            mpn (MaskProposalNetwork): the mask half of the mRPN (Sec. 3.2), class-agnostic; None without the mRPN.
            mpn_iou_threshold (float): the MPN is trained on the RoIs with at least this IoU (Sec. 4.1: 0.5).
            sg_box (bool): pool the box head's features with SgRoIAlign guided by P (SgRA_B, Sec. 3.4); the box
                pooler is then a guided one (``build_guided_pooler``).
            sg_mask (bool): the same for the mask head (SgRA_M).
            box_fusion, mask_fusion (FeatureFusion): F_- -> conv, added to the box (F_B) / mask (F_M) head's RoI
                features (Sec. 3.3); None to leave that head unfused.
            detach_probs (bool): stop the gradient of the box and mask losses into the MPN through P.
            mask_mpn_source (str): where the mask head's F_- / P come from at test time: "proposal" (Sec. 3.3)
                or "detection" (the MPN runs again on the final boxes).
            kwargs: the arguments of ``StandardROIHeads``.
        """
        super().__init__(**kwargs)
        check_mask_mpn_source(mask_mpn_source)
        if mpn is None and (sg_box or sg_mask or box_fusion is not None or mask_fusion is not None):
            raise ValueError("DSGROIHeads: SgRoIAlign and feature fusion need the MPN (MODEL.DSG.MRPN_ON)")
        if (sg_mask or mask_fusion is not None) and not self.mask_on:
            raise ValueError("DSGROIHeads: SG_ROI_ALIGN_MASK / FUSE_MASK need MODEL.MASK_ON=True")
        self._set_mpn(mpn_pooler, mpn, mpn_iou_threshold, sg_box, detach_probs)
        self.sg_mask = sg_mask
        self.box_fusion = box_fusion
        self.mask_fusion = mask_fusion
        self.mask_mpn_source = mask_mpn_source

    @classmethod
    def from_config(cls, cfg, input_shape):
        dsg = cfg.MODEL.DSG
        check_dsg_switches(cfg)
        ret = super().from_config(cfg, input_shape)
        ret.update(cls._init_mpn(cfg, input_shape))
        ret["mask_mpn_source"] = dsg.MASK_MPN_SOURCE
        if not dsg.MRPN_ON:
            return ret
        mpn_dim = ret["mpn"].conv_norm_relus[-1].out_channels
        k = dsg.FUSION_KERNEL_SIZE
        box_in = [input_shape[f].channels for f in cfg.MODEL.ROI_HEADS.IN_FEATURES][0]
        ret["sg_box"] = dsg.SG_ROI_ALIGN_BOX
        ret["sg_mask"] = dsg.SG_ROI_ALIGN_MASK
        if dsg.FUSE_BOX:
            ret["box_fusion"] = FeatureFusion(mpn_dim, box_in, cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION, k)
        if dsg.FUSE_MASK:
            ret["mask_fusion"] = FeatureFusion(mpn_dim, box_in, cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION, k)
        return ret

    @classmethod
    def _init_mask_head(cls, cfg, input_shape):
        ret = super()._init_mask_head(cfg, input_shape)
        if ret and cfg.MODEL.DSG.MRPN_ON and cfg.MODEL.DSG.SG_ROI_ALIGN_MASK:
            args = pooler_args(cfg, input_shape, cfg.MODEL.ROI_MASK_HEAD)
            ret["mask_pooler"] = build_guided_pooler(cfg.MODEL.DSG.SG_MODE, **args)
        return ret

    # ---------------------------------------------------------------------------------------------
    def _forward_box(self, features: Dict[str, torch.Tensor], proposals: List[Instances]):
        if self.mpn is None:
            return super()._forward_box(features, proposals)
        boxes = [x.proposal_boxes for x in proposals]
        logits, mpn_features = self.run_mpn(features, boxes)
        probs = self.probs_of(logits)
        x = [features[f] for f in self.box_in_features]
        box_features = self.pool_guided(self.box_pooler, x, boxes, probs, self.sg_box, self.box_fusion, mpn_features)
        box_features = self.box_head(box_features)
        predictions = self.box_predictor(box_features)
        del box_features
        sizes = [len(p) for p in proposals]
        if self.training:
            losses = {"loss_mpn": self.mask_loss_on_matched(self.mpn, logits, proposals)}
            losses.update(self.box_predictor.losses(predictions, proposals))
            if self.train_on_pred_boxes:
                with torch.no_grad():
                    pred_boxes = self.box_predictor.predict_boxes_for_gt_classes(predictions, proposals)
                    for p, b in zip(proposals, pred_boxes):
                        p.proposal_boxes = Boxes(b)
            # the mask branch is trained on (the positive subset of) the same RoIs: hand it their F_- and P
            for p, f, pr, b in zip(proposals, mpn_features.split(sizes), probs.split(sizes), boxes):
                p.set(MPN_FEATURES, f)
                p.set(MPN_PROBS, pr)
                p.set(MPN_BOXES, b.tensor)
            return losses
        pred_instances, kept = self.box_predictor.inference(predictions, proposals)
        if self.mask_mpn_source == "detection":
            return pred_instances  # the mask branch runs the MPN on the detections (_mpn_outputs_for)
        kept = proposal_indices(self.box_predictor, predictions, proposals, kept)
        for inst, k, f, pr, b in zip(pred_instances, kept, mpn_features.split(sizes), probs.split(sizes), boxes):
            inst.set(MPN_FEATURES, f[k])  # F_- and P of the proposal each detection was regressed from
            inst.set(MPN_PROBS, pr[k])
            inst.set(MPN_BOXES, b.tensor[k])
        return pred_instances

    def _mpn_outputs_for(self, features, instances: List[Instances]):
        """F_- and P per RoI of ``instances``: carried from the box branch, or (MASK_MPN_SOURCE "detection", or
        boxes given from outside, e.g. forward_with_given_boxes) computed by the MPN on the boxes themselves.

        A carried F_- stays as it is (Sec. 3.3 accepts its misalignment with the regressed box); a carried P is
        re-expressed over each RoI's own box (``reframe_probs``), since SgRoIAlign reads P relative to the RoI."""
        boxes = [x.proposal_boxes if self.training else x.pred_boxes for x in instances]
        if all(i.has(MPN_FEATURES) for i in instances):
            probs = cat([i.get(MPN_PROBS) for i in instances])
            if self.sg_mask:
                src, dst = cat([i.get(MPN_BOXES) for i in instances]), cat([b.tensor for b in boxes])
                if not torch.equal(src, dst):
                    probs = reframe_probs(probs, src, dst)
            return cat([i.get(MPN_FEATURES) for i in instances]), probs
        logits, feats = self.run_mpn(features, boxes)
        return feats, self.probs_of(logits)

    def _forward_mask(self, features: Dict[str, torch.Tensor], instances: List[Instances]):
        if not self.mask_on:
            return {} if self.training else instances
        if not (self.sg_mask or self.mask_fusion is not None):
            out = super()._forward_mask(features, instances)
        else:
            if self.training:
                instances, _ = select_foreground_proposals(instances, self.num_classes)
            boxes = [x.proposal_boxes if self.training else x.pred_boxes for x in instances]
            mpn_features, probs = self._mpn_outputs_for(features, instances)
            x = [features[f] for f in self.mask_in_features]
            feats = self.pool_guided(self.mask_pooler, x, boxes, probs, self.sg_mask, self.mask_fusion, mpn_features)
            out = self.mask_head(feats, instances)  # on F_m (+ w F_-)
        return out
