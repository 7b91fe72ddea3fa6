"""CASNet (``papers/casnet.txt``) as a detectron2 meta-architecture, instance mode.

An HRNet backbone (``build_timm_hrnet_backbone``), HRNetV2 fusion to the output stride s (``OUTPUT_STRIDE``), and three
FCN heads at s: semantic (the K thing classes + background), common attributes (l, t, r, b, divided by s, ReLU: the
distances are non-negative) and box probability (one channel per thing class). Losses (Eq. 1-4): cross entropy,
L1 over the thing pixels (mean over their 4 distances), binary cross entropy over every pixel and class (mean; Eq. 3's
weights w_n = 1), weighted by ALPHA, BETA, GAMMA. The targets come from the instance masks (``casnet.layers.targets``:
things over background, so any detectron2 instance dataset trains it); pixels of the padding are ignored.

Inference: ``casnet_postprocess`` on the image's region of the maps, then the instance id map resized (nearest) to the
output size: ``instances`` (``pred_masks``, ``pred_boxes`` (the seed boxes), ``scores``, ``pred_classes``) and
``sem_seg`` (the semantic logits resized to the output, detectron2's ``sem_seg_postprocess``). Each pixel belongs to at
most one instance.
"""

import math
from typing import Dict, List

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import BitMasks, Boxes, ImageList, Instances, PolygonMasks
from torch import nn
from torch.nn import functional as F

from ..layers import (
    SCORE_MODES,
    attribute_targets,
    casnet_postprocess,
    centre_targets,
    pixel_owners,
    semantic_from_instances,
)
from .heads import FCNHead, HRFusion

IGNORE = 255


@META_ARCH_REGISTRY.register()
class CASNet(nn.Module):
    @configurable
    def __init__(
        self,
        *,
        backbone,
        fusion: HRFusion,
        sem_head: nn.Module,
        attr_head: nn.Module,
        prob_head: nn.Module,
        num_things: int,
        pixel_mean,
        pixel_std,
        centre_radius: float = 1.5,
        loss_weights=(1.0, 1.0, 1.0),
        seed_threshold: float = 0.5,
        nms_threshold: float = 0.5,
        min_iou: float = 0.0,
        tie_eps: float = 1e-3,
        score_mode: str = "seed_x_semantic",
        max_detections: int = 100,
    ):
        super().__init__()
        self.max_detections = max_detections
        if score_mode not in SCORE_MODES:
            raise ValueError(f"MODEL.CASNET.SCORE_MODE must be one of {SCORE_MODES}, got {score_mode!r}")
        self.backbone, self.fusion = backbone, fusion
        self.sem_head, self.attr_head, self.prob_head = sem_head, attr_head, prob_head
        self.num_things = num_things
        self.stride = fusion.out_stride
        self.centre_radius = centre_radius
        self.loss_weights = tuple(loss_weights)
        self.post = dict(
            seed_threshold=seed_threshold,
            nms_threshold=nms_threshold,
            min_iou=min_iou,
            tie_eps=tie_eps,
            score_mode=score_mode,
        )
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg):
        c = cfg.MODEL.CASNET
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        missing = [f for f in c.IN_FEATURES if f not in shapes]
        if missing:
            raise ValueError(f"MODEL.CASNET.IN_FEATURES {missing} are not backbone outputs ({sorted(shapes)})")
        if backbone.size_divisibility % c.OUTPUT_STRIDE:
            raise ValueError(f"MODEL.CASNET.OUTPUT_STRIDE {c.OUTPUT_STRIDE} must divide the backbone's 32")
        K = c.NUM_THING_CLASSES
        if K < 1:
            raise ValueError(f"MODEL.CASNET.NUM_THING_CLASSES must be >= 1, got {K}")
        ch, n, norm = c.HEAD_CHANNELS, c.HEAD_NUM_CONVS, c.NORM
        return {
            "backbone": backbone,
            "fusion": HRFusion(shapes, c.IN_FEATURES, c.OUTPUT_STRIDE, c.FUSE_CHANNELS, norm),
            "sem_head": FCNHead(c.FUSE_CHANNELS, ch, n, K + 1, norm),
            "attr_head": FCNHead(c.FUSE_CHANNELS, ch, n, 4, norm),
            "prob_head": FCNHead(c.FUSE_CHANNELS, ch, n, K, norm),
            "num_things": K,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "centre_radius": c.CENTRE_RADIUS,
            "loss_weights": (c.ALPHA, c.BETA, c.GAMMA),
            "seed_threshold": c.SEED_THRESHOLD,
            "nms_threshold": c.SEED_NMS_THRESHOLD,
            "min_iou": c.IOU_VOTE_MIN_IOU,
            "tie_eps": c.IOU_VOTE_TIE_EPS,
            "score_mode": c.SCORE_MODE,
            "max_detections": cfg.TEST.DETECTIONS_PER_IMAGE,
        }

    @property
    def device(self):
        return self.pixel_mean.device

    def heads(self, images: ImageList):
        x = self.fusion(self.backbone(images.tensor), images.tensor.shape[-2:])
        return self.sem_head(x), F.relu(self.attr_head(x)), self.prob_head(x)

    def forward(self, batched_inputs: List[Dict]):
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        images = ImageList.from_tensors(images, self.backbone.size_divisibility)
        sem, attr, prob = self.heads(images)
        if self.training:
            gts = [x["instances"].to(self.device) for x in batched_inputs]
            return self.losses(sem, attr, prob, gts, images)
        results = []
        for i, (x, size) in enumerate(zip(batched_inputs, images.image_sizes)):
            out_size = (x.get("height", size[0]), x.get("width", size[1]))
            results.append(self.inference_single(sem[i], attr[i], prob[i], size, out_size))
        return results

    # ---- training -----------------------------------------------------------------------------------------------
    def targets(self, gt: Instances, padded, image_size):
        """Semantic labels (padding ignored), attributes and their mask, centre targets for one image."""
        s, K = self.stride, self.num_things
        h, w = padded[0] // s, padded[1] // s
        masks = gt.gt_masks
        if isinstance(masks, PolygonMasks):
            masks = BitMasks.from_polygon_masks(masks, *image_size)
        boxes = gt.gt_boxes.tensor
        if len(gt) and int(gt.gt_classes.max()) >= K:
            raise ValueError(
                f"a ground-truth class {int(gt.gt_classes.max())} >= MODEL.CASNET.NUM_THING_CLASSES {K}: set it to the "
                "dataset's number of thing classes"
            )
        owners = pixel_owners(masks.tensor.to(boxes.device).bool(), boxes, (h, w), s)
        labels = semantic_from_instances(owners, gt.gt_classes, background=K)
        cy = (torch.arange(h, device=labels.device) + 0.5) * s
        cx = (torch.arange(w, device=labels.device) + 0.5) * s
        padding = (cy[:, None] >= image_size[0]) | (cx[None, :] >= image_size[1])
        labels = labels.masked_fill(padding, IGNORE)
        dist, valid = attribute_targets(owners, boxes, s)
        valid = valid & ~padding
        centres = centre_targets(
            boxes, gt.gt_classes, K, (h, w), s, self.centre_radius, owners.masked_fill(padding, -1)
        )
        return labels, dist, valid, centres, ~padding

    def losses(self, sem, attr, prob, gts, images):
        padded = images.tensor.shape[-2:]
        t = [self.targets(gt, padded, size) for gt, size in zip(gts, images.image_sizes)]
        labels, dist, valid, centres, inside = (torch.stack(x) for x in zip(*t))
        alpha, beta, gamma = self.loss_weights
        loss_sem = F.cross_entropy(sem, labels, ignore_index=IGNORE)  # Eq. 1
        v = valid[:, None].expand_as(attr)
        loss_common = F.l1_loss(attr[v], dist[v]) if bool(v.any()) else attr.sum() * 0.0  # Eq. 2
        pm = inside[:, None].expand_as(prob)
        loss_prob = F.binary_cross_entropy_with_logits(prob[pm], centres[pm])  # Eq. 3
        return {"loss_sem": alpha * loss_sem, "loss_common": beta * loss_common, "loss_prob": gamma * loss_prob}

    # ---- inference ----------------------------------------------------------------------------------------------
    def inference_single(self, sem, attr, prob, image_size, out_size):
        s = self.stride
        hs, ws = math.ceil(image_size[0] / s), math.ceil(image_size[1] / s)
        out = casnet_postprocess(
            sem[:, :hs, :ws], attr[:, :hs, :ws], prob[:, :hs, :ws], list(range(self.num_things)), **self.post
        )
        keep = out["scores"].argsort(descending=True)[: self.max_detections]  # TEST.DETECTIONS_PER_IMAGE
        remap = torch.full((len(out["scores"]) + 1,), -1, dtype=torch.int64, device=sem.device)
        remap[keep] = torch.arange(len(keep), device=sem.device)
        ids = remap[out["instance_ids"]]  # -1 stays -1
        out = {k: out[k][keep] for k in ("boxes", "scores", "classes")}
        up = F.interpolate(ids[None, None].float(), scale_factor=s, mode="nearest")[
            :, :, : image_size[0], : image_size[1]
        ]
        ids_out = F.interpolate(up, size=out_size, mode="nearest-exact")[0, 0].long()
        n = len(out["scores"])
        inst = Instances(out_size)
        inst.pred_masks = ids_out[None] == torch.arange(n, device=ids_out.device)[:, None, None]
        scale = torch.tensor(
            [out_size[1] / image_size[1], out_size[0] / image_size[0]] * 2, device=ids.device, dtype=torch.float32
        )
        boxes = Boxes(out["boxes"] * s * scale)
        boxes.clip(out_size)
        inst.pred_boxes = boxes
        inst.scores = out["scores"]
        inst.pred_classes = out["classes"]
        sem_full = F.interpolate(sem[None], scale_factor=s, mode="bilinear", align_corners=False)[0]
        return {"instances": inst, "sem_seg": sem_seg_postprocess(sem_full, image_size, *out_size)}
