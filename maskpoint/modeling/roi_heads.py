"""Mask Point R-CNN's ROI heads (Sec. III-D, Fig. 1): Mask R-CNN's heads plus a contour-point keypoint
branch on the same positive RoIs, whose heatmaps are fused into the mask logits (Eq. 1-2); the loss is
L = Lcls + Lbox + Lmask + alpha * Lkeypoint (Eq. 3)."""

from typing import Dict, List, Optional

import cv2
import numpy as np
import torch
from detectron2.config import configurable
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads, select_foreground_proposals
from detectron2.modeling.roi_heads.keypoint_head import keypoint_rcnn_inference, keypoint_rcnn_loss
from detectron2.modeling.roi_heads.mask_head import mask_rcnn_inference, mask_rcnn_loss
from detectron2.structures import Instances

from ..config import MAPPER_NAME, check_maskpoint_config
from ..layers import ContourFusion


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
    """``StandardROIHeads`` whose keypoint head predicts k+1 contour points and whose mask logits are fused with
    the keypoint logits (Eq. 1-2). The contour-point targets (``gt_keypoints``) come with the training data:
    ``maskpoint.modeling.ContourPointDatasetMapper`` samples them from the masks after augmentation.

    Outputs standard ``Instances``: ``pred_masks`` from the fused mask head (or, with ``MASK_FROM_CONTOUR``, from
    the filled polygon of the predicted contour) and ``pred_keypoints`` (N, k+1, 3) = the predicted contour points
    (x, y, score), the centre last. Without a mask head (``MODEL.MASK_POINT.MASK_HEAD`` False, Table VII's
    keypoint-only row) the keypoint branch is detectron2's alone and the masks are the filled contour polygons."""

    @configurable
    def __init__(
        self,
        *,
        fusion: Optional[ContourFusion],
        num_points: int,
        with_center: bool = True,
        mask_from_contour: bool = False,
        contour_mask_side: int = 56,
        **kwargs,
    ):
        """
        Args:
            fusion: reduces the keypoint logits and fuses them into the mask logits (Eq. 1-2); None without a
                mask head.
            num_points: k; the first k predicted keypoints are the contour, in order.
            with_center: whether keypoint k+1 is the object's centre.
            mask_from_contour: ``pred_masks`` are the filled polygons of the predicted contour points (Sec. IV-E)
                instead of the fused mask head's.
            contour_mask_side: side of the box-relative masks the contour polygons are filled at.
            kwargs: ``StandardROIHeads``'; the keypoint pooler and head are required, the mask ones optional.
        """
        super().__init__(**kwargs)
        if not self.keypoint_on or self.keypoint_pooler is None:
            raise ValueError(
                "MaskPointROIHeads needs its keypoint branch with an RoI pooler: MODEL.KEYPOINT_ON True "
                "and ROI_KEYPOINT_HEAD.POOLER_TYPE (e.g. ROIAlignV2)"
            )
        if self.mask_on and (self.mask_pooler is None or fusion is None):
            raise ValueError(
                "MaskPointROIHeads fuses the contour points into the mask head: it needs "
                "ROI_MASK_HEAD.POOLER_TYPE (e.g. ROIAlignV2) and a ContourFusion"
            )
        if not self.mask_on and not mask_from_contour:
            raise ValueError(
                "MaskPointROIHeads without a mask head predicts its masks from the contour points: "
                "set MODEL.MASK_POINT.MASK_FROM_CONTOUR True"
            )
        self.fusion = fusion
        self.num_points = num_points
        self.with_center = with_center
        self.mask_from_contour = mask_from_contour
        self.contour_mask_side = contour_mask_side

    @classmethod
    def from_config(cls, cfg, input_shape):
        check_maskpoint_config(cfg)
        ret = super().from_config(cfg, input_shape)
        mp = cfg.MODEL.MASK_POINT
        fusion = None
        if mp.MASK_HEAD:
            mask_channels = 1 if cfg.MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK else cfg.MODEL.ROI_HEADS.NUM_CLASSES
            keypoints = cfg.MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS  # k + 1 (checked above)
            fusion = ContourFusion(keypoints, mask_channels, mp.FUSION_STRUCTURE, mp.REDUCTION, mp.FUSION)
        # twice the side of the mask head's output (56 for its 28x28 logits), as the keypoint heatmaps
        ret.update(
            fusion=fusion,
            num_points=mp.NUM_POINTS,
            with_center=mp.WITH_CENTER,
            mask_from_contour=mp.MASK_FROM_CONTOUR,
            contour_mask_side=4 * cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION,
        )
        return ret

    @classmethod
    def _init_mask_head(cls, cfg, input_shape):
        # MASK_HEAD False (Table VII's keypoint-only row) builds no mask head; MODEL.MASK_ON stays True, since the
        # masks are still loaded (the contour targets come from them) and predicted (from the contour).
        if not cfg.MODEL.MASK_POINT.MASK_HEAD:
            return {}
        return super()._init_mask_head(cfg, input_shape)

    def label_and_sample_proposals(self, proposals: List[Instances], targets: List[Instances]) -> List[Instances]:
        # the parent copies every gt_* field, gt_keypoints included, to the proposals matched to it
        k = self.num_points + int(self.with_center)
        for t in targets:
            if len(t) == 0:
                continue
            if not t.has("gt_keypoints"):
                raise ValueError(
                    "Mask Point R-CNN trains on contour points sampled in the data loader, but a training target has "
                    f"no gt_keypoints: set INPUT.DATASET_MAPPER_NAME {MAPPER_NAME} (configs/MaskPoint/*.yaml do), or "
                    "when feeding the model yourself add instances.gt_keypoints = "
                    "maskpoint.modeling.contour_keypoints(instances.gt_masks, image_size, NUM_POINTS, ...)"
                )
            if t.gt_keypoints.tensor.shape[1] != k:
                raise ValueError(
                    f"Mask Point R-CNN predicts {k} keypoints (NUM_POINTS + WITH_CENTER), but the "
                    f"targets' gt_keypoints have {t.gt_keypoints.tensor.shape[1]}"
                )
        return super().label_and_sample_proposals(proposals, targets)

    def _pool(self, features: Dict[str, torch.Tensor], in_features, pooler, instances: List[Instances]):
        boxes = [x.proposal_boxes if self.training else x.pred_boxes for x in instances]
        return pooler([features[f] for f in in_features], boxes)

    def _keypoint_loss(self, kp_logits: torch.Tensor, instances: List[Instances]) -> torch.Tensor:
        head = self.keypoint_head
        normalizer = None if head.loss_normalizer == "visible" else len(instances) * head.loss_normalizer
        return keypoint_rcnn_loss(kp_logits, instances, normalizer=normalizer) * head.loss_weight

    def _contour_masks(self, instances: List[Instances]) -> None:
        """Replace ``pred_masks`` by the filled polygons of ``pred_keypoints`` (Sec. IV-E)."""
        side = self.contour_mask_side
        for inst in instances:
            inst.pred_masks = contour_polygon_masks(inst.pred_keypoints, inst.pred_boxes.tensor, self.num_points, side)

    def _forward_mask(self, features: Dict[str, torch.Tensor], instances: List[Instances]):
        """Both branches on the same RoIs (the positive proposals in training, the detections at test
        time): mask logits f_m, keypoint logits f_{k+1}, fused mask logits O_m (Eq. 1-2)."""
        if not self.mask_on:
            return {} if self.training else instances
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
            self._contour_masks(instances)
        return instances

    def _forward_keypoint(self, features: Dict[str, torch.Tensor], instances: List[Instances]):
        if self.mask_on:  # the keypoint branch ran inside _forward_mask, where its logits are fused
            return {} if self.training else instances
        # no mask head (Table VII's keypoint-only row): detectron2's keypoint branch, masks from the contour
        instances = super()._forward_keypoint(features, instances)
        if self.training:
            return instances
        for inst in instances:
            inst.remove("pred_keypoint_heatmaps")
        self._contour_masks(instances)
        return instances
