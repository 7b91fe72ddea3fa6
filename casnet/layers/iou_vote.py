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
* :func:`iou_vote_reference` — pure PyTorch, vectorised over (pixels x all seeds) in chunks; an oracle of
  the tests and the fallback;
* :func:`iou_vote_numpy` — NumPy, class by class: one broadcast IoU of the class's pixel boxes against its
  seeds, then the tie rule; the other oracle of the tests and the benchmark's reference.

Both references evaluate the same formulas in the same order as the kernels (``csrc/iou_vote/iou_vote.h``),
so results agree exactly, not just up to rounding.
"""

import math
from numbers import Real
from typing import Tuple

import numpy as np
import torch

from instseg.extension import check_same_device, check_same_dtype, check_tensor, dispatch, extension_available

__all__ = ["iou_vote", "iou_vote_reference", "iou_vote_numpy"]

_OP = "iou_vote"  # torch.ops.instseg.iou_vote (no backward: the ids are integers)
# The PyTorch reference works on chunks of pixels so that a (pixels x seeds) temporary holds at most this many
# entries (a few tens of MB), whatever the image size; the NumPy one broadcasts a whole class at once up to
# _MAX_PAIRS_PER_CLASS pairs.
_MAX_PAIRS_PER_CHUNK = 1 << 20
_MAX_PAIRS_PER_CLASS = 1 << 22


def _iou_vote_torch(labels, dist, boxes, classes, min_iou, tie_eps):
    """The definition of the module docstring in PyTorch, on (pixels x all seeds) pairs in chunks.

    labels (H, W) int64, dist (4, H, W) float, boxes (S, 4) float (dist's dtype), classes (S,) int64.
    Returns (ids (H, W) int64, support (S,) int64).
    """
    H, W = labels.shape
    S = boxes.shape[0]
    P = H * W
    like = dict(dtype=dist.dtype, device=dist.device)
    ids = torch.full((P,), -1, dtype=torch.int64, device=dist.device)
    if P == 0 or S == 0:
        return ids.view(H, W), torch.zeros(S, dtype=torch.int64, device=dist.device)
    half = torch.tensor(0.5, **like)

    # Seeds: validity, area and centre (the formulas of box_area/box_center in iou_vote.h).
    bx1, by1, bx2, by2 = boxes.unbind(1)
    seed_ok = torch.isfinite(boxes).all(1)
    b_area = (bx2 - bx1).clamp(min=0) * (by2 - by1).clamp(min=0)
    b_cx, b_cy = (bx1 + bx2) * half, (by1 + by2) * half

    # Pixels: each one's own box around its centre (j + 0.5, i + 0.5), its area and centre.
    cx = (torch.arange(W, **like) + half).expand(H, W).reshape(-1)
    cy = (torch.arange(H, **like) + half)[:, None].expand(H, W).reshape(-1)
    left, top, right, bottom = dist.reshape(4, -1).unbind(0)
    pix_ok = torch.isfinite(dist).all(0).reshape(-1)
    px1, py1, px2, py2 = cx - left, cy - top, cx + right, cy + bottom
    p_area = (px2 - px1).clamp(min=0) * (py2 - py1).clamp(min=0)
    p_cx, p_cy = (px1 + px2) * half, (py1 + py2) * half
    lab = labels.reshape(-1)

    min_iou_t, eps_t = torch.tensor(min_iou, **like), torch.tensor(tie_eps, **like)
    max_finite = torch.tensor(torch.finfo(dist.dtype).max, **like)
    one = torch.tensor(1.0, **like)

    chunk = max(1, _MAX_PAIRS_PER_CHUNK // S)
    for a in range(0, P, chunk):
        e = min(P, a + chunk)
        # (pixels, seeds): may pixel p vote for seed s at all?
        same = (lab[a:e, None] == classes[None, :]) & seed_ok[None, :] & pix_ok[a:e, None]
        # IoU of each pixel box with each seed box (box_iou in iou_vote.h).
        iw = (torch.minimum(px2[a:e, None], bx2[None, :]) - torch.maximum(px1[a:e, None], bx1[None, :])).clamp(min=0)
        ih = (torch.minimum(py2[a:e, None], by2[None, :]) - torch.maximum(py1[a:e, None], by1[None, :])).clamp(min=0)
        inter = iw * ih
        union = (p_area[a:e, None] + b_area[None, :]) - inter
        pos = union > 0
        iou = torch.where(pos, inter / torch.where(pos, union, one), 0.0)
        # m: the best IoU over the seeds of the pixel's class (IoU >= 0, so -1 marks the other seeds).
        m = torch.where(same, iou, -1.0).amax(1)
        # Candidates: IoU within tie_eps of m; the nearest centre wins, then the lower index (argmin
        # returns the first minimum).
        cand = same & (iou >= (m - eps_t)[:, None])
        dx = p_cx[a:e, None] - b_cx[None, :]
        dy = p_cy[a:e, None] - b_cy[None, :]
        d2 = torch.minimum(dx * dx + dy * dy, max_finite)
        best = torch.where(cand, d2, math.inf).argmin(1)
        voted = same.any(1) & (m > min_iou_t)
        ids[a:e] = torch.where(voted, best, -1)

    support = torch.bincount(ids[ids >= 0], minlength=S)
    return ids.view(H, W), support


def _iou_vote_numpy(labels, dist, boxes, classes, min_iou, tie_eps):
    """The same definition in NumPy, class by class: one broadcast IoU of a class's pixel boxes against that
    class's seeds, then the tie rule. Same formulas in the same order (and dtype) as the kernels and
    :func:`_iou_vote_torch`, so the results agree exactly. Arguments as :func:`_iou_vote_torch`."""
    H, W = labels.shape
    S = boxes.shape[0]
    ids = np.full(H * W, -1, dtype=np.int64)
    if ids.size == 0 or S == 0:
        return ids.reshape(H, W), np.zeros(S, dtype=np.int64)
    T = dist.dtype.type
    half, zero, eps, threshold = T(0.5), T(0), T(tie_eps), T(min_iou)
    max_finite = np.finfo(dist.dtype).max
    seed_ok = np.isfinite(boxes).all(1)
    flat = dist.reshape(4, -1)
    lab = labels.reshape(-1)
    pix_ok = np.isfinite(flat).all(0)
    for c in np.unique(classes[seed_ok]):
        seeds = np.flatnonzero(seed_ok & (classes == c))  # ascending: argmin's first minimum is the lower index
        pix = np.flatnonzero((lab == c) & pix_ok)
        if pix.size == 0:
            continue
        bx1, by1, bx2, by2 = boxes[seeds].T
        b_area = np.maximum(bx2 - bx1, zero) * np.maximum(by2 - by1, zero)
        b_cx, b_cy = (bx1 + bx2) * half, (by1 + by2) * half
        row, col = np.divmod(pix, W)
        cx, cy = col.astype(T) + half, row.astype(T) + half
        left, top, right, bottom = flat[:, pix]
        px1, py1, px2, py2 = cx - left, cy - top, cx + right, cy + bottom
        p_area = np.maximum(px2 - px1, zero) * np.maximum(py2 - py1, zero)
        p_cx, p_cy = (px1 + px2) * half, (py1 + py2) * half
        # One broadcast (pixels of c) x (seeds of c); very large classes go in slices to bound the memory.
        step = max(1, _MAX_PAIRS_PER_CLASS // seeds.size)
        for a in range(0, pix.size, step):
            s = slice(a, a + step)
            iw = np.minimum(px2[s, None], bx2) - np.maximum(px1[s, None], bx1)
            ih = np.minimum(py2[s, None], by2) - np.maximum(py1[s, None], by1)
            inter = np.maximum(iw, zero, out=iw)
            inter *= np.maximum(ih, zero, out=ih)
            union = (p_area[s, None] + b_area) - inter
            iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > zero)
            m = iou.max(1)
            # Tie rule: among the seeds within tie_eps of the best IoU, the nearest centre, then the lower index.
            dx = p_cx[s, None] - b_cx
            dy = p_cy[s, None] - b_cy
            d2 = np.minimum(dx * dx + dy * dy, max_finite, out=dx)
            d2[iou < (m - eps)[:, None]] = np.inf
            best = d2.argmin(1)
            voted = m > threshold
            ids[pix[s][voted]] = seeds[best[voted]]
    support = np.bincount(ids[ids >= 0], minlength=S)
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
    check_same_device(_OP, sem_labels=sem_labels, distances=distances, seed_boxes=seed_boxes, seed_classes=seed_classes)
    _check_scalars(min_iou, tie_eps)


# ------------------------------------------------------------------------------------------------
# The compiled op: its fake kernel, registered with torch.library (not differentiable: no autograd).
# ------------------------------------------------------------------------------------------------
def _forward_fake(sem_labels, distances, seed_boxes, seed_classes, min_iou, tie_eps):
    return (
        sem_labels.new_empty(sem_labels.shape, dtype=torch.int64),
        seed_classes.new_empty(seed_classes.shape, dtype=torch.int64),
    )


if extension_available():
    torch.library.register_fake(f"instseg::{_OP}", _forward_fake)


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
        return _iou_vote_torch(
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
        return _iou_vote_numpy(
            sem_labels.astype(np.int64, copy=False),
            distances,
            seed_boxes,
            seed_classes.astype(np.int64, copy=False),
            float(min_iou),
            float(tie_eps),
        )
