"""Contour-keypoint targets from the ground-truth masks of an (augmented) image.

Targets are made after data augmentation, from the masks the model is trained on, so flips, resizes and crops need
no keypoint flip map: ``maskpoint.modeling.ContourPointDatasetMapper`` calls :func:`contour_keypoints` in the
data-loader workers; code that feeds the model its own batches calls it too (``instances.gt_keypoints``).
"""

from typing import Optional

import numpy as np
import torch
from detectron2.structures import BitMasks, Keypoints, PolygonMasks, polygons_to_bitmask

from ..layers import sample_contour_points


def _mask_crops(gt_masks, image_size):
    """(mask crop as a numpy bool array, x0, y0) of every instance, cropped to its mask's extent (an
    empty mask gives None)."""
    height, width = image_size
    boxes = gt_masks.get_bounding_boxes().tensor.cpu()
    for i, box in enumerate(boxes):
        x0, y0 = max(int(box[0].floor()), 0), max(int(box[1].floor()), 0)
        x1, y1 = min(int(box[2].ceil()), width), min(int(box[3].ceil()), height)
        if x1 <= x0 or y1 <= y0:
            yield None, 0, 0
            continue
        if isinstance(gt_masks, BitMasks):
            crop = gt_masks.tensor[i, y0:y1, x0:x1].cpu().numpy()
        elif isinstance(gt_masks, PolygonMasks):
            polys = [p.reshape(-1, 2) - np.array([x0, y0], dtype=p.dtype) for p in gt_masks.polygons[i]]
            crop = polygons_to_bitmask([p.reshape(-1) for p in polys], y1 - y0, x1 - x0)
        else:
            raise TypeError(f"Mask Point R-CNN needs BitMasks or PolygonMasks ground truth, got {type(gt_masks)}")
        yield (crop if crop.any() else None), x0, y0


def contour_keypoints(
    gt_masks,
    image_size,
    num_points: int,
    sampling: str = "uniform",
    with_center: bool = True,
    center: str = "mass",
    rng: Optional[np.random.Generator] = None,
) -> Keypoints:
    """``Keypoints`` (N, k + with_center, 3) of (x, y, visibility) for the N masks of one image.
    Every sampled point is visible (2); an instance whose mask is empty (e.g. cropped away) gets
    invisible points (0), which detectron2's keypoint loss ignores."""
    k = num_points + int(with_center)
    out = np.zeros((len(gt_masks), k, 3), dtype=np.float32)
    for i, (crop, x0, y0) in enumerate(_mask_crops(gt_masks, image_size)):
        if crop is None:
            continue
        pts = sample_contour_points(
            crop, num_points, sampling=sampling, with_center=with_center, center=center, rng=rng
        )
        out[i, :, 0] = pts[:, 0] + x0
        out[i, :, 1] = pts[:, 1] + y0
        out[i, :, 2] = 2
    device = gt_masks.device if hasattr(gt_masks, "device") else torch.device("cpu")
    return Keypoints(torch.as_tensor(out, device=device))
