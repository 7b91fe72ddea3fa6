"""Contour-point targets of Mask Point R-CNN (Sec. III-C, Fig. 3).

From a binary instance mask, k points on the object's contour plus its centre: the labels of the
keypoint branch. Needs only numpy and OpenCV, so the sampler is usable (and tested) without detectron2.

Conventions (shared with detectron2's keypoints): points are (x, y) in continuous image coordinates, the
centre of pixel (row i, column j) being (j + 0.5, i + 0.5).

Order, so that keypoint i means the same thing across instances: each component's outer contour starts at
its top-most (then left-most) pixel and runs clockwise as seen on screen (y pointing down); components are
ordered by that start pixel (top first, then left); the centre point comes last. Holes do not contribute.
"""

import heapq
from typing import List, Union

import cv2
import numpy as np

SAMPLINGS = ("uniform", "corner")
CENTERS = ("mass", "box")

RngLike = Union[None, int, np.random.Generator]


def _as_rng(rng: RngLike) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(0 if rng is None else rng)


def _outer_contours(mask: np.ndarray) -> List[np.ndarray]:
    """Outer contour pixels (N, 2) int (x, y) of every 8-connected component, each starting at its
    top-most-left-most pixel and running clockwise on screen; components ordered by that start pixel.
    Islands inside another component's hole count as components; holes themselves are skipped."""
    contours, hierarchy = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    if hierarchy is None:
        return []
    out = []
    for contour, (_, _, _, parent) in zip(contours, hierarchy[0]):
        if parent != -1:  # a hole
            continue
        pts = contour[:, 0, :].astype(np.int64)
        if len(pts) >= 3:
            x, y = pts[:, 0].astype(np.float64), pts[:, 1].astype(np.float64)
            # shoelace with y down: > 0 is clockwise on screen
            if np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y) < 0:
                pts = pts[::-1]
        start = np.lexsort((pts[:, 0], pts[:, 1]))[0]  # min y, then min x
        out.append(np.roll(pts, -start, axis=0))
    out.sort(key=lambda p: (p[0, 1], p[0, 0]))
    return out


def _arc_lengths(pts: np.ndarray):
    """Cumulative arc length at each point of a closed polyline, and its total length."""
    if len(pts) < 2:
        return np.zeros(len(pts)), 0.0
    steps = np.linalg.norm(np.diff(pts.astype(np.float64), axis=0), axis=1)
    closing = float(np.linalg.norm((pts[0] - pts[-1]).astype(np.float64)))
    cum = np.concatenate([[0.0], np.cumsum(steps)])
    return cum, float(cum[-1] + closing)


def _allocate(weights: np.ndarray, capacity: np.ndarray, total: int) -> np.ndarray:
    """Split `total` into integers proportional to `weights` (largest remainder), none above its capacity;
    what a full component cannot take goes to the others. Assumes total <= capacity.sum()."""
    alloc = np.zeros(len(weights), dtype=np.int64)
    remaining = total
    open_ = capacity > 0
    while remaining > 0 and open_.any():
        w = np.where(open_, np.maximum(weights, 1e-6), 0.0)
        share = w / w.sum() * remaining
        add = np.floor(share).astype(np.int64)
        order = np.argsort(-(share - add), kind="stable")
        for i in order[: remaining - add.sum()]:
            if open_[i]:
                add[i] += 1
        add = np.minimum(add, capacity - alloc)
        if add.sum() == 0:  # only fractions left over full components: give one to the heaviest open one
            add[np.argmax(w)] = 1
        alloc += add
        remaining -= int(add.sum())
        open_ = alloc < capacity
    return alloc


def _uniform_indices(pts: np.ndarray, n: int) -> np.ndarray:
    """Indices of n contour pixels equally spaced by arc length, starting at the first pixel."""
    cum, length = _arc_lengths(pts)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    targets = np.arange(n) * (length / n)
    idx = np.clip(np.searchsorted(cum, targets), 1, len(pts) - 1) if len(pts) > 1 else np.zeros(n, np.int64)
    if len(pts) > 1:
        left = idx - 1
        idx = np.where(np.abs(cum[left] - targets) <= np.abs(cum[idx] - targets), left, idx)
        # the stretch past the last pixel closes the contour: snap to pixel 0 when nearer to it
        idx = np.where(np.abs(length - targets) < np.abs(cum[idx] - targets), 0, idx)
    return idx.astype(np.int64)


def _salience_order(pts: np.ndarray) -> np.ndarray:
    """Contour pixel indices, most salient first: Visvalingam-Whyatt simplification of the closed contour
    (repeatedly drop the vertex spanning the smallest triangle with its current neighbours); a vertex is
    as salient as it is late to be dropped, so the first m indices are the vertices of the m-gon
    approximation (in salience order: sort them to walk the polygon). Ties go to the earlier pixel in
    contour order."""
    n = len(pts)
    if n <= 3:
        return np.arange(n)
    p = pts.astype(np.float64)
    prev = np.roll(np.arange(n), 1)
    nxt = np.roll(np.arange(n), -1)

    def area(i):
        a, b, c = p[prev[i]], p[i], p[nxt[i]]
        return 0.5 * abs((b[0] - a[0]) * (c[1] - a[1]) - (c[0] - a[0]) * (b[1] - a[1]))

    version = np.zeros(n, dtype=np.int64)
    heap = [(area(i), -i, i, 0) for i in range(n)]  # -i: among equal areas drop the later pixel first
    heapq.heapify(heap)
    alive = np.ones(n, dtype=bool)
    removed = []
    left = n
    while left > 3:
        a, _, i, ver = heapq.heappop(heap)
        if not alive[i] or ver != version[i]:
            continue
        alive[i] = False
        removed.append(i)
        left -= 1
        pi, ni = prev[i], nxt[i]
        nxt[pi], prev[ni] = ni, pi
        for j in (pi, ni):
            version[j] += 1
            heapq.heappush(heap, (max(area(j), a), -j, j, version[j]))  # never below what was removed
    last = np.flatnonzero(alive)
    return np.concatenate([last, np.array(removed[::-1], dtype=np.int64)]).astype(np.int64)


def _corner_indices(pts: np.ndarray, n: int) -> np.ndarray:
    """Indices of the n most salient contour pixels (the vertices of the n-gon approximation), in contour
    order, so that they walk the polygon clockwise from the contour's first pixel."""
    return np.sort(_salience_order(pts)[:n])


def _pad(points: np.ndarray, num: int, rng: np.random.Generator) -> np.ndarray:
    """The paper's padding: repeat randomly chosen existing points until there are `num`. The repeats sit
    next to their originals, so the sequence still runs along the contour (for either sampling)."""
    short = num - len(points)
    if short <= 0:
        return points[:num]
    extra = rng.integers(0, len(points), size=short)
    return points[np.sort(np.concatenate([np.arange(len(points)), extra]), kind="stable")]


def sample_contour_points(
    mask,
    num_points: int,
    sampling: str = "uniform",
    with_center: bool = True,
    center: str = "mass",
    rng: RngLike = None,
) -> np.ndarray:
    """Sample ``num_points`` contour points of a binary mask (plus its centre point).

    Args:
        mask: (H, W) array (bool or numbers; non-zero is the object), or a torch tensor.
        num_points: k, the number of contour points (the paper's default is 100).
        sampling: ``"uniform"`` — k contour pixels equally spaced by arc length (Sec. III-C);
            ``"corner"`` — the k most salient contour pixels (Table VI): the vertices of the k-gon
            approximation of the contour (Visvalingam-Whyatt). Either way the points come in the module's
            contour order (clockwise from the top-most point, see above), so that point i means the same
            thing across instances and the points walk a simple polygon. Several components share the k
            points in proportion to their perimeter.
        with_center: append the centre point (k + 1 points in all).
        center: ``"mass"`` — the mask's centroid; ``"box"`` — the centre of its tight box.
        rng: a numpy Generator or an int seed for the padding of contours shorter than k pixels
            (None means seed 0: the same mask always gives the same points).

    Returns:
        (num_points + with_center, 2) float32 array of (x, y).
    """
    if hasattr(mask, "detach"):  # torch tensor
        mask = mask.detach().cpu().numpy()
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"sample_contour_points: mask must be 2-D (H, W), got shape {mask.shape}")
    if int(num_points) != num_points or num_points < 1:
        raise ValueError(f"sample_contour_points: num_points must be a positive integer, got {num_points}")
    if sampling not in SAMPLINGS:
        raise ValueError(f"sample_contour_points: sampling must be one of {SAMPLINGS}, got {sampling!r}")
    if center not in CENTERS:
        raise ValueError(f"sample_contour_points: center must be one of {CENTERS}, got {center!r}")
    binary = mask != 0
    if not binary.any():
        raise ValueError("sample_contour_points: the mask is empty (no foreground pixel)")
    num_points = int(num_points)
    rng = _as_rng(rng)

    contours = _outer_contours(binary)
    sizes = np.array([len(c) for c in contours], dtype=np.int64)
    if sizes.sum() <= num_points:  # too few contour pixels: all of them (either sampling), then the paper's padding
        points = _pad(np.concatenate(contours, axis=0), num_points, rng)
    else:
        perimeters = np.array([_arc_lengths(c)[1] for c in contours])
        alloc = _allocate(perimeters, sizes, num_points)
        parts = []
        for c, n in zip(contours, alloc):
            idx = _uniform_indices(c, n) if sampling == "uniform" else _corner_indices(c, n)
            parts.append(c[idx])
        points = np.concatenate(parts, axis=0)
    points = points.astype(np.float32) + 0.5

    if with_center:
        ys, xs = np.nonzero(binary)
        if center == "mass":
            c = np.array([xs.mean() + 0.5, ys.mean() + 0.5], dtype=np.float32)
        else:
            c = np.array([(xs.min() + xs.max() + 1) / 2.0, (ys.min() + ys.max() + 1) / 2.0], dtype=np.float32)
        points = np.concatenate([points, c[None]], axis=0)
    return points.astype(np.float32)
