"""CASNet's post-processing (Sec. III-C, "common attribute support"), torch only: from the three heads' outputs at
one image's output stride to non-overlapping instances.

1. semantic labels: argmax of the semantic head;
2. seeds, class by class: the positions whose box (centre-)probability for class c exceeds ``seed_threshold`` (0.5,
   the paper's example), at most ``seed_topk`` of them (the most probable; ours, a bound on the cost), each with the box
   its own attributes give, NMS among them (``nms_threshold``; the paper gives none);
3. every pixel of a thing class votes, through ``iou_vote`` (our op), for the seed of its class whose box has the
   highest IoU with its own box, the geometric centre deciding near-ties; a pixel of a class without seeds, or whose
   best IoU is not above ``min_iou``, joins no instance;
4. seeds without support are dropped; each remaining seed is an instance: its pixels (at most one instance per
   pixel: no overlap, no hole between instances), its seed box, its class (``upsample_instance_ids`` carries the
   instances to the output resolution, ``instance_boxes`` gives their final boxes).

Scores (the paper is silent; ``score_mode``): ``seed_x_semantic`` (default) = the seed's centre probability x the mean
semantic probability of the instance's class over its pixels; ``seed`` = the seed's probability alone.
"""

from typing import Dict, Sequence

import torch
from torchvision.ops import batched_nms

from .iou_vote import iou_vote

SCORE_MODES = ("seed_x_semantic", "seed")


def pixel_boxes(distances: torch.Tensor) -> torch.Tensor:
    """(h, w, 4) XYXY boxes, in output pixels, that each pixel's attributes (l, t, r, b) (4, h, w) describe around its
    centre (j + 0.5, i + 0.5), the convention of ``iou_vote``."""
    h, w = distances.shape[-2:]
    cy = torch.arange(h, device=distances.device, dtype=distances.dtype)[:, None] + 0.5
    cx = torch.arange(w, device=distances.device, dtype=distances.dtype)[None, :] + 0.5
    left, top, right, bottom = distances
    return torch.stack([cx - left, cy - top, cx + right, cy + bottom], dim=-1)


def casnet_postprocess(
    sem_logits: torch.Tensor,
    distances: torch.Tensor,
    centre_logits: torch.Tensor,
    thing_classes: Sequence[int],
    seed_threshold: float = 0.5,
    nms_threshold: float = 0.5,
    seed_topk: int = 5000,
    min_iou: float = 0.0,
    tie_eps: float = 1e-3,
    score_mode: str = "seed_x_semantic",
) -> Dict[str, torch.Tensor]:
    """
    Args:
        sem_logits: (C, h, w) semantic head logits.
        distances: (4, h, w) attribute head outputs (l, t, r, b) in output pixels (the stride-divided distances).
        centre_logits: (K, h, w) box-probability head logits, one channel per thing class, in ``thing_classes`` order.
        thing_classes: the semantic label of each of the K thing classes.
    Returns:
        dict with ``sem_labels`` (h, w) int64, ``instance_ids`` (h, w) int64 (index into the instances, -1 for none),
        ``boxes`` (N, 4) XYXY output pixels, ``classes`` (N,) thing index in [0, K), ``scores`` (N,).
    """
    if score_mode not in SCORE_MODES:
        raise ValueError(f"MODEL.CASNET.SCORE_MODE must be one of {SCORE_MODES}, got {score_mode!r}")
    K = centre_logits.shape[0]
    if K != len(thing_classes):
        raise ValueError(f"casnet_postprocess: {K} centre channels for {len(thing_classes)} thing classes")
    sem_probs = sem_logits.softmax(dim=0)
    sem_labels = sem_logits.argmax(dim=0)
    dist = distances.float()
    boxes_map = pixel_boxes(dist)  # (h, w, 4)
    centre = torch.sigmoid(centre_logits.float())
    seeds_k, seeds_y, seeds_x = (centre > seed_threshold).nonzero(as_tuple=True)
    seed_scores = centre[seeds_k, seeds_y, seeds_x]
    if len(seed_scores) > seed_topk:  # the most probable seeds only
        top = seed_scores.topk(seed_topk).indices
        seeds_k, seeds_y, seeds_x, seed_scores = seeds_k[top], seeds_y[top], seeds_x[top], seed_scores[top]
    seed_boxes = boxes_map[seeds_y, seeds_x]
    keep = batched_nms(seed_boxes, seed_scores, seeds_k, nms_threshold)
    seed_boxes, seed_scores, seeds_k = seed_boxes[keep], seed_scores[keep], seeds_k[keep]
    # the vote runs on semantic labels: thing index k for the pixels of thing class thing_classes[k], -1 otherwise
    thing_of_label = torch.full((sem_logits.shape[0],), -1, dtype=torch.int64, device=sem_logits.device)
    thing_of_label[torch.as_tensor(list(thing_classes), dtype=torch.int64, device=sem_logits.device)] = torch.arange(
        K, device=sem_logits.device
    )
    thing_labels = thing_of_label[sem_labels]
    ids, support = iou_vote(thing_labels, dist, seed_boxes, seeds_k, min_iou, tie_eps)
    kept = (support > 0).nonzero().squeeze(1)
    remap = torch.full((len(support) + 1,), -1, dtype=torch.int64, device=ids.device)
    remap[kept] = torch.arange(len(kept), device=ids.device)
    instance_ids = remap[ids]  # -1 stays -1 (index -1 reads the last slot, which is -1)
    classes = seeds_k[kept]
    scores = seed_scores[kept]
    if score_mode == "seed_x_semantic" and len(kept):
        flat = instance_ids.flatten()
        on = flat >= 0
        labels = torch.as_tensor(list(thing_classes), device=sem_logits.device)[classes]  # semantic label per instance
        probs = sem_probs.flatten(1)[:, on]  # (C, P)
        per_pixel = probs[labels[flat[on]], torch.arange(int(on.sum()), device=probs.device)]
        total = torch.zeros(len(kept), device=probs.device).index_add_(0, flat[on], per_pixel)
        count = torch.bincount(flat[on], minlength=len(kept)).clamp(min=1)
        scores = scores * (total / count)
    return {
        "sem_labels": sem_labels,
        "instance_ids": instance_ids,
        "boxes": seed_boxes[kept],
        "classes": classes,
        "scores": scores,
    }


def upsample_instance_ids(
    ids: torch.Tensor,
    instance_classes: torch.Tensor,
    pixel_classes: torch.Tensor,
    image_size: Sequence[int],
    stride: int,
) -> torch.Tensor:
    """(H, W) int64 instance ids at the output resolution (-1: none) from the (h, w) ids at the output stride (the
    paper is silent on the up-sampling; ours). Which pixels are things, and of which class, is the output-resolution
    semantic map's (``pixel_classes``, the one ``sem_seg`` and the panoptic stuff come from); each such pixel joins,
    among the instances of its class, the one whose indicator map, read bilinearly between the output-stride pixel
    centres ((j + 0.5) x stride input pixels), is highest there (ties: the lower id), if any is above 0. So instance
    masks follow the semantic boundaries at full resolution, touching instances split where their maps cross, and no
    pixel is in two instances.

    Args:
        ids: (h, w) int64, the instance of each output-stride pixel (-1: none).
        instance_classes: (n,) each instance's class, in ``pixel_classes``' label space.
        pixel_classes: (H, W) int64 class of each output pixel.
        image_size: the input's (H_in, W_in), which the stride grid covers; (H, W) may differ (the output size).
    """
    h, w = ids.shape
    H, W = pixel_classes.shape
    dev = ids.device

    def axis(n_out, n_in, n_grid):
        """Each output pixel's position on the stride grid (cell centres at integers; clamped at the border, as
        bilinear sampling with border padding reads it): its two neighbouring cells and the weight of the second."""
        pos = (torch.arange(n_out, device=dev, dtype=torch.float64) + 0.5) * (n_in / n_out) / stride - 0.5
        pos = pos.clamp(0, n_grid - 1)
        lo = pos.floor().long()
        return lo, (lo + 1).clamp(max=n_grid - 1), (pos - lo).float()

    y0, y1, fy = axis(H, image_size[0], h)
    x0, x1, fx = axis(W, image_size[1], w)
    # an instance's indicator is 0 at a pixel unless it owns one of the pixel's four neighbouring cells: only those
    # four are candidates, each valued by the summed bilinear weight of the neighbours it owns (one pass, whatever
    # the number or the spread of the instances)
    rows0, rows1 = ids[y0], ids[y1]
    cand = [rows0[:, x0], rows0[:, x1], rows1[:, x0], rows1[:, x1]]
    wy, wx = fy[:, None], fx[None, :]
    weight = [(1 - wy) * (1 - wx), (1 - wy) * wx, wy * (1 - wx), wy * wx]
    cls = torch.cat([instance_classes.to(dev), torch.tensor([-2], device=dev)])  # id -1 reads the last: no class
    out = torch.full((H, W), -1, dtype=torch.int64, device=dev)
    best = torch.zeros((H, W), dtype=torch.float32, device=dev)
    for k in cand:
        value = sum(torch.where(other == k, wt, 0.0) for other, wt in zip(cand, weight))
        higher = (value > best + 1e-6) | ((value >= best - 1e-6) & (k < out))  # equal up to rounding: the lower id
        take = (k >= 0) & (value > 0) & (cls[k] == pixel_classes) & higher
        best = torch.where(take, value, best)
        out = torch.where(take, k, out)
    return out


def instance_boxes(ids: torch.Tensor, n: int, fallback: torch.Tensor) -> torch.Tensor:
    """(n, 4) XYXY: the tight box of each instance's pixels in the (H, W) id map (-1: none), in pixels (x2, y2
    exclusive); ``fallback``'s row for an instance without pixels. The paper calibrates each instance "by the final
    actual pixel range" (Sec. I). One pass over the map, however many instances."""
    H, W = ids.shape
    ys, xs = (ids >= 0).nonzero(as_tuple=True)
    k = ids[ys, xs]

    def reduce(values, init, how):
        return torch.full((n,), init, dtype=torch.int64, device=ids.device).scatter_reduce(0, k, values, how)

    x1, y1 = reduce(xs, W, "amin"), reduce(ys, H, "amin")
    boxes = torch.stack([x1, y1, reduce(xs + 1, 0, "amax"), reduce(ys + 1, 0, "amax")], dim=1)
    empty = torch.bincount(k, minlength=n) == 0
    return torch.where(empty[:, None], fallback, boxes.to(fallback.dtype))
