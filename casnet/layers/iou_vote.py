"""IoU-vote clustering, CASNet Sec. III-C ("Post processing", the "common attribute support").

CASNet turns its three dense predictions into instances without any overlap: the semantic head gives
each pixel a class, the common-attribute head gives each pixel the four distances (l, t, r, b) from the
pixel to the borders of the box of the instance it belongs to, and the box-probability head, after a
threshold and NMS, gives the seed boxes of each class. Every pixel then votes, by IoU, for one seed of its
class. Our precise definition (it fixes what the paper leaves open):

* pixel (i, j) of class ``c`` forms the box ``B = (cx - l, cy - t, cx + r, cy + b)`` around its centre
  ``(cx, cy) = (j + 0.5, i + 0.5)`` (all arithmetic in the dtype of ``distances``);
* ``IoU(A, B) = |A ∩ B| / |A ∪ B|`` with ``|A ∪ B| = (|A| + |B|) - |A ∩ B|``, a side with negative length
  counting as 0, and ``IoU = 0`` when the union is 0 (two zero-area boxes);
* among the seeds of class ``c``, let ``m`` be the best IoU with ``B``; the seeds with
  ``IoU >= m - tie_eps`` are the candidates ("once two IoU ratios are approximately the same, the centre
  gives the direction"): the candidate whose box centre is nearest to ``B``'s centre wins (squared
  Euclidean distance), and on equal distance the lower seed index;
* the pixel gets ``-1`` when ``c`` has no seed, when ``m <= min_iou``, or when its distances are not all
  finite; a seed whose box is not finite gets no votes.

``instance_ids[i, j]`` is the chosen seed's index (or -1) and ``support[s]`` counts the pixels that chose
seed ``s``; seeds with zero support are dropped by the caller, as the paper does. Each pixel has at most one
id, so the instances never overlap.

Three entry points share this definition:

* :func:`iou_vote` — the op: the compiled kernel of ``instseg._C`` (CPU or CUDA), falling back to the
  reference on CPU when the extension is not built;
* :func:`iou_vote_reference` — pure PyTorch, vectorised over (pixels x seeds) in chunks; the oracle of the
  tests and the fallback;
* :func:`iou_vote_numpy` — the same code path on NumPy arrays (the benchmark's reference).

The reference evaluates the same formulas in the same order as the kernels (``csrc/iou_vote/iou_vote.h``),
so results agree exactly, not just up to rounding.
"""
import math
from numbers import Real
from typing import Tuple

import numpy as np
import torch

from instseg.extension import check_same_device, check_same_dtype, check_tensor, dispatch

__all__ = ["iou_vote", "iou_vote_reference", "iou_vote_numpy"]

_OP = "iou_vote"
# The reference works on chunks of pixels so that a (pixels x seeds) temporary holds at most this many
# entries (a few tens of MB), whatever the image size.
_MAX_PAIRS_PER_CHUNK = 1 << 20


# ------------------------------------------------------------------------------------------------
# The few array operations where NumPy and PyTorch spell things differently. Everything else in
# _iou_vote_arrays (arithmetic, comparisons, &, |, indexing, reshape, minimum/maximum/where/isfinite,
# bincount) is written once and runs on either library.
# ------------------------------------------------------------------------------------------------
class _TorchOps:
    lib = torch
    int64 = torch.int64

    @staticmethod
    def arange(n, like):
        return torch.arange(n, dtype=like.dtype, device=like.device)

    @staticmethod
    def scalar(value, like):
        return torch.tensor(value, dtype=like.dtype, device=like.device)

    @staticmethod
    def full(n, value, like, dtype):
        return torch.full((n,), value, dtype=dtype, device=like.device)

    @staticmethod
    def clamp0(x):
        return torch.clamp(x, min=0)

    @staticmethod
    def amax(x, axis):
        return torch.amax(x, dim=axis)

    @staticmethod
    def argmin(x, axis):  # first index of the minimum, as np.argmin
        return torch.argmin(x, dim=axis)

    @staticmethod
    def any(x, axis):
        return torch.any(x, dim=axis)

    @staticmethod
    def max_finite(x):
        return torch.finfo(x.dtype).max


class _NumpyOps:
    lib = np
    int64 = np.int64

    @staticmethod
    def arange(n, like):
        return np.arange(n, dtype=like.dtype)

    @staticmethod
    def scalar(value, like):
        return np.asarray(value, dtype=like.dtype)

    @staticmethod
    def full(n, value, like, dtype):
        return np.full((n,), value, dtype=dtype)

    @staticmethod
    def clamp0(x):
        return np.maximum(x, x.dtype.type(0))

    @staticmethod
    def amax(x, axis):
        return np.amax(x, axis=axis)

    @staticmethod
    def argmin(x, axis):
        return np.argmin(x, axis=axis)

    @staticmethod
    def any(x, axis):
        return np.any(x, axis=axis)

    @staticmethod
    def max_finite(x):
        return np.finfo(x.dtype).max


def _iou_vote_arrays(ops, labels, dist, boxes, classes, min_iou, tie_eps):
    """The definition of the module docstring on arrays of ``ops.lib`` (torch or numpy).

    labels (H, W) int64, dist (4, H, W) float, boxes (S, 4) float (dist's dtype), classes (S,) int64.
    Returns (ids (H, W) int64, support (S,) int64).
    """
    xp = ops.lib
    H, W = labels.shape
    S = boxes.shape[0]
    P = H * W
    ids = ops.full(P, -1, dist, ops.int64)
    if P == 0 or S == 0:
        return ids.reshape(H, W), ops.full(S, 0, dist, ops.int64)
    half = ops.scalar(0.5, dist)

    # Seeds: validity, area and centre (the formulas of box_area/box_center in iou_vote.h).
    bx1, by1, bx2, by2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    seed_ok = xp.isfinite(bx1) & xp.isfinite(by1) & xp.isfinite(bx2) & xp.isfinite(by2)
    b_area = ops.clamp0(bx2 - bx1) * ops.clamp0(by2 - by1)
    b_cx, b_cy = (bx1 + bx2) * half, (by1 + by2) * half

    # Pixels: each one's own box around its centre (j + 0.5, i + 0.5), its area and centre.
    cx = xp.broadcast_to((ops.arange(W, dist) + half)[None, :], (H, W)).reshape(-1)
    cy = xp.broadcast_to((ops.arange(H, dist) + half)[:, None], (H, W)).reshape(-1)
    l, t, r, b = dist[0].reshape(-1), dist[1].reshape(-1), dist[2].reshape(-1), dist[3].reshape(-1)
    pix_ok = xp.isfinite(l) & xp.isfinite(t) & xp.isfinite(r) & xp.isfinite(b)
    px1, py1, px2, py2 = cx - l, cy - t, cx + r, cy + b
    p_area = ops.clamp0(px2 - px1) * ops.clamp0(py2 - py1)
    p_cx, p_cy = (px1 + px2) * half, (py1 + py2) * half
    lab = labels.reshape(-1)

    min_iou_t, eps_t = ops.scalar(min_iou, dist), ops.scalar(tie_eps, dist)
    max_finite = ops.scalar(ops.max_finite(dist), dist)
    one = ops.scalar(1.0, dist)

    chunk = max(1, _MAX_PAIRS_PER_CHUNK // S)
    for a in range(0, P, chunk):
        e = min(P, a + chunk)
        # (pixels, seeds): may pixel p vote for seed s at all?
        same = (lab[a:e, None] == classes[None, :]) & seed_ok[None, :] & pix_ok[a:e, None]
        # IoU of each pixel box with each seed box (box_iou in iou_vote.h).
        iw = ops.clamp0(xp.minimum(px2[a:e, None], bx2[None, :]) - xp.maximum(px1[a:e, None], bx1[None, :]))
        ih = ops.clamp0(xp.minimum(py2[a:e, None], by2[None, :]) - xp.maximum(py1[a:e, None], by1[None, :]))
        inter = iw * ih
        union = (p_area[a:e, None] + b_area[None, :]) - inter
        pos = union > 0
        iou = xp.where(pos, inter / xp.where(pos, union, one), 0.0)
        # m: the best IoU over the seeds of the pixel's class (IoU >= 0, so -1 marks the other seeds).
        m = ops.amax(xp.where(same, iou, -1.0), 1)
        # Candidates: IoU within tie_eps of m; the nearest centre wins, then the lower index (argmin
        # returns the first minimum).
        cand = same & (iou >= (m - eps_t)[:, None])
        dx = p_cx[a:e, None] - b_cx[None, :]
        dy = p_cy[a:e, None] - b_cy[None, :]
        d2 = xp.minimum(dx * dx + dy * dy, max_finite)
        best = ops.argmin(xp.where(cand, d2, math.inf), 1)
        voted = ops.any(same, 1) & (m > min_iou_t)
        ids[a:e] = xp.where(voted, best, -1)

    support = xp.bincount(ids[ids >= 0], minlength=S)
    return ids.reshape(H, W), support


# ------------------------------------------------------------------------------------------------
# Input checks
# ------------------------------------------------------------------------------------------------
def _check_scalars(min_iou, tie_eps):
    if not isinstance(min_iou, Real) or math.isnan(min_iou):
        raise ValueError(f"{_OP}: 'min_iou' must be a real number, got {min_iou!r}")
    if not isinstance(tie_eps, Real) or not math.isfinite(tie_eps) or tie_eps < 0:
        raise ValueError(f"{_OP}: 'tie_eps' must be a finite number >= 0, got {tie_eps!r}")


def _check_inputs(sem_labels, distances, seed_boxes, seed_classes, min_iou, tie_eps):
    check_tensor("sem_labels", sem_labels, ndim=2, integer=True, op=_OP)
    H, W = sem_labels.shape
    check_tensor("distances", distances, ndim=3, shape=(4, H, W), floating=True, op=_OP)
    if distances.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"{_OP}: 'distances' must be float32 or float64, got {distances.dtype}")
    check_tensor("seed_boxes", seed_boxes, ndim=2, shape=(None, 4), floating=True, op=_OP)
    check_tensor("seed_classes", seed_classes, ndim=1, shape=(seed_boxes.shape[0],), integer=True, op=_OP)
    check_same_dtype(_OP, distances=distances, seed_boxes=seed_boxes)
    check_same_device(
        _OP, sem_labels=sem_labels, distances=distances, seed_boxes=seed_boxes, seed_classes=seed_classes
    )
    _check_scalars(min_iou, tie_eps)


# ------------------------------------------------------------------------------------------------
# Public functions
# ------------------------------------------------------------------------------------------------
def iou_vote(
    sem_labels: torch.Tensor,
    distances: torch.Tensor,
    seed_boxes: torch.Tensor,
    seed_classes: torch.Tensor,
    min_iou: float = 0.0,
    tie_eps: float = 1e-3,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """CASNet's IoU-vote clustering (Sec. III-C): one instance id per pixel, see the module docstring.

    Args:
        sem_labels: (H, W) integer class of each pixel (any integer dtype).
        distances: (4, H, W) float32/float64, each pixel's predicted distances (l, t, r, b) to the borders
            of its instance box, in pixels.
        seed_boxes: (S, 4) xyxy seed boxes (same dtype as ``distances``), from the box-probability head
            after thresholding and NMS.
        seed_classes: (S,) integer class of each seed.
        min_iou: a pixel whose best IoU is not above this gets -1.
        tie_eps: IoUs within ``tie_eps`` of the best are decided by centre distance, then seed index.

    Returns:
        instance_ids: (H, W) int64, the index of the chosen seed or -1.
        support: (S,) int64, the number of pixels that chose each seed.
    """
    _check_inputs(sem_labels, distances, seed_boxes, seed_classes, min_iou, tie_eps)
    fn = dispatch(_OP, iou_vote_reference, sem_labels, distances, seed_boxes, seed_classes)
    ids, support = fn(
        sem_labels.detach().to(torch.int64).contiguous(),
        distances.detach().contiguous(),
        seed_boxes.detach().contiguous(),
        seed_classes.detach().to(torch.int64).contiguous(),
        float(min_iou),
        float(tie_eps),
    )
    return ids, support


def iou_vote_reference(
    sem_labels: torch.Tensor,
    distances: torch.Tensor,
    seed_boxes: torch.Tensor,
    seed_classes: torch.Tensor,
    min_iou: float = 0.0,
    tie_eps: float = 1e-3,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pure-PyTorch reference of :func:`iou_vote` (any device): vectorised over pixels x seeds, in chunks."""
    _check_inputs(sem_labels, distances, seed_boxes, seed_classes, min_iou, tie_eps)
    with torch.no_grad():
        return _iou_vote_arrays(
            _TorchOps,
            sem_labels.to(torch.int64),
            distances.detach(),
            seed_boxes.detach(),
            seed_classes.to(torch.int64),
            float(min_iou),
            float(tie_eps),
        )


def iou_vote_numpy(
    sem_labels: np.ndarray,
    distances: np.ndarray,
    seed_boxes: np.ndarray,
    seed_classes: np.ndarray,
    min_iou: float = 0.0,
    tie_eps: float = 1e-3,
) -> Tuple[np.ndarray, np.ndarray]:
    """The same reference on NumPy arrays (same shapes and dtypes as :func:`iou_vote`; returns arrays)."""
    sem_labels, distances = np.asarray(sem_labels), np.asarray(distances)
    seed_boxes, seed_classes = np.asarray(seed_boxes), np.asarray(seed_classes)
    if sem_labels.ndim != 2 or not np.issubdtype(sem_labels.dtype, np.integer):
        raise ValueError(
            f"{_OP}: 'sem_labels' must be an (H, W) integer array, got {sem_labels.shape} {sem_labels.dtype}"
        )
    if distances.shape != (4,) + sem_labels.shape or distances.dtype not in (np.float32, np.float64):
        raise ValueError(
            f"{_OP}: 'distances' must be a float32/float64 array of shape {(4,) + sem_labels.shape}, "
            f"got {distances.shape} {distances.dtype}"
        )
    if seed_boxes.ndim != 2 or seed_boxes.shape[1] != 4 or seed_boxes.dtype != distances.dtype:
        raise ValueError(
            f"{_OP}: 'seed_boxes' must be an (S, 4) array of dtype {distances.dtype}, "
            f"got {seed_boxes.shape} {seed_boxes.dtype}"
        )
    if seed_classes.shape != (seed_boxes.shape[0],) or not np.issubdtype(seed_classes.dtype, np.integer):
        raise ValueError(
            f"{_OP}: 'seed_classes' must be an ({seed_boxes.shape[0]},) integer array, "
            f"got {seed_classes.shape} {seed_classes.dtype}"
        )
    _check_scalars(min_iou, tie_eps)
    # Masked-out pairs (other classes, non-finite boxes) may produce inf/nan on the way; they never count.
    with np.errstate(all="ignore"):
        return _iou_vote_arrays(
            _NumpyOps,
            sem_labels.astype(np.int64, copy=False),
            distances,
            seed_boxes,
            seed_classes.astype(np.int64, copy=False),
            float(min_iou),
            float(tie_eps),
        )
