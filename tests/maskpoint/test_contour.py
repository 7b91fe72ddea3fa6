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
            inner &= m[1 + dy: m.shape[0] - 1 + dy, 1 + dx: m.shape[1] - 1 + dx]
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
    upper = (pts[:, 1] < 30)
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


def test_table6_corner_sampling_finds_the_square_corners_first():
    m = np.zeros((50, 50), np.uint8)
    m[10:30, 15:35] = 1
    corners = {(15.5, 10.5), (34.5, 10.5), (34.5, 29.5), (15.5, 29.5)}
    pts = sample_contour_points(m, 40, sampling="corner", with_center=False)
    assert {tuple(p) for p in pts[:4].tolist()} == corners
    assert {tuple(p) for p in pts.tolist()} <= _boundary_pixels(m)
    four = sample_contour_points(m, 4, sampling="corner", with_center=False)
    assert {tuple(p) for p in four.tolist()} == corners


def test_table6_corner_sampling_of_a_rotated_rectangle_and_tiny_masks():
    m = np.zeros((80, 80), np.uint8)
    box = cv2.boxPoints(((40, 40), (40, 16), 30)).astype(np.int32)
    cv2.fillPoly(m, [box], 1)
    pts = sample_contour_points(m, 4, sampling="corner", with_center=False)
    # each of the four most salient points is within 2 px of a distinct polygon corner
    d = np.linalg.norm(pts[:, None, :] - (box[None, :, :] + 0.5), axis=2)
    assert np.all(d.min(axis=1) <= 2.0) and len(set(d.argmin(axis=1))) == 4
    tiny = np.zeros((5, 5), np.uint8)
    tiny[2, 2] = 1
    assert sample_contour_points(tiny, 10, sampling="corner").shape == (11, 2)


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
