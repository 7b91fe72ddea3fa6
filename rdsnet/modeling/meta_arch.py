"""RDSNet (``papers/rdsnet.txt``) as a detectron2 meta-architecture: ``RetinaNet`` (the object stream) with a
representation tower, the pixel stream, correlation + cropping (Eq. 1, our ``correlation_crop`` op), the OHEM mask
loss (Sec. 3.2), masks for the detections after NMS (Sec. 3.4) and the box refinements of Table 4 (MBRM, Sec. 3.3).

Training (Eq. 8): L = L_cls + L_reg + lambda_m L_mask. Only positive anchors feed the mask loss, at most
``MAX_MASKS_PER_IMAGE`` per image (sampled at random); each one's mask is the correlation of its representation with
the pixel representations, cropped with its ground-truth box x1.5 (TE) at the pixel stream's stride, against the
ground-truth mask average-pooled to that stride (>= 0.5). The MBRM stage (``MBRM_STAGE``) freezes everything else
(parameters and normalisation statistics) and trains MBRM alone with L_refine on the positive anchors' regressed
boxes and their inference-style masks (cropped with the regressed box x1.2, up-sampled to the input size).

Inference: detectron2's per-level top-k and class-wise NMS, the kept detections carrying their representation
(``pred_reps``); their correlation maps at the pixel stream's stride, up-sampled to the input size and cropped there
with the detections x1.2 (IE) for the box refinement (``BOX_REFINEMENT``: none / direct / mbrm), and to the output size
for the masks, binarised at ``MASK_THRESHOLD``. Only each object's crop region is up-sampled (bilinear, pixel centres
aligned); outside it the mask is background.

``MODEL.MASK_ON False`` builds detectron2's RetinaNet unchanged.
"""

from typing import List

import torch
from detectron2.config import configurable
from detectron2.layers import batched_nms, cat
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.meta_arch.retinanet import RetinaNet
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import BitMasks, Boxes, Instances, PolygonMasks, pairwise_iou
from torch.nn import functional as F

from ..layers import MBRM, correlation_crop, expand_boxes, profile_enclosing_boxes, rdsnet_mask_loss
from .heads import MASK_ASSEMBLIES, PixelStream, RDSNetHead

BOX_REFINEMENTS = ("none", "direct", "mbrm")


def check_rdsnet_config(cfg) -> None:
    """Refuse, at build time and with one message, every ``MODEL.RDSNET`` setting that cannot do what it says."""
    r = cfg.MODEL.RDSNET
    if r.MASK_ASSEMBLY not in MASK_ASSEMBLIES:
        raise ValueError(f"MODEL.RDSNET.MASK_ASSEMBLY must be one of {MASK_ASSEMBLIES}, got {r.MASK_ASSEMBLY!r}")
    if r.BOX_REFINEMENT not in BOX_REFINEMENTS:
        raise ValueError(f"MODEL.RDSNET.BOX_REFINEMENT must be one of {BOX_REFINEMENTS}, got {r.BOX_REFINEMENT!r}")
    if not cfg.MODEL.MASK_ON and (r.BOX_REFINEMENT != "none" or r.MBRM_STAGE):
        raise ValueError(
            "MODEL.RDSNET.BOX_REFINEMENT / MBRM_STAGE refine boxes with the masks, which MODEL.MASK_ON=False removes "
            "(RDSNet without masks is RetinaNet): set MODEL.RDSNET.BOX_REFINEMENT none"
        )
    if r.MBRM_STAGE and r.BOX_REFINEMENT != "mbrm":
        raise ValueError("MODEL.RDSNET.MBRM_STAGE trains MBRM: set MODEL.RDSNET.BOX_REFINEMENT mbrm")
    missing = [f for f in r.PIXEL_IN_FEATURES if f not in cfg.MODEL.RETINANET.IN_FEATURES]
    if missing:
        raise ValueError(
            f"MODEL.RDSNET.PIXEL_IN_FEATURES {missing} must be among MODEL.RETINANET.IN_FEATURES "
            f"{cfg.MODEL.RETINANET.IN_FEATURES} (the pixel stream reads the object stream's levels)"
        )
    if not 0.0 <= r.MASK_THRESHOLD <= 1.0 or r.MAX_MASKS_PER_IMAGE < 1:
        raise ValueError("MODEL.RDSNET.MASK_THRESHOLD must be in [0, 1] and MAX_MASKS_PER_IMAGE >= 1")
    if r.OHEM and not r.OHEM_NEG_POS_RATIO > 0:
        raise ValueError(
            f"MODEL.RDSNET.OHEM_NEG_POS_RATIO must be > 0 (0 keeps no background pixel), got {r.OHEM_NEG_POS_RATIO}"
        )
    if r.CROP_EXPAND_TRAIN < 1 or r.CROP_EXPAND_TEST < 1:
        raise ValueError("MODEL.RDSNET.CROP_EXPAND_TRAIN / CROP_EXPAND_TEST expand the boxes: they must be >= 1")
    if r.MBRM_STAGE and not cfg.MODEL.WEIGHTS:
        raise ValueError(
            "MODEL.RDSNET.MBRM_STAGE trains MBRM on a converged model (Sec. 3.4) and freezes the rest: set "
            "MODEL.WEIGHTS to the stage-1 checkpoint"
        )


def _mask_targets(gt: Instances, idx: torch.Tensor, padded_size, stride: int, device) -> torch.Tensor:
    """(len(idx), H / stride, W / stride) bool: the ground-truth masks ``idx`` of one image, zero-padded to the batch's
    padded size, average-pooled to the pixel stream's stride (>= 0.5), on ``device``. Each mask is rasterised and
    pooled once however many anchors it matches; polygons are rasterised on the CPU (``PolygonMasks.to`` keeps them
    there), then moved."""
    uniq, inverse = idx.unique(return_inverse=True)
    masks = gt.gt_masks[uniq.cpu() if isinstance(gt.gt_masks, PolygonMasks) else uniq]
    if isinstance(masks, PolygonMasks):
        masks = BitMasks.from_polygon_masks(masks, *gt.image_size)
    t = masks.tensor.to(device=device, dtype=torch.float32)
    t = F.pad(t, (0, padded_size[1] - t.shape[-1], 0, padded_size[0] - t.shape[-2]))
    pooled = F.avg_pool2d(t[:, None], kernel_size=stride, stride=stride)[:, 0] >= 0.5
    return pooled[inverse.to(device)]


UNTRAINED_MBRM = (
    "MODEL.RDSNET.BOX_REFINEMENT mbrm, but the loaded checkpoint has no trained MBRM ({keys}): run the MBRM stage "
    "on it (MODEL.RDSNET.MBRM_STAGE True) and use its output, or set MODEL.RDSNET.BOX_REFINEMENT none"
)


def _note_untrained_mbrm(model, incompatible_keys):
    """Load-state-dict post hook: a checkpoint without MBRM's parameters leaves them at their untrained start. Outside
    the MBRM stage that is an error at once; in the stage (which loads stage 1's checkpoint to train MBRM) it is
    remembered, and inference refuses to refine with them until a training step has run (``predict_masks``)."""
    if model.mbrm is None:
        return
    names = [f"mbrm.{n}" for n, _ in model.mbrm.named_parameters()]
    missing = [k for k in incompatible_keys.missing_keys if any(k == n or k.endswith("." + n) for n in names)]
    if not missing:
        return
    if not model.mbrm_stage:
        raise ValueError(UNTRAINED_MBRM.format(keys=", ".join(missing)))
    model.untrained_mbrm = ", ".join(missing)


@META_ARCH_REGISTRY.register()
class RDSNet(RetinaNet):
    """RetinaNet + pixel stream + correlation/cropping + MBRM (``MODEL.RDSNET``). Losses: ``loss_cls``,
    ``loss_box_reg``, ``loss_mask`` (``loss_refine`` alone in the MBRM stage)."""

    @configurable
    def __init__(
        self,
        *,
        mask_on: bool = False,
        pixel_stream=None,
        pixel_in_indices=(),
        mask_assembly: str = "corr",
        train_expand: float = 1.5,
        test_expand: float = 1.2,
        ohem: bool = True,
        ohem_neg_pos_ratio: float = 1.0,
        max_masks_per_image: int = 100,
        mask_loss_weight: float = 1.0,
        mask_threshold: float = 0.4,
        box_refinement: str = "none",
        mbrm=None,
        mbrm_stage: bool = False,
        **kwargs,
    ):
        """
        Args:
            mask_on (bool): the pixel stream and masks; False is RetinaNet.
            pixel_stream (PixelStream), pixel_in_indices: the pixel stream and the indices, in the head's features,
                of the levels it reads.
            mask_assembly: "corr" (Eq. 1) or "lc" (YOLACT's linear combination, Table 3 row 1).
            train_expand, test_expand (float): crop expansion ratios (1 = no expansion).
            ohem, ohem_neg_pos_ratio, max_masks_per_image, mask_loss_weight: the mask loss (Sec. 3.2, 3.4).
            mask_threshold (float): binarisation threshold of the output masks.
            box_refinement: "none", "direct" or "mbrm" (Table 4); mbrm (MBRM): the module.
            mbrm_stage (bool): train MBRM alone, everything else frozen.
            kwargs: the arguments of ``RetinaNet``.
        """
        super().__init__(**kwargs)
        self.mask_on = mask_on
        self.pixel_stream = pixel_stream
        self.pixel_in_indices = list(pixel_in_indices)
        self.mask_assembly = mask_assembly
        self.train_expand, self.test_expand = train_expand, test_expand
        self.ohem, self.ohem_neg_pos_ratio = ohem, ohem_neg_pos_ratio
        self.max_masks_per_image = max_masks_per_image
        self.mask_loss_weight = mask_loss_weight
        self.mask_threshold = mask_threshold
        self.box_refinement = box_refinement
        self.mbrm = mbrm
        self.mbrm_stage = mbrm_stage
        if mbrm_stage:
            for name, p in self.named_parameters():
                p.requires_grad_(name.startswith("mbrm."))
        self.untrained_mbrm = ""  # set by a load without MBRM's parameters, cleared by an MBRM training step
        self.register_load_state_dict_post_hook(_note_untrained_mbrm)

    @classmethod
    def from_config(cls, cfg):
        check_rdsnet_config(cfg)
        ret = super().from_config(cfg)
        if not cfg.MODEL.MASK_ON:
            return ret
        r = cfg.MODEL.RDSNET
        shapes = ret["backbone"].output_shape()
        in_features = cfg.MODEL.RETINANET.IN_FEATURES
        ret["head"] = RDSNetHead(cfg, [shapes[f] for f in in_features])
        ret.update(
            mask_on=True,
            pixel_stream=PixelStream(
                [shapes[f] for f in r.PIXEL_IN_FEATURES], r.PIXEL_CONV_DIM, r.PIXEL_NORM, r.PIXEL_STRIDE, r.REP_DIM
            ),
            pixel_in_indices=[in_features.index(f) for f in r.PIXEL_IN_FEATURES],
            mask_assembly=r.MASK_ASSEMBLY,
            train_expand=r.CROP_EXPAND_TRAIN if r.TRAIN_EXPAND else 1.0,
            test_expand=r.CROP_EXPAND_TEST if r.TEST_EXPAND else 1.0,
            ohem=r.OHEM,
            ohem_neg_pos_ratio=r.OHEM_NEG_POS_RATIO,
            max_masks_per_image=r.MAX_MASKS_PER_IMAGE,
            mask_loss_weight=r.MASK_LOSS_WEIGHT,
            mask_threshold=r.MASK_THRESHOLD,
            box_refinement=r.BOX_REFINEMENT,
            mbrm=MBRM(r.MBRM_S, r.MBRM_GAMMA, r.MBRM_SHARED_KERNEL) if r.BOX_REFINEMENT == "mbrm" else None,
            mbrm_stage=r.MBRM_STAGE,
        )
        return ret

    def train(self, mode: bool = True):
        """In the MBRM stage only MBRM trains: every other module stays in eval mode (frozen statistics)."""
        super().train(mode)
        if mode and self.mbrm_stage:
            for m in self.children():
                if m is not self.mbrm:
                    m.eval()
        return self

    # ---- the masks -------------------------------------------------------------------------------------------
    def object_kernels(self, reps: torch.Tensor) -> torch.Tensor:
        """(K, 2, d) foreground-then-background kernels for ``correlation_crop`` from the head's (K, rep_size)."""
        if self.mask_assembly == "lc":  # YOLACT: tanh coefficients, foreground only
            c = torch.tanh(reps)
            return torch.stack([c, torch.zeros_like(c)], dim=1)
        bg, fg = reps.view(reps.shape[0], 2, reps.shape[1] // 2).unbind(1)  # row 0 background, row 1 foreground
        return torch.stack([fg, bg], dim=1)

    def mask_logits(self, pixel, reps, batch_idx, crop_boxes) -> torch.Tensor:
        """(K, h, w) z of Eq. 1 at the pixel stream's stride, -inf outside each crop box (input pixels). With ``lc``
        the pixel representations are YOLACT's prototypes, through its ReLU."""
        stride = self.pixel_stream.out_stride
        if self.mask_assembly == "lc":
            pixel = torch.relu(pixel)
        return correlation_crop(pixel, self.object_kernels(reps).to(pixel.dtype), batch_idx, crop_boxes / stride)

    def crop_logits(self, pixel, reps, batch_idx, crop_boxes) -> torch.Tensor:
        """z over the crop boxes widened by one pixel-stream pixel, so that sampling it anywhere inside a crop box
        at a finer resolution interpolates between values of the crop (not -inf)."""
        s = self.pixel_stream.out_stride
        return self.mask_logits(pixel, reps, batch_idx, crop_boxes + crop_boxes.new_tensor([-s, -s, s, s]))

    def crop_regions(self, z: torch.Tensor, crop_boxes: torch.Tensor, input_size, out_size):
        """M' of Sec. 3.3/3.4, object by object, on its crop region only: sigmoid(z) up-sampled (bilinear, pixel
        centres aligned) from the pixel stream to ``out_size`` (the input, or the output resolution when it differs),
        then cropped with the crop box at that resolution (a pixel counts when its centre maps inside the box).
        Yields (k, y0, x0, probs) with probs (rh, rw) the region starting at (y0, x0); outside it M' is 0."""
        s = self.pixel_stream.out_stride
        h4, w4 = z.shape[-2:]
        sy, sx = out_size[0] / input_size[0], out_size[1] / input_size[1]
        probs = torch.sigmoid(z.float())
        crop_list = crop_boxes.tolist()  # one host sync, not one per object
        for k in range(z.shape[0]):
            x1, y1, x2, y2 = crop_list[k]
            x0, y0 = max(int(x1 * sx), 0), max(int(y1 * sy), 0)
            xe, ye = min(int(x2 * sx) + 1, out_size[1]), min(int(y2 * sy) + 1, out_size[0])
            if xe <= x0 or ye <= y0:
                continue
            xs = (torch.arange(x0, xe, device=z.device, dtype=torch.float32) + 0.5) / sx  # input coordinates
            ys = (torch.arange(y0, ye, device=z.device, dtype=torch.float32) + 0.5) / sy
            grid = torch.stack(
                torch.broadcast_tensors(xs[None, :] / (s * w4) * 2 - 1, ys[:, None] / (s * h4) * 2 - 1), dim=-1
            )
            region = F.grid_sample(
                probs[k][None, None], grid[None], mode="bilinear", padding_mode="border", align_corners=False
            )[0, 0]
            inside = ((ys >= y1) & (ys <= y2))[:, None] & ((xs >= x1) & (xs <= x2))[None, :]
            yield k, y0, x0, region * inside

    def profiles(self, z, crop_boxes, image_size):
        """The max-projections of M' at the input resolution (Eq. 4-5): (K, w) over each column, (K, h) each row."""
        K = z.shape[0]
        prof_x = z.new_zeros((K, image_size[1]), dtype=torch.float32)
        prof_y = z.new_zeros((K, image_size[0]), dtype=torch.float32)
        for k, y0, x0, region in self.crop_regions(z, crop_boxes, image_size, image_size):
            prof_x[k, x0 : x0 + region.shape[1]] = region.max(dim=0).values
            prof_y[k, y0 : y0 + region.shape[0]] = region.max(dim=1).values
        return prof_x, prof_y

    # ---- training ----------------------------------------------------------------------------------------------
    def forward_training(self, images, features, predictions, gt_instances):
        if not self.mask_on:
            return super().forward_training(images, features, predictions, gt_instances)
        if self.mbrm is not None and not self.mbrm_stage:
            raise ValueError(
                "MODEL.RDSNET.BOX_REFINEMENT mbrm outside the MBRM stage: MBRM is trained alone after the rest has "
                "converged (Sec. 3.4). Train with BOX_REFINEMENT none (or direct), then MBRM_STAGE True"
            )
        logits, deltas, rep_features = predictions
        pred_logits, pred_deltas, pred_reps = self._transpose_dense_predictions(
            [logits, deltas, self.head.predict_reps(rep_features)], [self.num_classes, 4, self.head.rep_size]
        )
        anchors = self.anchor_generator(features)
        gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances)
        pixel = self.pixel_stream([features[i] for i in self.pixel_in_indices])
        objects = self.sample_positives(anchors, gt_labels, gt_instances)
        if self.mbrm_stage:
            return {
                "loss_refine": self.refine_loss(images, pixel, anchors, pred_deltas, pred_reps, objects, gt_instances)
            }
        losses = self.losses(anchors, pred_logits, gt_labels, pred_deltas, gt_boxes)
        losses["loss_mask"] = self.mask_loss_weight * self.mask_loss(images, pixel, pred_reps, objects, gt_instances)
        return losses

    @torch.no_grad()
    def sample_positives(self, anchors, gt_labels, gt_instances):
        """Per image, (anchor indices, matched ground-truth indices) of at most ``max_masks_per_image`` positive
        anchors, sampled at random (Sec. 3.4: only positive anchors feed the mask loss)."""
        all_anchors = Boxes.cat(anchors)
        out = []
        for labels, gt in zip(gt_labels, gt_instances):
            pos = ((labels >= 0) & (labels != self.num_classes)).nonzero().squeeze(1)
            if len(gt) == 0 or len(pos) == 0:
                out.append((pos[:0], pos[:0]))
                continue
            if len(pos) > self.max_masks_per_image:
                pos = pos[torch.randperm(len(pos), device=pos.device)[: self.max_masks_per_image]]
            matched, _ = self.anchor_matcher(pairwise_iou(gt.gt_boxes, all_anchors))
            out.append((pos, matched[pos]))
        return out

    def mask_loss(self, images, pixel, pred_reps, objects, gt_instances):
        s = self.pixel_stream.out_stride
        padded = images.tensor.shape[-2:]
        reps, boxes, targets, batch_idx = [], [], [], []
        for i, ((anchor_idx, gt_idx), gt) in enumerate(zip(objects, gt_instances)):
            if len(anchor_idx) == 0:
                continue
            reps.append(cat([x[i] for x in pred_reps])[anchor_idx])
            boxes.append(expand_boxes(gt.gt_boxes.tensor[gt_idx], self.train_expand, gt.image_size))
            targets.append(_mask_targets(gt, gt_idx, padded, s, pixel.device))
            batch_idx.append(torch.full((len(anchor_idx),), i, dtype=torch.int64, device=pixel.device))
        if not reps:
            return pixel.sum() * 0.0 + sum(x.sum() for x in pred_reps) * 0.0
        z = self.mask_logits(pixel, cat(reps), cat(batch_idx), cat(boxes))
        valid = z != float("-inf")
        return rdsnet_mask_loss(z, cat(targets), valid, self.ohem, self.ohem_neg_pos_ratio)

    def refine_loss(self, images, pixel, anchors, pred_deltas, pred_reps, objects, gt_instances):
        """L_refine (Sec. 3.3) on the positive anchors' regressed boxes and their masks made as at inference."""
        all_anchors = Boxes.cat(anchors).tensor
        losses, count = [], 0
        for i, ((anchor_idx, gt_idx), gt, size) in enumerate(zip(objects, gt_instances, images.image_sizes)):
            if len(anchor_idx) == 0:
                continue
            with torch.no_grad():
                deltas = cat([x[i] for x in pred_deltas])[anchor_idx]
                boxes = self.box2box_transform.apply_deltas(deltas, all_anchors[anchor_idx])
                crop = expand_boxes(boxes, self.test_expand, size)
                reps = cat([x[i] for x in pred_reps])[anchor_idx]
                z = self.crop_logits(pixel[i : i + 1], reps, torch.zeros_like(anchor_idx), crop)
                prof_x, prof_y = self.profiles(z, crop, size)
            loss = self.mbrm.boundary_loss_from_profiles(prof_x, prof_y, boxes, gt.gt_boxes.tensor[gt_idx])
            losses.append(loss * len(anchor_idx))
            count += len(anchor_idx)
        self.untrained_mbrm = ""  # MBRM is being trained
        if not losses:
            return sum(p.sum() for p in self.mbrm.parameters()) * 0.0
        return sum(losses) / count

    # ---- inference ---------------------------------------------------------------------------------------------
    def forward(self, batched_inputs):
        if self.training or not self.mask_on:
            return super().forward(batched_inputs)
        images = self.preprocess_image(batched_inputs)
        feats = self.backbone(images.tensor)
        features = [feats[f] for f in self.head_in_features]
        results = self.forward_inference(images, features, self.head(features))
        out = []
        for r, x, size in zip(results, batched_inputs, images.image_sizes):
            height, width = x.get("height", size[0]), x.get("width", size[1])
            out.append({"instances": self.output_masks(detector_postprocess(r, height, width), size)})
        return out

    def forward_inference(self, images, features, predictions):
        if not self.mask_on:
            return super().forward_inference(images, features, predictions)
        logits, deltas, rep_features = predictions
        pred_logits, pred_deltas = self._transpose_dense_predictions([logits, deltas], [self.num_classes, 4])
        anchors = self.anchor_generator(features)
        pixel = self.pixel_stream([features[i] for i in self.pixel_in_indices])
        results = []
        for i, size in enumerate(images.image_sizes):
            inst = self.detections_with_reps(
                anchors,
                [x[i].sigmoid() for x in pred_logits],
                [x[i] for x in pred_deltas],
                lambda level, idx, i=i: self.head.reps_at(rep_features[level][i], idx),
                size,
            )
            results.append(self.predict_masks(inst, pixel[i : i + 1], size))
        return results

    def detections_with_reps(self, anchors: List[Boxes], scores, deltas, reps_fn, image_size) -> Instances:
        """RetinaNet's inference (score threshold, per-level top-k, class-wise NMS, detections per image), then each
        kept detection's representation (``pred_reps``): ``reps_fn(level, anchor indices)`` of its own anchor."""
        per_level = []
        for level, (anchors_l, scores_l, deltas_l) in enumerate(zip(anchors, scores, deltas)):
            keep = scores_l > self.test_score_thresh
            s = scores_l[keep]
            idx = keep.nonzero()
            s, top = s.topk(min(len(s), self.test_topk_candidates))
            anchor_idx, classes = idx[top].unbind(dim=1)
            boxes = self.box2box_transform.apply_deltas(deltas_l[anchor_idx], anchors_l.tensor[anchor_idx])
            inst = Instances(image_size, pred_boxes=Boxes(boxes), scores=s, pred_classes=classes)
            inst.anchor_idx, inst.level = anchor_idx, torch.full_like(anchor_idx, level)
            per_level.append(inst)
        inst = Instances.cat(per_level)
        keep = batched_nms(inst.pred_boxes.tensor, inst.scores, inst.pred_classes, self.test_nms_thresh)
        inst = inst[keep[: self.max_detections_per_image]]
        reps = None
        for level in inst.level.unique().tolist():
            sel = inst.level == level
            r = reps_fn(level, inst.anchor_idx[sel])
            if reps is None:
                reps = r.new_zeros((len(inst), r.shape[1]))
            reps[sel] = r
        inst.pred_reps = reps if reps is not None else boxes.new_zeros((0, self.head.rep_size))
        inst.remove("anchor_idx")
        inst.remove("level")
        return inst

    def predict_masks(self, inst: Instances, pixel: torch.Tensor, image_size) -> Instances:
        """The detections' correlation maps (``pred_mask_logits``, at the pixel stream's stride, over their crop boxes
        ``pred_crop_boxes``: the detections x IE, clipped) and the Table 4 box refinement at the input resolution."""
        boxes = inst.pred_boxes.tensor
        crop = expand_boxes(boxes, self.test_expand, image_size)
        batch_idx = torch.zeros(len(inst), dtype=torch.int64, device=boxes.device)
        z = self.crop_logits(pixel, inst.pred_reps, batch_idx, crop)
        inst.pred_mask_logits, inst.pred_crop_boxes = z, crop
        if self.box_refinement == "mbrm":
            if self.untrained_mbrm:
                raise ValueError(UNTRAINED_MBRM.format(keys=self.untrained_mbrm))
            profiles = self.profiles(z, crop, image_size)
            inst.pred_boxes = Boxes(self.mbrm.refine(*profiles, boxes, min_peak=self.mask_threshold))
        elif self.box_refinement == "direct":
            prof_x, prof_y = self.profiles(z, crop, image_size)
            t = self.mask_threshold
            inst.pred_boxes = Boxes(profile_enclosing_boxes(prof_x >= t, prof_y >= t, boxes))
        return inst

    def output_masks(self, inst: Instances, input_size) -> Instances:
        """``pred_masks`` (R, H, W) bool at the output size: each detection's M' sampled at the output pixels of its
        crop box, binarised at ``MASK_THRESHOLD`` (Sec. 3.4); False elsewhere."""
        out_h, out_w = inst.image_size
        masks = torch.zeros(len(inst), out_h, out_w, dtype=torch.bool, device=inst.pred_mask_logits.device)
        for k, y0, x0, region in self.crop_regions(
            inst.pred_mask_logits, inst.pred_crop_boxes, input_size, (out_h, out_w)
        ):
            masks[k, y0 : y0 + region.shape[0], x0 : x0 + region.shape[1]] = region >= self.mask_threshold
        inst.pred_masks = masks
        for field in ("pred_mask_logits", "pred_crop_boxes", "pred_reps"):
            inst.remove(field)
        return inst
