"""Mask Point R-CNN's ROI heads (Sec. III-D, Fig. 1): Mask R-CNN's heads plus a contour-point keypoint
branch on the same positive RoIs, whose heatmaps are fused into the mask logits (Eq. 1-2); the loss is
L = Lcls + Lbox + Lmask + alpha * Lkeypoint (Eq. 3)."""
from typing import Dict, List

import cv2
import numpy as np
import torch
from detectron2.config import configurable
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads, select_foreground_proposals
from detectron2.modeling.roi_heads.keypoint_head import keypoint_rcnn_inference, keypoint_rcnn_loss
from detectron2.modeling.roi_heads.mask_head import mask_rcnn_inference, mask_rcnn_loss
from detectron2.structures import Instances

from .fusion import ContourFusion
from .targets import contour_keypoints


def contour_polygon_masks(keypoints: torch.Tensor, boxes: torch.Tensor, num_contour: int, side: int):
    """Sec. IV-E: masks made only from the predicted contour points, by filling their polygon.

    Args:
        keypoints: (R, K, 2 or 3) predicted points (x, y[, score]) in image coordinates, the first
            ``num_contour`` of them the contour in order (the centre, if any, after them).
        boxes: (R, 4) the detection boxes the masks are relative to.
        side: resolution of the returned box-relative masks.
    Returns: (R, 1, side, side) float masks in {0, 1}, in the format of ``pred_masks`` before pasting."""
    out = np.zeros((len(boxes), 1, side, side), dtype=np.float32)
    kp = keypoints[:, :num_contour, :2].detach().cpu().numpy().astype(np.float64)
    bx = boxes.detach().cpu().numpy().astype(np.float64)
    shift = 4  # fillPoly works on fixed-point coordinates with 4 fractional bits
    for i in range(len(bx)):
        x0, y0, x1, y1 = bx[i]
        scale = np.array([side / max(x1 - x0, 1e-6), side / max(y1 - y0, 1e-6)])
        # continuous box coordinates -> continuous mask-grid coordinates -> pixel-centre convention
        pts = (kp[i] - np.array([x0, y0])) * scale - 0.5
        poly = np.round(pts * (1 << shift)).astype(np.int32)
        canvas = np.zeros((side, side), dtype=np.uint8)
        cv2.fillPoly(canvas, [poly], 1, lineType=cv2.LINE_8, shift=shift)
        out[i, 0] = canvas
    return torch.as_tensor(out, device=boxes.device)


@ROI_HEADS_REGISTRY.register()
class MaskPointROIHeads(StandardROIHeads):
    """``StandardROIHeads`` whose keypoint head predicts k+1 contour points (targets sampled from the
    ground-truth masks after augmentation) and whose mask logits are fused with the keypoint logits.

    Outputs standard ``Instances``: ``pred_masks`` from the fused mask head (or, with
    ``MASK_FROM_CONTOUR``, from the filled polygon of the predicted contour) and ``pred_keypoints``
    (N, k+1, 3) = the predicted contour points (x, y, score), the centre last."""

    @configurable
    def __init__(self, *, fusion: ContourFusion, num_points: int, with_center: bool = True,
                 center: str = "mass", sampling: str = "uniform", mask_from_contour: bool = False, **kwargs):
        super().__init__(**kwargs)
        if not self.mask_on:
            raise ValueError("MaskPointROIHeads needs MODEL.MASK_ON=True (the contour points are fused into the mask head)")
        if self.mask_pooler is None or self.keypoint_pooler is None:
            raise ValueError("MaskPointROIHeads needs RoI poolers: set ROI_MASK_HEAD.POOLER_TYPE and "
                             "ROI_KEYPOINT_HEAD.POOLER_TYPE (e.g. ROIAlignV2)")
        self.fusion = fusion
        self.num_points = num_points
        self.with_center = with_center
        self.center = center
        self.sampling = sampling
        self.mask_from_contour = mask_from_contour

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        mp = cfg.MODEL.MASK_POINT
        num_keypoints = mp.NUM_POINTS + int(mp.WITH_CENTER)
        mask_channels = 1 if cfg.MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK else cfg.MODEL.ROI_HEADS.NUM_CLASSES
        ret.update(
            fusion=ContourFusion(num_keypoints, mask_channels, mp.FUSION_STRUCTURE, mp.REDUCTION, mp.FUSION),
            num_points=mp.NUM_POINTS,
            with_center=mp.WITH_CENTER,
            center=mp.CENTER,
            sampling=mp.SAMPLING,
            mask_from_contour=mp.MASK_FROM_CONTOUR,
        )
        return ret

    @classmethod
    def _init_keypoint_head(cls, cfg, input_shape):
        # Always on, whatever MODEL.KEYPOINT_ON says (that switch also makes detectron2's data loader expect
        # keypoint annotations, which instance-segmentation datasets do not have): k+1 maps, weight alpha.
        mp = cfg.MODEL.MASK_POINT
        if mp.NUM_POINTS < 1:
            raise ValueError(f"MODEL.MASK_POINT.NUM_POINTS must be >= 1, got {mp.NUM_POINTS}")
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.KEYPOINT_ON = True
        cfg.MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS = mp.NUM_POINTS + int(mp.WITH_CENTER)
        cfg.MODEL.ROI_KEYPOINT_HEAD.LOSS_WEIGHT = mp.KEYPOINT_LOSS_WEIGHT
        return super()._init_keypoint_head(cfg, input_shape)

    @torch.no_grad()
    def label_and_sample_proposals(self, proposals: List[Instances], targets: List[Instances]) -> List[Instances]:
        # contour points of every ground truth, copied to the proposals matched to it by the parent
        for t in targets:
            if t.has("gt_masks") and not t.has("gt_keypoints"):
                t.gt_keypoints = contour_keypoints(
                    t.gt_masks, t.image_size, self.num_points, self.sampling, self.with_center, self.center
                )
        return super().label_and_sample_proposals(proposals, targets)

    def _pool(self, features: Dict[str, torch.Tensor], in_features, pooler, instances: List[Instances]):
        boxes = [x.proposal_boxes if self.training else x.pred_boxes for x in instances]
        return pooler([features[f] for f in in_features], boxes)

    def _keypoint_loss(self, kp_logits: torch.Tensor, instances: List[Instances]) -> torch.Tensor:
        head = self.keypoint_head
        normalizer = None if head.loss_normalizer == "visible" else len(instances) * head.loss_normalizer
        return keypoint_rcnn_loss(kp_logits, instances, normalizer=normalizer) * head.loss_weight

    def _forward_mask(self, features: Dict[str, torch.Tensor], instances: List[Instances]):
        """Both branches on the same RoIs (the positive proposals in training, the detections at test
        time): mask logits f_m, keypoint logits f_{k+1}, fused mask logits O_m (Eq. 1-2)."""
        if self.training:
            instances, _ = select_foreground_proposals(instances, self.num_classes)
        mask_logits = self.mask_head.layers(self._pool(features, self.mask_in_features, self.mask_pooler, instances))
        kp_logits = self.keypoint_head.layers(
            self._pool(features, self.keypoint_in_features, self.keypoint_pooler, instances)
        )
        fused = self.fusion(mask_logits, kp_logits)
        if self.training:
            return {
                "loss_mask": mask_rcnn_loss(fused, instances, self.mask_head.vis_period) * self.mask_head.loss_weight,
                "loss_keypoint": self._keypoint_loss(kp_logits, instances),  # alpha * Lkeypoint (Eq. 3)
            }
        mask_rcnn_inference(fused, instances)
        keypoint_rcnn_inference(kp_logits, instances)
        for inst in instances:
            inst.remove("pred_keypoint_heatmaps")  # (N, k+1, 56, 56) per image: too big to hand out
            if self.mask_from_contour:
                inst.pred_masks = contour_polygon_masks(
                    inst.pred_keypoints, inst.pred_boxes.tensor, self.num_points, 2 * fused.shape[-1]
                )
        return instances

    def _forward_keypoint(self, features: Dict[str, torch.Tensor], instances: List[Instances]):
        # the keypoint branch runs inside _forward_mask, where its logits are fused
        return {} if self.training else instances
