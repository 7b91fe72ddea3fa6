"""Mask Point R-CNN Sec. III-C (Fig. 3): contour-point targets sampled from binary masks."""

import cv2
import numpy as np
import pytest
import torch

from maskpoint import sample_contour_points


def disc(size=100, center=(50, 50), radius=30):
    m = np.zeros((size, size), np.uint8)
    cv2.circle(m, center, radius, 1, -1)
    return m


def _boundary_pixels(mask):
    """Centres (x + 0.5, y + 0.5) of the mask pixels that touch the background (8-neighbourhood)."""
    m = np.pad(mask.astype(bool), 1)
    inner = m[1:-1, 1:-1].copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            inner &= m[1 + dy : m.shape[0] - 1 + dy, 1 + dx : m.shape[1] - 1 + dx]
    ys, xs = np.nonzero(mask.astype(bool) & ~inner)
    return set(zip((xs + 0.5).tolist(), (ys + 0.5).tolist()))


def _signed_area(pts):
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * (np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def test_sec3c_disc_uniform_points_on_boundary_evenly_spaced_clockwise_from_top():
    k = 100
    pts = sample_contour_points(disc(), k)
    assert pts.shape == (k + 1, 2) and pts.dtype == np.float32
    contour = pts[:k]
    # on the boundary: contour pixels of the mask, within a pixel of the radius
    assert {tuple(p) for p in contour.tolist()} <= _boundary_pixels(disc())
    r = np.hypot(contour[:, 0] - 50.5, contour[:, 1] - 50.5)
    assert np.all(np.abs(r - 30) <= 1.0)
    # k distinct points, evenly spaced by arc length: gaps between consecutive points (closing the
    # loop) all within a pixel of the mean gap
    assert len({tuple(p) for p in contour.tolist()}) == k
    gaps = np.linalg.norm(np.diff(np.vstack([contour, contour[:1]]), axis=0), axis=1)
    assert np.all(np.abs(gaps - gaps.mean()) <= 1.0)
    # starts at the top-most (then left-most) boundary pixel and runs clockwise on screen (y down):
    # the next point is to the right, and the polygon's shoelace area (y down) is positive
    assert contour[0, 1] == contour[:, 1].min()
    assert contour[0, 0] == contour[contour[:, 1] == contour[0, 1], 0].min()
    assert contour[1, 0] > contour[0, 0]
    assert _signed_area(contour) > 0
    # angles (screen, y down) increase monotonically from the top
    ang = np.unwrap(np.arctan2(contour[:, 1] - 50.5, contour[:, 0] - 50.5))
    assert np.all(np.diff(ang) > 0)


def test_sec3c_center_point_is_the_centroid_or_the_box_centre():
    m = np.zeros((40, 60), np.uint8)
    m[10:20, 5:45] = 1  # a bar ...
    m[10:35, 5:10] = 1  # ... with a leg: centroid != box centre
    ys, xs = np.nonzero(m)
    mass = sample_contour_points(m, 20, center="mass")[-1]
    np.testing.assert_allclose(mass, [xs.mean() + 0.5, ys.mean() + 0.5], rtol=0, atol=1e-4)
    box = sample_contour_points(m, 20, center="box")[-1]
    np.testing.assert_allclose(box, [(5 + 45) / 2, (10 + 35) / 2])  # continuous box [5, 45] x [10, 35]
    assert sample_contour_points(m, 20, with_center=False).shape == (20, 2)


@pytest.mark.parametrize("pixels", [[(3, 4)], [(3, 4), (3, 5)], [(3, 4), (4, 5), (5, 5)]])
def test_sec3c_tiny_masks_pad_by_repeating_existing_points(pixels):
    m = np.zeros((10, 10), np.uint8)
    for y, x in pixels:
        m[y, x] = 1
    k = 100
    pts = sample_contour_points(m, k, rng=3)
    assert pts.shape == (k + 1, 2)
    centres = {(x + 0.5, y + 0.5) for y, x in pixels}
    contour = {tuple(p) for p in pts[:k].tolist()}
    assert contour == centres  # every pixel used, nothing invented


def test_sec3c_padding_keeps_contour_order_and_is_deterministic_per_seed():
    m = np.zeros((20, 20), np.uint8)
    m[5:9, 5:9] = 1  # 12 contour pixels < k
    a = sample_contour_points(m, 30, rng=7)
    b = sample_contour_points(m, 30, rng=7)
    c = sample_contour_points(m, 30, rng=np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(sample_contour_points(m, 30), sample_contour_points(m, 30))  # rng=None: seed 0
    # repeats sit next to their originals: the distinct points still appear in clockwise contour order
    uniq = [tuple(p) for i, p in enumerate(a[:30].tolist()) if i == 0 or p != a[i - 1].tolist()]
    assert len(uniq) == len(set(uniq)) == 12
    assert _signed_area(np.array(uniq)) > 0


def test_sec3c_ring_hole_does_not_contribute():
    m = disc(radius=30)
    cv2.circle(m, (50, 50), 15, 0, -1)
    pts = sample_contour_points(m, 60, with_center=False)
    r = np.hypot(pts[:, 0] - 50.5, pts[:, 1] - 50.5)
    assert np.all(np.abs(r - 30) <= 1.0)


def test_sec3c_two_components_share_points_by_perimeter_in_top_left_order():
    m = np.zeros((80, 80), np.uint8)
    m[50:70, 40:70] = 1  # lower, larger: perimeter ~ 96
    m[5:15, 10:20] = 1  # upper, smaller: perimeter ~ 36
    k = 44
    pts = sample_contour_points(m, k, with_center=False)
    upper = pts[:, 1] < 30
    # the upper component comes first, all of its points before the lower one's
    assert upper[0] and np.all(np.diff(upper.astype(int)) <= 0)
    n_up = int(upper.sum())
    per = np.array([36.0, 96.0])
    assert abs(n_up - k * per[0] / per.sum()) <= 1.5
    # each component's points lie on its own boundary
    assert {tuple(p) for p in pts.tolist()} <= _boundary_pixels(m)


def test_sec3c_island_inside_a_hole_is_a_component():
    m = disc(radius=30)
    cv2.circle(m, (50, 50), 20, 0, -1)
    m[47:54, 47:54] = 1  # an island in the ring's hole
    pts = sample_contour_points(m, 40, with_center=False)
    r = np.hypot(pts[:, 0] - 50.5, pts[:, 1] - 50.5)
    assert np.any(r < 6) and np.all((r < 6) | (np.abs(r - 30) <= 1.0))


def test_table6_corner_sampling_finds_the_square_corners_clockwise_from_the_top_left():
    m = np.zeros((50, 50), np.uint8)
    m[10:30, 15:35] = 1
    # the four corners, clockwise on screen from the top-left one
    corners = [(15.5, 10.5), (34.5, 10.5), (34.5, 29.5), (15.5, 29.5)]
    four = sample_contour_points(m, 4, sampling="corner", with_center=False)
    assert [tuple(p) for p in four.tolist()] == corners
    # with more points the corners are still among them, each in its place along the contour
    pts = sample_contour_points(m, 40, sampling="corner", with_center=False)
    assert {tuple(p) for p in pts.tolist()} <= _boundary_pixels(m)
    assert tuple(pts[0]) == corners[0]
    pos = _contour_positions(m, pts)
    assert np.all(np.diff(pos) > 0)
    assert [tuple(p) for p in pts.tolist() if tuple(p) in corners] == corners


def _star(size=100, centre=(50, 52), outer=40, inner=17, spikes=5, turn=0.0):
    """A concave star polygon, filled: ``spikes`` tips at radius ``outer``, notches at ``inner``."""
    a = turn + np.pi * np.arange(2 * spikes) / spikes - np.pi / 2
    rad = np.where(np.arange(2 * spikes) % 2 == 0, outer, inner)
    poly = np.stack([centre[0] + rad * np.cos(a), centre[1] + rad * np.sin(a)], 1).round().astype(np.int32)
    m = np.zeros((size, size), np.uint8)
    cv2.fillPoly(m, [poly], 1)
    return m


def _l_shape():
    m = np.zeros((80, 80), np.uint8)
    m[10:70, 10:30] = 1  # the upright bar ...
    m[50:70, 10:72] = 1  # ... and the foot: a concave corner at (30, 50)
    return m


def _rotated_rectangle():
    m = np.zeros((80, 80), np.uint8)
    cv2.fillPoly(m, [cv2.boxPoints(((40, 40), (50, 20), 30)).astype(np.int32)], 1)
    return m


def _ring():
    m = disc(center=(47, 52), radius=30)
    cv2.circle(m, (47, 52), 15, 0, -1)
    return m


def _contour_positions(mask, pts):
    """Index of each point along the mask's outer contour, walked clockwise on screen (y down) from its
    top-most-then-left-most pixel (worked out here from OpenCV's contour, independently of the sampler)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    c = max(contours, key=len)[:, 0, :].astype(np.float64)
    if _signed_area(c) < 0:
        c = c[::-1]
    c = np.roll(c, -np.lexsort((c[:, 0], c[:, 1]))[0], axis=0)
    index = {}
    for i, (x, y) in enumerate(c.tolist()):
        index.setdefault((x + 0.5, y + 0.5), i)
    return np.array([index[tuple(p)] for p in pts.tolist()])


def _polygon_iou(mask, pts):
    """IoU of the mask with the polygon of the points, filled with cv2.fillPoly (points at pixel centres)."""
    filled = np.zeros(mask.shape, np.uint8)
    cv2.fillPoly(filled, [np.round(pts - 0.5).astype(np.int32)], 1)
    mask = mask.astype(bool)
    return (filled.astype(bool) & mask).sum() / (filled.astype(bool) | mask).sum()


@pytest.mark.parametrize("k", [16, 50, 100])
@pytest.mark.parametrize("shape", ["disc", "rotated_rectangle", "star", "six_point_star", "l_shape", "ring"])
def test_table6_corner_points_walk_the_contour_clockwise_and_fill_the_mask(shape, k):
    mask = {
        "disc": lambda: disc(center=(47, 52), radius=30),
        "rotated_rectangle": _rotated_rectangle,
        "star": _star,
        "six_point_star": lambda: _star(spikes=6, turn=0.3),
        "l_shape": _l_shape,
        "ring": _ring,
    }[shape]()
    outer = mask.copy()
    if shape == "ring":  # the hole does not contribute: the points outline the filled disc
        outer = disc(center=(47, 52), radius=30)
    pts = sample_contour_points(mask, k, sampling="corner", with_center=False)
    assert pts.shape == (k, 2) and len({tuple(p) for p in pts.tolist()}) == k
    assert {tuple(p) for p in pts.tolist()} <= _boundary_pixels(outer)
    # in contour order: each point further along the clockwise contour from the top-left pixel than the
    # one before (salience order jumps back and forth)
    pos = _contour_positions(mask, pts)
    assert np.all(np.diff(pos) > 0)
    # so the polygon of the points is simple, clockwise (positive shoelace area with y down) and fills the mask
    assert _signed_area(pts) > 0
    assert _polygon_iou(outer, pts) >= 0.95


@pytest.mark.parametrize("size, centre, outer, inner", [(100, (50, 52), 40, 17), (90, (41, 47), 30, 12)])
def test_table6_corner_points_on_a_star_keep_their_meaning_across_instances(size, centre, outer, inner):
    # keypoint i must mean the same thing on every instance: on stars of different sizes and places the 10
    # most salient points are the 5 tips and 5 notches, and point 0 is the top tip, point 1 the notch after
    # it clockwise, and so on (in salience order the index of a tip depends on the rasterisation)
    pts = sample_contour_points(_star(size, centre, outer, inner), 10, sampling="corner", with_center=False)
    r = np.hypot(pts[:, 0] - centre[0] - 0.5, pts[:, 1] - centre[1] - 0.5)
    assert np.all(np.abs(r[0::2] - outer) <= 3) and np.all(np.abs(r[1::2] - inner) <= 3)
    assert pts[0, 1] == pts[:, 1].min()
    ang = np.unwrap(np.arctan2(pts[:, 1] - centre[1] - 0.5, pts[:, 0] - centre[0] - 0.5))
    assert np.all(np.diff(ang) > 0) and ang[-1] - ang[0] < 2 * np.pi


def test_table6_corner_sampling_of_a_rotated_rectangle_and_tiny_masks():
    m = np.zeros((80, 80), np.uint8)
    box = cv2.boxPoints(((40, 40), (40, 16), 30)).astype(np.int32)
    cv2.fillPoly(m, [box], 1)
    pts = sample_contour_points(m, 4, sampling="corner", with_center=False)
    # each of the four most salient points is within 2 px of a distinct polygon corner
    d = np.linalg.norm(pts[:, None, :] - (box[None, :, :] + 0.5), axis=2)
    assert np.all(d.min(axis=1) <= 2.0) and len(set(d.argmin(axis=1))) == 4
    # clockwise from the top-most corner
    assert pts[0, 1] == pts[:, 1].min() and _signed_area(pts) > 0
    tiny = np.zeros((5, 5), np.uint8)
    tiny[2, 2] = 1
    assert sample_contour_points(tiny, 10, sampling="corner").shape == (11, 2)


def test_table6_corner_padding_of_short_contours_keeps_contour_order():
    m = np.zeros((20, 20), np.uint8)
    m[5:9, 5:10] = 1  # 14 contour pixels < k: all of them, padded, as for uniform sampling
    pts = sample_contour_points(m, 30, sampling="corner", with_center=False, rng=5)
    uniq = [tuple(p) for i, p in enumerate(pts.tolist()) if i == 0 or p != pts[i - 1].tolist()]
    assert len(uniq) == len(set(uniq)) == 14
    assert uniq[0] == (5.5, 5.5) and uniq[1] == (6.5, 5.5)  # top-left pixel, then to the right
    assert np.all(np.diff(_contour_positions(m, np.array(uniq))) > 0)
    np.testing.assert_array_equal(pts, sample_contour_points(m, 30, sampling="uniform", with_center=False, rng=5))


def test_sec3c_torch_input_and_clear_errors():
    m = torch.zeros(20, 20, dtype=torch.bool)
    m[4:10, 4:12] = True
    np.testing.assert_array_equal(sample_contour_points(m, 8), sample_contour_points(m.numpy(), 8))
    with pytest.raises(ValueError, match="empty"):
        sample_contour_points(np.zeros((5, 5)), 8)
    with pytest.raises(ValueError, match="2-D"):
        sample_contour_points(np.ones((2, 5, 5)), 8)
    with pytest.raises(ValueError, match="num_points"):
        sample_contour_points(np.ones((5, 5)), 0)
    with pytest.raises(ValueError, match="sampling"):
        sample_contour_points(np.ones((5, 5)), 8, sampling="random")
    with pytest.raises(ValueError, match="center"):
        sample_contour_points(np.ones((5, 5)), 8, center="median")
