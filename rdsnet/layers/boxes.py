"""Box helpers of RDSNet's cropping module (Sec. 3.2, 4.1): expanding boxes about their centres, and the *direct*
box of Table 4 (the minimum enclosing rectangle of a binary mask). Torch only."""

import torch


def expand_boxes(boxes: torch.Tensor, ratio: float, image_size=None) -> torch.Tensor:
    """Scale the height and the width of (K, 4) XYXY ``boxes`` by ``ratio`` with the centre kept (Sec. 4.1: 1.5 on the
    ground-truth boxes in training, 1.2 on the detections at inference); clipped to ``image_size`` (h, w) if given."""
    if ratio <= 0:
        raise ValueError(f"expand_boxes: the ratio must be > 0, got {ratio}")
    c = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) * (ratio / 2)
    out = torch.cat([c - half, c + half], dim=1)
    if image_size is not None:
        h, w = image_size
        out[:, 0::2] = out[:, 0::2].clamp(0, w)
        out[:, 1::2] = out[:, 1::2].clamp(0, h)
    return out


def mask_enclosing_boxes(masks: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """Table 4's *direct*: the minimum enclosing rectangle (XYXY, pixel edges) of each (K, h, w) binary mask; an empty
    mask keeps its ``fallback`` box (K, 4)."""
    return profile_enclosing_boxes(masks.any(dim=1), masks.any(dim=2), fallback)


def profile_enclosing_boxes(cols: torch.Tensor, rows: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """``mask_enclosing_boxes`` from the masks' projections: ``cols`` (K, w) and ``rows`` (K, h), True where the
    column / row holds a mask pixel."""
    if cols.shape[0] == 0:
        return fallback.clone()
    h, w = rows.shape[1], cols.shape[1]
    ar_h = torch.arange(h, device=cols.device)
    ar_w = torch.arange(w, device=cols.device)
    x1 = torch.where(cols, ar_w, w).min(dim=1).values
    x2 = torch.where(cols, ar_w, -1).max(dim=1).values + 1
    y1 = torch.where(rows, ar_h, h).min(dim=1).values
    y2 = torch.where(rows, ar_h, -1).max(dim=1).values + 1
    out = torch.stack([x1, y1, x2, y2], dim=1).to(fallback.dtype)
    empty = ~cols.any(dim=1)
    out[empty] = fallback[empty]
    return out
