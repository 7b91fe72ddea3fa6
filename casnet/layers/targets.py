"""CASNet's training targets (Sec. III-A/B), torch only, at the heads' output stride s: the semantic labels, the
common attributes (Eq. 2's targets) and the box-centre probabilities (Eq. 3's targets).

Output pixel (i, j) stands for the input point ((j + 0.5) s, (i + 0.5) s) (pixel centres aligned); it belongs to an
instance when that instance's mask covers the input pixel there. Where masks overlap (COCO-format data), the pixel goes
to the smallest instance (as FCOS assigns a location to its smallest box), for every target alike.
"""

from typing import Tuple

import torch


def _centres(size: int, stride: int, device) -> torch.Tensor:
    return (torch.arange(size, device=device, dtype=torch.float32) + 0.5) * stride


def _centre_pixels(size: int, stride: int, device) -> torch.Tensor:
    """The input pixel under each output pixel's centre, along one axis."""
    return _centres(size, stride, device).long()


def labels_at_stride(labels: torch.Tensor, out_size: Tuple[int, int], stride: int, fill: int) -> torch.Tensor:
    """(h, w) int64: an input-resolution label map (H, W) read at the output pixels' centres (the rule of
    ``pixel_owners``); ``fill`` where the centre is outside the map (the padding)."""
    h, w = out_size
    ys, xs = _centre_pixels(h, stride, labels.device), _centre_pixels(w, stride, labels.device)
    out = torch.full((h, w), fill, dtype=torch.int64, device=labels.device)
    ys, xs = ys[ys < labels.shape[0]], xs[xs < labels.shape[1]]
    out[: len(ys), : len(xs)] = labels[ys][:, xs].long()
    return out


def pixel_owners(masks: torch.Tensor, boxes: torch.Tensor, out_size: Tuple[int, int], stride: int) -> torch.Tensor:
    """(h, w) int64: the index of the instance each output pixel belongs to (-1: none).

    Args:
        masks: (G, H, W) bool instance masks at the input resolution (H, W >= h s, w s is not required: points outside
            the masks belong to nobody).
        boxes: (G, 4) their boxes, XYXY input pixels (only their areas are used, to break overlaps).
    """
    h, w = out_size
    G = masks.shape[0]
    owners = torch.full((h, w), -1, dtype=torch.int64, device=masks.device)
    if G == 0:
        return owners
    ys, xs = _centre_pixels(h, stride, masks.device), _centre_pixels(w, stride, masks.device)
    inside_y, inside_x = ys < masks.shape[1], xs < masks.shape[2]
    sampled = torch.zeros((G, h, w), dtype=torch.bool, device=masks.device)
    sub = masks[:, ys[inside_y]][:, :, xs[inside_x]]
    sampled[:, : int(inside_y.sum()), : int(inside_x.sum())] = sub
    area = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    big = torch.finfo(area.dtype).max
    cost = torch.where(sampled, area[:, None, None], torch.full_like(area[:, None, None], big).expand(G, h, w))
    best = cost.argmin(dim=0)
    return torch.where(sampled.any(dim=0), best, owners)


def attribute_targets(owners: torch.Tensor, boxes: torch.Tensor, stride: int):
    """Eq. 2's targets: the distances (l, t, r, b) from each output pixel's centre to the borders of its instance's box,
    divided by the stride; (4, h, w) and the (h, w) bool mask of the thing pixels (the only ones with a target)."""
    h, w = owners.shape
    valid = owners >= 0
    if boxes.shape[0] == 0:  # an image without instances: no thing pixel
        return torch.zeros((4, h, w), dtype=torch.float32, device=owners.device), valid
    cy = _centres(h, stride, owners.device)[:, None].expand(h, w)
    cx = _centres(w, stride, owners.device)[None, :].expand(h, w)
    b = boxes.to(torch.float32)[owners.clamp(min=0)]  # (h, w, 4)
    dist = torch.stack([cx - b[..., 0], cy - b[..., 1], b[..., 2] - cx, b[..., 3] - cy]) / stride
    return torch.where(valid[None], dist, torch.zeros_like(dist)), valid


def centre_targets(
    boxes, classes, num_classes: int, out_size: Tuple[int, int], stride: int, radius: float = 1.5, owners=None
):
    """Eq. 3's targets (FCOS's centre sampling): 1 at the output pixels of class ``c``'s channel whose centre lies
    within ``radius`` x stride of a class-``c`` box's centre, that region clipped to the box; 0 elsewhere. (C, h, w).

    With ``owners`` (``pixel_owners``), a positive must also be one of the instance's own pixels: at inference a seed's
    box is read from the attributes at the seed, which are trained on the instance's pixels only (a ring's centre is
    its hole; an occluder may cover the centre). An instance with no own pixel in the region gets its own pixel
    nearest to the box centre instead; one with no own pixel at all gets none."""
    h, w = out_size
    out = torch.zeros((num_classes, h, w), dtype=torch.float32, device=boxes.device)
    if boxes.shape[0] == 0:
        return out
    cy = _centres(h, stride, boxes.device)
    cx = _centres(w, stride, boxes.device)
    b = boxes.to(torch.float32)
    mx, my = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    r = radius * stride
    x1, x2 = torch.maximum(mx - r, b[:, 0]), torch.minimum(mx + r, b[:, 2])
    y1, y2 = torch.maximum(my - r, b[:, 1]), torch.minimum(my + r, b[:, 3])
    inside = ((cy[None, :] >= y1[:, None]) & (cy[None, :] <= y2[:, None]))[:, :, None] & (
        (cx[None, :] >= x1[:, None]) & (cx[None, :] <= x2[:, None])
    )[:, None, :]  # (G, h, w)
    if owners is not None:
        own = owners[None] == torch.arange(boxes.shape[0], device=owners.device)[:, None, None]  # (G, h, w)
        inside = inside & own
        d2 = (cy[None, :, None] - my[:, None, None]) ** 2 + (cx[None, None, :] - mx[:, None, None]) ** 2
        for g in (~inside.flatten(1).any(dim=1) & own.flatten(1).any(dim=1)).nonzero().flatten().tolist():
            nearest = torch.where(own[g], d2[g], torch.full_like(d2[g], float("inf"))).argmin()
            inside[g].view(-1)[nearest] = True
    for g in range(boxes.shape[0]):
        out[int(classes[g])] = torch.maximum(out[int(classes[g])], inside[g].float())
    return out


def semantic_from_instances(owners: torch.Tensor, classes: torch.Tensor, background: int) -> torch.Tensor:
    """Instance mode on a dataset without ``sem_seg`` (Sec. III-A): the semantic labels are the thing classes of the
    instance masks over ``background`` (the label after the thing classes). (h, w) int64."""
    if classes.numel() == 0:
        return torch.full_like(owners, background)
    return torch.where(owners >= 0, classes.to(torch.int64)[owners.clamp(min=0)], torch.full_like(owners, background))
