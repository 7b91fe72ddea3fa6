"""CASNet (``papers/casnet.txt``) as a detectron2 meta-architecture, instance and panoptic modes.

An HRNet backbone (``build_timm_hrnet_backbone``), HRNetV2 fusion to the output stride s (``OUTPUT_STRIDE``), and three
FCN heads at s: semantic (the K thing classes + background), common attributes (l, t, r, b, divided by s, ReLU: the
distances are non-negative) and box probability (one channel per thing class). Losses (Eq. 1-4): cross entropy,
L1 over the thing pixels (mean over their 4 distances), binary cross entropy over every pixel and class (Eq. 3's
weights w_n: centre pixels and the rest half each, ``PROB_BALANCED``; or the plain mean), weighted by ALPHA, BETA,
GAMMA. The targets come from the instance masks (``casnet.layers.targets``:
things over background, so any detectron2 instance dataset trains it); pixels of the padding are ignored.

Inference: ``casnet_postprocess`` on the image's region of the maps; ``sem_seg`` (the semantic logits resized to the
output, detectron2's ``sem_seg_postprocess``); the instance ids at the output size (``upsample_instance_ids``: each
pixel of a thing class in ``sem_seg``'s argmax joins the instance of its class whose bilinearly read indicator is the
highest there): ``instances`` (``pred_masks``, ``pred_boxes`` (the masks' extents, Sec. I's "calibrated by the final
actual pixel range"), ``scores``, ``pred_classes``). Each pixel belongs to at most one instance.

Panoptic mode (``PANOPTIC``): the semantic head predicts every class of the dataset (its metadata's ``stuff_classes``;
the things are the values of ``thing_dataset_id_to_contiguous_id``), trained on the ``sem_seg`` the panoptic mapper
gives; instances as above (``pred_classes`` are then the things' semantic ids, detectron2's panoptic convention), and
``panoptic_seg`` in detectron2's format: the instances first (every one, in score order; the paper drops none), then on
the remaining pixels one segment per stuff class of the semantic map of at least ``STUFF_AREA`` output pixels; thing
pixels without an instance, and smaller stuff regions, are void (0).

Semantic sources (``SEMANTIC_SOURCE``, Sec. IV's joint / separated / ground-truth modes): the semantic map of the
post-processing (and of the ``sem_seg`` output) is the semantic head's (``predicted``), the labels of another model or
of label PNGs (``external``), or the inputs' ``sem_seg`` (``ground_truth``). Given labels enter as one-hot
probabilities (ignored pixels: no class). Training is the same for all three.
"""

import math
import os
from typing import Dict, List, Optional

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone, build_model
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import BitMasks, Boxes, ImageList, Instances, PolygonMasks
from PIL import Image
from torch import nn
from torch.nn import functional as F

from instseg.data.mappers import thing_semantic_ids

from ..config import SEMANTIC_SOURCES
from ..layers import (
    SCORE_MODES,
    attribute_targets,
    box_probability_loss,
    casnet_postprocess,
    centre_targets,
    instance_boxes,
    labels_at_stride,
    pixel_owners,
    semantic_from_instances,
    upsample_instance_ids,
)
from .heads import FCNHead, HRFusion

IGNORE = 255
SATURATED = 20.0  # the logit of a given label (one-hot): softmax 1 - 1e-8 against the rest


def _resize_labels(labels: torch.Tensor, size) -> torch.Tensor:
    """A label map at ``size`` (nearest; unchanged when it is that size already)."""
    if tuple(labels.shape) == tuple(size):
        return labels
    return F.interpolate(labels[None, None].float(), size=tuple(size), mode="nearest-exact")[0, 0].long()


def _external_model(cfg_file: str, weights: str, device: str):
    """Another detectron2 model (a semantic segmentor) whose ``sem_seg`` gives the labels in separated mode."""
    from instseg.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(cfg_file)
    cfg.MODEL.DEVICE = device
    model = build_model(cfg)
    DetectionCheckpointer(model).load(weights)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, cfg.INPUT.FORMAT


def freeze_unreached(backbone: nn.Module, in_features: List[str]) -> List[str]:
    """Freeze the backbone parameters that cannot reach the features CASNet reads (timm's HRNet builds its last
    stage's fusions for every branch, detectron2's FPN an output conv for P5 when only P2-P4 are fused): DDP
    (``--num-gpus N``) needs every trainable parameter to receive a gradient. Found by one backward pass of a 128 x 128
    zero image in eval mode (normalisation statistics untouched). Returns the frozen parameters' names."""
    was_training = backbone.training
    backbone.eval()
    named = [(n, p) for n, p in backbone.named_parameters() if p.requires_grad]
    x = torch.zeros(1, 3, 128, 128, device=next(backbone.parameters()).device)
    with torch.enable_grad():
        features = backbone(x)
        total = sum(features[f].sum() for f in in_features)
        grads = torch.autograd.grad(total, [p for _, p in named], allow_unused=True)
    backbone.train(was_training)
    frozen = []
    for (name, p), g in zip(named, grads):
        if g is None:
            p.requires_grad_(False)
            frozen.append(name)
    return frozen


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
        prob_balanced: bool = True,
        seed_threshold: float = 0.5,
        nms_threshold: float = 0.5,
        seed_topk: int = 5000,
        min_iou: float = 0.0,
        tie_eps: float = 1e-3,
        score_mode: str = "seed_x_semantic",
        max_detections: int = 100,
        thing_ids: Optional[List[int]] = None,
        num_sem_classes: Optional[int] = None,
        panoptic: bool = False,
        stuff_area: int = 2048,
        semantic_source: str = "predicted",
        external_dir: str = "",
        external_model: Optional[nn.Module] = None,
        external_flip_channels: bool = False,
    ):
        """
        Args (beyond the parts and the keys of the same names):
            thing_ids: the semantic id of each thing class (default 0..K-1).
            num_sem_classes: the semantic head's classes: K + 1 (background last) in instance mode, the dataset's
                classes in panoptic mode.
            external_model: separated mode's semantic model (not a submodule: not trained, not in checkpoints).
            external_flip_channels: its input format is the other of RGB / BGR: its images are flipped.
        """
        super().__init__()
        self.max_detections = max_detections
        if semantic_source not in SEMANTIC_SOURCES:
            raise ValueError(f"MODEL.CASNET.SEMANTIC_SOURCE must be one of {SEMANTIC_SOURCES}, got {semantic_source!r}")
        if semantic_source == "external" and bool(external_dir) == (external_model is not None):
            raise ValueError(
                "MODEL.CASNET.SEMANTIC_SOURCE external needs exactly one of EXTERNAL_SEMANTIC_DIR (label PNGs) and "
                "EXTERNAL_SEMANTIC_CONFIG + EXTERNAL_SEMANTIC_WEIGHTS (a model)"
            )
        if external_dir and not os.path.isdir(external_dir):
            raise ValueError(f"MODEL.CASNET.EXTERNAL_SEMANTIC_DIR {external_dir!r} is not a folder")
        if score_mode not in SCORE_MODES:
            raise ValueError(f"MODEL.CASNET.SCORE_MODE must be one of {SCORE_MODES}, got {score_mode!r}")
        if seed_topk < 1:
            raise ValueError(f"MODEL.CASNET.SEED_TOPK must be >= 1, got {seed_topk}")
        self.backbone, self.fusion = backbone, fusion
        self.sem_head, self.attr_head, self.prob_head = sem_head, attr_head, prob_head
        self.num_things = num_things
        self.thing_ids = list(range(num_things)) if thing_ids is None else [int(t) for t in thing_ids]
        if len(self.thing_ids) != num_things:
            raise ValueError(f"{len(self.thing_ids)} thing ids for MODEL.CASNET.NUM_THING_CLASSES {num_things}")
        self.panoptic = panoptic
        self.num_sem = num_things + 1 if num_sem_classes is None else int(num_sem_classes)
        self.stuff_ids = [c for c in range(self.num_sem) if c not in self.thing_ids] if panoptic else []
        # the head's class of each thing: its semantic id (panoptic) or its index (instance mode)
        self.head_things = self.thing_ids if panoptic else list(range(num_things))
        self.stuff_area = stuff_area
        self.semantic_source = semantic_source
        self.external_dir = external_dir
        self.__dict__["external_model"] = external_model  # outside the module tree: frozen, not saved
        self.external_flip_channels = external_flip_channels
        # the dataset's semantic ids -> the head's classes: panoptic, the same (others ignored); instance mode, the
        # thing ids -> their index, everything else background (K)
        lut = torch.full((256,), IGNORE if panoptic else num_things, dtype=torch.int64)
        if panoptic:
            lut[: self.num_sem] = torch.arange(self.num_sem)
        else:
            lut[torch.tensor(self.thing_ids)] = torch.arange(num_things)
        self.register_buffer("sem_lut", lut, False)
        self.stride = fusion.out_stride
        self.centre_radius = centre_radius
        self.loss_weights = tuple(loss_weights)
        self.prob_balanced = prob_balanced
        self.post = dict(
            seed_threshold=seed_threshold,
            nms_threshold=nms_threshold,
            seed_topk=seed_topk,
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
        freeze_unreached(backbone, c.IN_FEATURES)
        K = c.NUM_THING_CLASSES
        if K < 1:
            raise ValueError(f"MODEL.CASNET.NUM_THING_CLASSES must be >= 1, got {K}")
        thing_ids, num_sem = list(c.THING_SEMANTIC_IDS) or list(range(K)), K + 1
        if not c.PANOPTIC and (len(thing_ids) != K or not all(0 <= t < IGNORE for t in thing_ids)):
            raise ValueError(f"MODEL.CASNET.THING_SEMANTIC_IDS {thing_ids}: one label id (0-254) per thing class ({K})")
        if c.PANOPTIC:
            names = cfg.DATASETS.TRAIN or cfg.DATASETS.TEST
            if not names:
                raise ValueError(
                    "MODEL.CASNET.PANOPTIC reads its classes from DATASETS.TRAIN[0]'s metadata: none named"
                )
            meta = MetadataCatalog.get(names[0])
            thing_ids = thing_semantic_ids(meta)
            num_sem = len(meta.get("stuff_classes", []))
            if len(thing_ids) != K or num_sem <= K:
                raise ValueError(
                    f"MODEL.CASNET.NUM_THING_CLASSES {K}, but {names[0]!r} has {len(thing_ids)} thing classes among "
                    f"{num_sem} classes: set NUM_THING_CLASSES {len(thing_ids)} (panoptic mode: a panoptic dataset)"
                )
        external, flip = None, False
        if c.SEMANTIC_SOURCE == "external" and (c.EXTERNAL_SEMANTIC_CONFIG or c.EXTERNAL_SEMANTIC_WEIGHTS):
            if not (c.EXTERNAL_SEMANTIC_CONFIG and c.EXTERNAL_SEMANTIC_WEIGHTS):
                raise ValueError("MODEL.CASNET.EXTERNAL_SEMANTIC_CONFIG needs EXTERNAL_SEMANTIC_WEIGHTS, and back")
            external, ext_format = _external_model(
                c.EXTERNAL_SEMANTIC_CONFIG, c.EXTERNAL_SEMANTIC_WEIGHTS, cfg.MODEL.DEVICE
            )
            flip = {ext_format, cfg.INPUT.FORMAT} == {"RGB", "BGR"}
        ch, n, norm = c.HEAD_CHANNELS, c.HEAD_NUM_CONVS, c.NORM
        return {
            "backbone": backbone,
            "fusion": HRFusion(shapes, c.IN_FEATURES, c.OUTPUT_STRIDE, c.FUSE_CHANNELS, norm),
            "sem_head": FCNHead(c.FUSE_CHANNELS, ch, n, num_sem, norm),
            "attr_head": FCNHead(c.FUSE_CHANNELS, ch, n, 4, norm),
            "prob_head": FCNHead(c.FUSE_CHANNELS, ch, n, K, norm),
            "num_things": K,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "centre_radius": c.CENTRE_RADIUS,
            "loss_weights": (c.ALPHA, c.BETA, c.GAMMA),
            "prob_balanced": c.PROB_BALANCED,
            "seed_threshold": c.SEED_THRESHOLD,
            "nms_threshold": c.SEED_NMS_THRESHOLD,
            "seed_topk": c.SEED_TOPK,
            "min_iou": c.IOU_VOTE_MIN_IOU,
            "tie_eps": c.IOU_VOTE_TIE_EPS,
            "score_mode": c.SCORE_MODE,
            "max_detections": cfg.TEST.DETECTIONS_PER_IMAGE,
            "thing_ids": thing_ids,
            "num_sem_classes": num_sem,
            "panoptic": c.PANOPTIC,
            "stuff_area": c.STUFF_AREA,
            "semantic_source": c.SEMANTIC_SOURCE,
            "external_dir": c.EXTERNAL_SEMANTIC_DIR,
            "external_model": external,
            "external_flip_channels": flip,
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
            sems = None
            if self.panoptic:
                if any("sem_seg" not in x for x in batched_inputs):
                    raise ValueError(
                        "CASNet's panoptic mode trains on each input's 'sem_seg' and 'instances': set "
                        "INPUT.DATASET_MAPPER_NAME PanopticDatasetMapper (a panoptic dataset)"
                    )
                sems = [x["sem_seg"].to(self.device) for x in batched_inputs]
            crowds = [x.get("crowd_mask") for x in batched_inputs]  # CASNetInstanceMapper's, instance mode
            return self.losses(sem, attr, prob, gts, images, sems, crowds)
        given = self.given_labels(batched_inputs)
        results = []
        for i, (x, size) in enumerate(zip(batched_inputs, images.image_sizes)):
            out_size = (x.get("height", size[0]), x.get("width", size[1]))
            labels = None if given is None else given[i]
            results.append(self.inference_single(sem[i], attr[i], prob[i], size, out_size, labels))
        return results

    # ---- training -----------------------------------------------------------------------------------------------
    def targets(
        self,
        gt: Instances,
        padded,
        image_size,
        sem_seg: Optional[torch.Tensor] = None,
        crowd: Optional[torch.Tensor] = None,
    ):
        """Semantic labels (padding ignored), attributes and their mask, centre targets for one image. The semantic
        labels come from ``sem_seg`` (the dataset's ids, at the input resolution) in panoptic mode, from the instance
        masks otherwise, ignored on the ``crowd`` regions (input resolution, bool) that no instance owns."""
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
        if self.panoptic:
            labels = self.sem_lut[labels_at_stride(sem_seg.clamp(0, 255), (h, w), s, IGNORE)]
        else:
            labels = semantic_from_instances(owners, gt.gt_classes, background=K)
            if crowd is not None:
                in_crowd = labels_at_stride(crowd.to(labels.device), (h, w), s, 0).bool()
                labels = labels.masked_fill(in_crowd & (owners < 0), IGNORE)
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

    def losses(self, sem, attr, prob, gts, images, sems=None, crowds=None):
        padded = images.tensor.shape[-2:]
        sems = sems or [None] * len(gts)
        crowds = crowds or [None] * len(gts)
        t = [self.targets(gt, padded, size, m, c) for gt, size, m, c in zip(gts, images.image_sizes, sems, crowds)]
        labels, dist, valid, centres, inside = (torch.stack(x) for x in zip(*t))
        alpha, beta, gamma = self.loss_weights
        loss_sem = F.cross_entropy(sem, labels, ignore_index=IGNORE)  # Eq. 1
        v = valid[:, None].expand_as(attr)
        loss_common = F.l1_loss(attr[v], dist[v]) if bool(v.any()) else attr.sum() * 0.0  # Eq. 2
        pm = inside[:, None].expand_as(prob)
        loss_prob = box_probability_loss(prob[pm], centres[pm], self.prob_balanced)  # Eq. 3
        return {"loss_sem": alpha * loss_sem, "loss_common": beta * loss_common, "loss_prob": gamma * loss_prob}

    # ---- inference ----------------------------------------------------------------------------------------------
    def given_labels(self, batched_inputs) -> Optional[List[torch.Tensor]]:
        """The semantic labels of the external or ground-truth source, per image: (h, w) int64 head classes
        (``IGNORE`` for none) at the size they come in (ground truth: the input tensor's; a label PNG: the original
        image's; another model: the output's); None for the predicted source."""
        if self.semantic_source == "predicted":
            return None
        out = []
        if self.semantic_source == "external" and self.external_model is not None:
            ext = self.external_model.to(self.device)
            ext_inputs = batched_inputs
            if self.external_flip_channels:  # its INPUT.FORMAT is not ours (RGB vs BGR)
                ext_inputs = [{**x, "image": x["image"].flip(0)} for x in batched_inputs]
            raw = [r["sem_seg"].argmax(dim=0) for r in ext(ext_inputs)]  # at each input's output size
        for i, x in enumerate(batched_inputs):
            if self.semantic_source == "ground_truth":
                if "sem_seg" not in x:
                    raise ValueError(
                        "MODEL.CASNET.SEMANTIC_SOURCE ground_truth reads each input's 'sem_seg': evaluate on a dataset "
                        "whose dicts have sem_seg_file_name or pan_seg_file_name (PanopticDatasetMapper)"
                    )
                labels = x["sem_seg"].to(self.device)
            elif self.external_model is not None:
                labels = raw[i]
            else:
                stem = os.path.splitext(os.path.basename(x["file_name"]))[0]
                path = os.path.join(self.external_dir, stem + ".png")
                if not os.path.isfile(path):
                    raise FileNotFoundError(
                        f"MODEL.CASNET.EXTERNAL_SEMANTIC_DIR has no {stem}.png (for {x['file_name']})"
                    )
                png = np.asarray(Image.open(path))  # class ids as stored: grey ("L") or palette ("P") indices
                if png.ndim != 2:
                    raise ValueError(
                        f"{path}: label PNGs must be single-channel class ids (mode L or P), not {png.shape}"
                    )
                labels = torch.as_tensor(png.astype("int64"), device=self.device)
            out.append(self.sem_lut[labels.long().clamp(0, 255)])
        return out

    def _one_hot(self, labels: torch.Tensor) -> torch.Tensor:
        """Saturated logits (num_sem + 1, h, w) of given labels; ``IGNORE`` pixels are the extra last class (none)."""
        idx = torch.where(labels == IGNORE, torch.full_like(labels, self.num_sem), labels)
        return F.one_hot(idx, self.num_sem + 1).permute(2, 0, 1).float() * SATURATED

    def inference_single(self, sem, attr, prob, image_size, out_size, labels: Optional[torch.Tensor] = None):
        """One image's outputs from its maps at the output stride (``labels``: the given semantic labels, see
        ``given_labels``)."""
        s = self.stride
        hs, ws = math.ceil(image_size[0] / s), math.ceil(image_size[1] / s)
        if labels is not None:
            labels_in = _resize_labels(labels, image_size)
            sem_small = self._one_hot(labels_at_stride(labels_in, (hs, ws), s, IGNORE))
        else:
            sem_small = sem[:, :hs, :ws]
        out = casnet_postprocess(sem_small, attr[:, :hs, :ws], prob[:, :hs, :ws], self.head_things, **self.post)
        keep = out["scores"].argsort(descending=True)[: self.max_detections]  # TEST.DETECTIONS_PER_IMAGE
        remap = torch.full((len(out["scores"]) + 1,), -1, dtype=torch.int64, device=sem.device)
        remap[keep] = torch.arange(len(keep), device=sem.device)
        ids = remap[out["instance_ids"]]  # -1 stays -1
        out = {k: out[k][keep] for k in ("boxes", "scores", "classes")}
        if labels is None:
            sem_full = F.interpolate(sem[None], scale_factor=s, mode="bilinear", align_corners=False)[0]
            sem_seg = sem_seg_postprocess(sem_full, image_size, *out_size)
            sem_labels = sem_seg.argmax(dim=0)
        else:
            sem_labels = _resize_labels(labels, out_size)  # from the given labels' own size, once
            sem_seg = self._one_hot(sem_labels)[: self.num_sem]
        n = len(out["scores"])
        head_things = torch.as_tensor(self.head_things, device=ids.device)
        ids_out = upsample_instance_ids(ids, head_things[out["classes"]], sem_labels, image_size, s)
        inst = Instances(out_size)
        inst.pred_masks = ids_out[None] == torch.arange(n, device=ids_out.device)[:, None, None]
        scale = torch.tensor(
            [out_size[1] / image_size[1], out_size[0] / image_size[0]] * 2, device=ids.device, dtype=torch.float32
        )
        seed_boxes = Boxes(out["boxes"] * s * scale)
        seed_boxes.clip(out_size)
        # each instance "calibrated by the final actual pixel range" (Sec. I): its mask's box (its seed's if empty)
        inst.pred_boxes = Boxes(instance_boxes(ids_out, n, seed_boxes.tensor))
        inst.scores = out["scores"]
        classes = out["classes"]  # thing index; panoptic mode: the semantic id (detectron2's panoptic convention)
        inst.pred_classes = (
            torch.as_tensor(self.thing_ids, device=classes.device)[classes] if self.panoptic else classes
        )
        result = {"instances": inst, "sem_seg": sem_seg}
        if self.panoptic:
            result["panoptic_seg"] = self.combine(ids_out, inst, sem_labels)
        return result

    def combine(self, ids: torch.Tensor, inst: Instances, sem_labels: torch.Tensor):
        """detectron2's ``panoptic_seg``: ((H, W) int32 segment ids, 0 void; segments_info). The instances first (they
        do not overlap; one without pixels gets no segment), then on the free pixels each stuff class of the semantic
        map with at least ``stuff_area`` pixels. Segment ids count from 1 in that order; one pass over the map."""
        on = ids >= 0
        n = len(inst)
        present = torch.bincount(ids[on], minlength=n) > 0
        seg_of = torch.cumsum(present, 0) * present  # each instance's segment id (0: none); id -1 reads a last 0
        seg_of = torch.cat([seg_of, seg_of.new_zeros(1)])
        classes, scores = inst.pred_classes.tolist(), inst.scores.detach().tolist()
        seg_ids = seg_of.tolist()
        segments = [
            {"id": seg_ids[k], "isthing": True, "category_id": classes[k], "score": scores[k], "instance_id": k}
            for k in present.nonzero().flatten().tolist()
        ]
        free = ~on
        free_labels = sem_labels[free]
        stuff_area = torch.bincount(free_labels, minlength=self.num_sem).tolist()
        seg_of_label = torch.zeros(len(stuff_area), dtype=torch.int64, device=ids.device)
        for c in self.stuff_ids:
            area = stuff_area[c]
            if area == 0 or area < self.stuff_area:
                continue
            seg_of_label[c] = len(segments) + 1
            segments.append({"id": len(segments) + 1, "isthing": False, "category_id": c, "area": area})
        pan = seg_of[ids]  # the instances; 0 on the free pixels
        pan[free] = seg_of_label[free_labels]
        return pan.to(torch.int32), segments
