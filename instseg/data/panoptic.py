"""COCO panoptic PNG encoding (``id = R + 256 G + 256² B``), shared by the synthetic writer, the panoptic mapper and
the PQ evaluation."""

import numpy as np


def id2rgb(ids: np.ndarray) -> np.ndarray:
    """(H, W) segment ids → (H, W, 3) uint8 RGB, COCO panoptic encoding."""
    ids = np.asarray(ids, dtype=np.int64)
    rgb = np.zeros(ids.shape + (3,), dtype=np.uint8)
    rgb[..., 0] = ids % 256
    rgb[..., 1] = (ids // 256) % 256
    rgb[..., 2] = (ids // 256 // 256) % 256
    return rgb


def rgb2id(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB → (H, W) int64 segment ids (the inverse of ``id2rgb``)."""
    rgb = np.asarray(rgb).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
