"""Tests of CASNet's IoU-vote clustering (Sec. III-C, "common attribute support").

The op (compiled CPU/CUDA kernel, or the reference when instseg._C is not built) is checked against the
vectorised PyTorch reference, the NumPy reference (class by class, broadcast), a per-pixel brute force written
from the definition, and torchvision's box_iou; plus hand-built cases for each rule of the definition. What every
op is tested for (opcheck, parity with the reference, empty inputs, meta tensors, torch.compile, registration,
fallback) comes from the shared harness (tests/ops/harness.py) through TestIouVoteOp.
"""

import math

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from casnet.layers import iou_vote, iou_vote_numpy, iou_vote_reference
from instseg.extension import extension_available, extension_has_cuda, get_op
from tests.ops.harness import OpTester, Sample
from tests.utils import requires_cuda

DTYPES = [torch.float32, torch.float64]


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def random_case(H, W, S, num_classes, dtype, seed, integer_grid=False, device="cpu"):
    """Labels in [-1, num_classes] (so some have no seed), distances in pixels, boxes partly off the map."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(-1, num_classes + 1, (H, W), generator=g)
    dist = torch.rand(4, H, W, generator=g, dtype=torch.float64) * 12
    xy = torch.rand(S, 2, generator=g, dtype=torch.float64) * torch.tensor([W + 10.0, H + 10.0]) - 5
    wh = torch.rand(S, 2, generator=g, dtype=torch.float64) * 16
    boxes = torch.cat([xy, xy + wh], dim=1)
    if integer_grid:  # exact IoU / distance ties become common
        dist, boxes = dist.round(), boxes.round()
    classes = torch.randint(0, num_classes, (S,), generator=g)
    return labels.to(device), dist.to(dtype).to(device), boxes.to(dtype).to(device), classes.to(device)


def brute_force(labels, dist, boxes, classes, min_iou, tie_eps):
    """The definition, pixel by pixel, in Python floats (float64 inputs only)."""
    H, W = labels.shape
    ids = -np.ones((H, W), dtype=np.int64)
    L, D, B, C = labels.tolist(), dist.tolist(), boxes.tolist(), classes.tolist()

    def area(x1, y1, x2, y2):
        return max(x2 - x1, 0.0) * max(y2 - y1, 0.0)

    for i in range(H):
        for j in range(W):
            left, top, right, bottom = (D[k][i][j] for k in range(4))
            if not all(math.isfinite(v) for v in (left, top, right, bottom)):
                continue
            cx, cy = j + 0.5, i + 0.5
            p = (cx - left, cy - top, cx + right, cy + bottom)
            mine = [s for s in range(len(B)) if C[s] == L[i][j] and all(math.isfinite(v) for v in B[s])]
            if not mine:
                continue
            ious = {}
            for s in mine:
                q = B[s]
                iw = max(min(p[2], q[2]) - max(p[0], q[0]), 0.0)
                ih = max(min(p[3], q[3]) - max(p[1], q[1]), 0.0)
                inter = iw * ih
                union = (area(*p) + area(*q)) - inter
                ious[s] = inter / union if union > 0 else 0.0
            m = max(ious.values())
            if not m > min_iou:
                continue
            pcx, pcy = (p[0] + p[2]) * 0.5, (p[1] + p[3]) * 0.5

            def d2(s, pcx=pcx, pcy=pcy):
                dx, dy = pcx - (B[s][0] + B[s][2]) * 0.5, pcy - (B[s][1] + B[s][3]) * 0.5
                return dx * dx + dy * dy

            ids[i, j] = min((s for s in mine if ious[s] >= m - tie_eps), key=lambda s: (d2(s), s))
    return ids


def one_pixel(left, top, right, bottom, dtype=torch.float64):
    """A 1x1 image of class 0 whose pixel (centre (0.5, 0.5)) predicts these distances."""
    return torch.zeros(1, 1, dtype=torch.int64), torch.tensor([left, top, right, bottom], dtype=dtype).view(4, 1, 1)


def assert_same(a, b):
    ids_a, sup_a = a
    ids_b, sup_b = (torch.as_tensor(x) for x in b)
    assert ids_a.dtype == torch.int64 and sup_a.dtype == torch.int64
    assert torch.equal(ids_a.cpu(), ids_b.cpu()), f"{(ids_a.cpu() != ids_b.cpu()).sum()} pixels differ"
    assert torch.equal(sup_a.cpu(), sup_b.cpu())


class TestIouVoteOp(OpTester):
    """The shared op tests (tests/ops/harness.py) on IoU-vote clustering (not differentiable; results exact)."""

    forward_op = "iou_vote"
    wrapper_module = "casnet.layers.iou_vote"
    tolerances = {}  # the op and the reference agree bit for bit

    def fn(self, *args):
        return iou_vote(*args)

    def reference(self, *args):
        return iou_vote_reference(*args)

    def sample(self, dtype, device="cpu", seed=0):
        return Sample((*random_case(16, 23, 12, 3, dtype, seed, integer_grid=seed % 2 == 1, device=device), 0.0, 1e-3))

    def empty_samples(self, dtype, device="cpu"):
        labels, dist, boxes, classes = random_case(5, 6, 4, 2, dtype, seed=2, device=device)
        return [
            Sample((labels[:0], dist[:, :0], boxes, classes, 0.0, 1e-3)),  # no pixel
            Sample((labels, dist, boxes[:0], classes[:0], 0.0, 1e-3)),  # no seed
        ]

    def op_args(self, args):
        return args

    def expected_shapes(self, args):
        labels, _, boxes = args[:3]
        return [(tuple(labels.shape), torch.int64), ((boxes.shape[0],), torch.int64)]


# ------------------------------------------------------------------------------------------------
# build / registration
# ------------------------------------------------------------------------------------------------
def test_casnet_iii_c_compiled_op_registered_when_extension_built():
    if not extension_available():
        pytest.skip("instseg._C is not built: iou_vote runs on its PyTorch reference")
    op = get_op("iou_vote")
    assert op is not None, "instseg._C is built but torch.ops.instseg.iou_vote is missing"
    labels, dist, boxes, classes = random_case(6, 7, 5, 2, torch.float32, seed=0)
    assert_same(op(labels, dist, boxes, classes, 0.0, 1e-3), iou_vote_reference(labels, dist, boxes, classes))


# ------------------------------------------------------------------------------------------------
# parity with the references on random inputs
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "H,W,S,num_classes", [(1, 1, 1, 1), (7, 5, 3, 2), (16, 23, 12, 3), (33, 64, 40, 8), (5, 40, 100, 1)]
)
@pytest.mark.parametrize("min_iou,tie_eps", [(0.0, 1e-3), (0.3, 0.0), (-1.0, 0.1)])
def test_casnet_iii_c_vote_matches_reference(dtype, H, W, S, num_classes, min_iou, tie_eps):
    for seed, grid in ((H * W + S, False), (H * W + S + 1, True)):
        labels, dist, boxes, classes = random_case(H, W, S, num_classes, dtype, seed, integer_grid=grid)
        expected = iou_vote_reference(labels, dist, boxes, classes, min_iou, tie_eps)
        assert_same(iou_vote(labels, dist, boxes, classes, min_iou, tie_eps), expected)
        assert_same(
            expected,
            iou_vote_numpy(labels.numpy(), dist.numpy(), boxes.numpy(), classes.numpy(), min_iou, tie_eps),
        )
        if min_iou < 0:  # every pixel whose class has a seed votes, the others do not
            has_seed = torch.isin(labels, classes)
            assert torch.equal(expected[0] >= 0, has_seed)


@pytest.mark.parametrize("dtype", DTYPES)
def test_casnet_iii_c_vote_matches_reference_with_many_exact_ties(dtype):
    """Equal-size seeds on an integer lattice (some duplicated, as overlapping detections can be) and
    integer distances: many pixels have two or more seeds at exactly the best IoU; all must agree."""
    g = torch.Generator().manual_seed(123)
    H, W = 24, 32
    labels = torch.randint(0, 2, (H, W), generator=g)
    dist = torch.randint(0, 4, (4, H, W), generator=g).to(dtype)
    xy = torch.randint(-2, 30, (30, 2), generator=g).to(dtype)
    boxes = torch.cat([xy, xy + 4], dim=1)
    classes = torch.randint(0, 2, (30,), generator=g)
    boxes, classes = torch.cat([boxes, boxes[:10]]), torch.cat([classes, classes[:10]])
    cy, cx = torch.meshgrid(torch.arange(H, dtype=dtype) + 0.5, torch.arange(W, dtype=dtype) + 0.5, indexing="ij")
    pix = torch.stack([cx - dist[0], cy - dist[1], cx + dist[2], cy + dist[3]], dim=-1).view(-1, 4)
    same = labels.view(-1, 1) == classes.view(1, -1)
    ious = torch.where(same, box_iou(pix.double(), boxes.double()), torch.tensor(-1.0, dtype=torch.float64))
    best = ious.amax(1, keepdim=True)
    n_ties = ((ious == best) & (best > 0)).sum(1)
    assert (n_ties >= 2).sum() >= 50, "the case should contain exact ties"
    for tie_eps in (0.0, 1e-3, 0.05):
        expected = iou_vote_reference(labels, dist, boxes, classes, 0.0, tie_eps)
        assert_same(iou_vote(labels, dist, boxes, classes, 0.0, tie_eps), expected)
        assert_same(expected, iou_vote_numpy(*(t.numpy() for t in (labels, dist, boxes, classes)), 0.0, tie_eps))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("min_iou,tie_eps", [(0.0, 1e-3), (0.2, 0.05), (-1.0, 0.0)])
def test_casnet_iii_c_vote_matches_brute_force_definition(seed, min_iou, tie_eps):
    labels, dist, boxes, classes = random_case(9, 11, 8, 2, torch.float64, seed, integer_grid=seed % 2 == 0)
    dist[:, 0, 0] = float("nan")  # a pixel without a finite box
    boxes[0, 2] = float("inf")  # a seed that cannot be voted for
    expected = brute_force(labels, dist, boxes, classes, min_iou, tie_eps)
    ids, support = iou_vote(labels, dist, boxes, classes, min_iou, tie_eps)
    assert np.array_equal(ids.numpy(), expected)
    assert ids[0, 0] == -1 and support[0] == 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_casnet_iii_c_chosen_seed_is_best_by_torchvision_box_iou(dtype):
    """Independent check with torchvision's box_iou: class, best IoU (up to tie_eps), min_iou."""
    min_iou, tie_eps = 0.1, 1e-3
    labels, dist, boxes, classes = random_case(20, 24, 30, 3, dtype, seed=7)
    ids, _ = iou_vote(labels, dist, boxes, classes, min_iou, tie_eps)
    H, W = labels.shape
    cy, cx = torch.meshgrid(torch.arange(H, dtype=dtype) + 0.5, torch.arange(W, dtype=dtype) + 0.5, indexing="ij")
    pix_boxes = torch.stack([cx - dist[0], cy - dist[1], cx + dist[2], cy + dist[3]], dim=-1).view(-1, 4)
    ious = box_iou(pix_boxes.double(), boxes.double())  # (H*W, S)
    same = labels.view(-1, 1) == classes.view(1, -1)
    best = torch.where(same, ious, torch.full_like(ious, -1.0)).amax(dim=1)
    flat = ids.view(-1)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assigned = flat >= 0
    assert assigned.any() and (~assigned).any()
    chosen_iou = ious[assigned.nonzero().view(-1), flat[assigned]]
    assert torch.equal(classes[flat[assigned]], labels.view(-1)[assigned])  # a seed of the pixel's class
    assert (chosen_iou >= best[assigned] - tie_eps - tol).all()  # (nearly) the best IoU
    assert (best[assigned] > min_iou - tol).all()
    assert (best[~assigned] <= min_iou + tol).all()  # the others had no good enough seed


# ------------------------------------------------------------------------------------------------
# hand-built cases, one per rule
# ------------------------------------------------------------------------------------------------
def test_casnet_iii_c_pixel_votes_for_highest_iou_seed():
    labels, dist = one_pixel(5, 5, 5, 5)  # pixel box (-4.5, -4.5, 5.5, 5.5)
    boxes = torch.tensor(
        [[-1.5, -4.5, 8.5, 5.5], [-4.5, -4.5, 5.5, 5.5], [20.0, 20.0, 30.0, 30.0]], dtype=torch.float64
    )  # IoU 0.538, 1.0, 0.0
    ids, support = iou_vote(labels, dist, boxes, torch.zeros(3, dtype=torch.int64), tie_eps=0.0)
    assert ids.item() == 1
    assert support.tolist() == [0, 1, 0]


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_casnet_iii_c_near_tie_decided_by_centre_distance(order):
    # Pixel box (-4.5, -4.5, 5.5, 5.5), centre (0.5, 0.5).
    labels, dist = one_pixel(5, 5, 5, 5)
    shifted = [-3.5, -4.5, 6.5, 5.5]  # shifted by 1: IoU 90/110 = 0.818, centre distance 1
    grown = [-5.1, -5.1, 6.1, 6.1]  # same centre, larger: IoU 100/125.44 = 0.797, centre distance 0
    boxes = torch.tensor([[shifted, grown][k] for k in order], dtype=torch.float64)
    classes = torch.zeros(2, dtype=torch.int64)
    i_shifted, i_grown = order.index(0), order.index(1)
    # IoUs within tie_eps: the nearer centre wins even with the lower IoU ...
    assert iou_vote(labels, dist, boxes, classes, tie_eps=0.05)[0].item() == i_grown
    # ... outside tie_eps the higher IoU wins.
    assert iou_vote(labels, dist, boxes, classes, tie_eps=1e-3)[0].item() == i_shifted


def test_casnet_iii_c_exact_tie_goes_to_lower_seed_index():
    labels, dist = one_pixel(5, 5, 5, 5)  # pixel box (-4.5, -4.5, 5.5, 5.5)
    right = [-2.5, -4.5, 7.5, 5.5]  # shifted by +2: IoU 80/120, centre distance 2
    left = [-6.5, -4.5, 3.5, 5.5]  # shifted by -2: the same IoU and distance
    perfect = [-4.5, -4.5, 5.5, 5.5]  # IoU 1, but of another class
    cases = [
        ([right, left], [0, 0], 0),
        ([left, right], [0, 0], 0),
        ([perfect, left, right], [1, 0, 0], 1),  # the lowest index among the pixel's class
    ]
    for boxes, classes, expected in cases:
        ids, support = iou_vote(labels, dist, torch.tensor(boxes, dtype=torch.float64), torch.tensor(classes))
        assert ids.item() == expected
        assert support[expected] == 1 and support.sum() == 1


@pytest.mark.parametrize("dtype", DTYPES)
def test_casnet_iii_c_tie_breaking_on_an_image(dtype):
    """Two seeds of one class side by side: the middle column overlaps both equally, at equal centre
    distance, and goes to the lower seed index; every other column goes to the seed it overlaps most."""
    H, W = 4, 9
    labels = torch.zeros(H, W, dtype=torch.int64)
    dist = torch.full((4, H, W), 2.0, dtype=dtype)  # every pixel predicts a 4x4 box centred on itself
    left, right = [0.0, 0.0, 4.0, 4.0], [5.0, 0.0, 9.0, 4.0]
    classes = torch.zeros(2, dtype=torch.int64)
    ids, support = iou_vote(labels, dist, torch.tensor([left, right], dtype=dtype), classes, tie_eps=0.0)
    assert torch.equal(ids, torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1]).expand(H, W))
    assert support.tolist() == [20, 16]
    ids, support = iou_vote(labels, dist, torch.tensor([right, left], dtype=dtype), classes, tie_eps=0.0)
    assert torch.equal(ids, torch.tensor([1, 1, 1, 1, 0, 0, 0, 0, 0]).expand(H, W))
    assert support.tolist() == [20, 16]


@pytest.mark.parametrize("dtype", DTYPES)
def test_casnet_iii_c_min_iou_threshold(dtype):
    labels, dist = one_pixel(5, 5, 5, 5, dtype)  # area 100
    boxes = torch.tensor([[-4.5, -4.5, 15.5, 5.5]], dtype=dtype)  # contains it, area 200: IoU = 0.5 exactly
    classes = torch.zeros(1, dtype=torch.int64)
    assert iou_vote(labels, dist, boxes, classes, min_iou=0.49)[0].item() == 0
    assert iou_vote(labels, dist, boxes, classes, min_iou=0.5)[0].item() == -1  # "not above" min_iou
    assert iou_vote(labels, dist, boxes, classes, min_iou=0.6)[1].tolist() == [0]
    # A disjoint seed has IoU 0: rejected by the default min_iou = 0, accepted by a negative one.
    far = torch.tensor([[50.0, 50.0, 60.0, 60.0]], dtype=dtype)
    assert iou_vote(labels, dist, far, classes)[0].item() == -1
    assert iou_vote(labels, dist, far, classes, min_iou=-1.0)[0].item() == 0


def test_casnet_iii_c_pixels_of_classes_without_seeds_get_minus_one():
    labels, dist, boxes, classes = random_case(12, 13, 6, 3, torch.float32, seed=3)
    classes[:] = 1  # only class 1 has seeds
    labels[0] = 7  # and a class no seed has
    labels[1] = -1  # an "ignore" label
    labels[2] = 1 << 40  # large ids are fine
    ids, support = iou_vote(labels, dist, boxes, classes, min_iou=-1.0)
    assert (ids[labels != 1] == -1).all()
    assert (ids[labels == 1] >= 0).all()  # min_iou < 0: every pixel of a class with seeds votes
    assert support.sum() == (labels == 1).sum()


def test_casnet_iii_c_class_ids_far_apart():
    labels, dist, boxes, _ = random_case(8, 9, 4, 1, torch.float64, seed=4)
    classes = torch.tensor([-(1 << 50), 3, 1 << 50, 3])
    labels = classes[torch.randint(0, 4, labels.shape, generator=torch.Generator().manual_seed(1))]
    assert_same(iou_vote(labels, dist, boxes, classes), iou_vote_reference(labels, dist, boxes, classes))
    ids, _ = iou_vote(labels, dist, boxes, classes, min_iou=-1.0)
    assert torch.equal(classes[ids], labels)


# ------------------------------------------------------------------------------------------------
# empty and degenerate inputs
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_casnet_iii_c_no_seeds(dtype):
    labels, dist, _, _ = random_case(5, 6, 0, 2, dtype, seed=5)
    ids, support = iou_vote(labels, dist, torch.zeros(0, 4, dtype=dtype), torch.zeros(0, dtype=torch.int64))
    assert ids.shape == (5, 6) and (ids == -1).all()
    assert support.shape == (0,) and support.dtype == torch.int64


@pytest.mark.parametrize("H,W", [(0, 5), (4, 0), (0, 0)])
def test_casnet_iii_c_empty_image(H, W):
    labels, dist = torch.zeros(H, W, dtype=torch.int64), torch.zeros(4, H, W)
    boxes, classes = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0]]), torch.zeros(2, dtype=torch.int64)
    ids, support = iou_vote(labels, dist, boxes, classes)
    assert ids.shape == (H, W) and ids.dtype == torch.int64
    assert support.tolist() == [0, 0]
    assert_same(iou_vote_reference(labels, dist, boxes, classes), (ids, support))


@pytest.mark.parametrize("dtype", DTYPES)
def test_casnet_iii_c_zero_area_boxes_have_zero_iou(dtype):
    classes = torch.zeros(2, dtype=torch.int64)
    # A zero-area pixel box (all distances 0) and a zero-area seed at the same point: union 0 -> IoU 0.
    labels, dist = one_pixel(0, 0, 0, 0, dtype)
    point = torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.5, 0.5]], dtype=dtype)
    assert iou_vote(labels, dist, point, classes)[0].item() == -1
    assert iou_vote(labels, dist, point, classes, min_iou=-1.0)[0].item() == 0  # IoU 0 for both: index
    # A zero-width seed (x1 == x2) and an inverted seed (x2 < x1) inside the pixel box: IoU 0.
    labels, dist = one_pixel(5, 5, 5, 5, dtype)
    flat = torch.tensor([[0.0, -2.0, 0.0, 2.0], [3.0, -2.0, 1.0, 2.0]], dtype=dtype)
    assert iou_vote(labels, dist, flat, classes)[0].item() == -1
    # A zero-width pixel box (l = r = 0) inside a normal seed: IoU 0 as well.
    labels, dist = one_pixel(0, 5, 0, 5, dtype)
    normal = torch.tensor([[-4.5, -4.5, 5.5, 5.5], [-4.5, -4.5, 5.5, 5.5]], dtype=dtype)
    assert iou_vote(labels, dist, normal, classes)[0].item() == -1
    # Negative distances make an inverted pixel box: IoU 0.
    labels, dist = one_pixel(-3, 5, -3, 5, dtype)
    assert iou_vote(labels, dist, normal, classes)[0].item() == -1


def test_casnet_iii_c_non_finite_inputs_cast_no_vote():
    labels, dist, boxes, classes = random_case(10, 10, 6, 1, torch.float32, seed=6)
    labels.zero_()  # the class of every seed
    dist[0, :3] = float("nan")
    dist[3, 5] = float("inf")
    boxes[2, 1] = float("nan")
    ids, support = iou_vote(labels, dist, boxes, classes, min_iou=-1.0)
    assert (ids[:3] == -1).all() and (ids[5] == -1).all()
    assert (ids != 2).all() and support[2] == 0
    assert (ids[6:] >= 0).all()  # min_iou < 0: every other pixel votes
    assert_same((ids, support), iou_vote_reference(labels, dist, boxes, classes, min_iou=-1.0))


# ------------------------------------------------------------------------------------------------
# structural properties
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_casnet_iii_c_each_pixel_one_instance_and_support_is_bincount(dtype):
    S = 25
    labels, dist, boxes, classes = random_case(30, 40, S, 4, dtype, seed=8)
    ids, support = iou_vote(labels, dist, boxes, classes)
    assert ids.shape == labels.shape and ids.dtype == torch.int64
    assert ((ids >= -1) & (ids < S)).all()
    masks = torch.stack([ids == s for s in range(S)])  # the instance masks
    assert (masks.sum(0) <= 1).all()  # no overlaps
    assert torch.equal(masks.any(0), ids >= 0)
    assert torch.equal(masks.sum((1, 2)), support)
    assert torch.equal(support, torch.bincount(ids[ids >= 0], minlength=S))
    assigned = ids >= 0
    assert torch.equal(classes[ids[assigned]], labels[assigned])  # each instance has a single class


# ------------------------------------------------------------------------------------------------
# input handling
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_casnet_iii_c_non_contiguous_inputs(dtype):
    labels, dist, boxes, classes = random_case(14, 18, 10, 3, dtype, seed=9)
    expected = iou_vote(labels, dist, boxes, classes)
    labels_nc = labels.t().contiguous().t()
    dist_nc = dist.permute(1, 2, 0).contiguous().permute(2, 0, 1)
    boxes_nc = boxes.t().contiguous().t()
    classes_nc = torch.stack([classes, classes], 1)[:, 0]
    for t in (labels_nc, dist_nc, boxes_nc, classes_nc):
        assert not t.is_contiguous()
    assert_same(iou_vote(labels_nc, dist_nc, boxes_nc, classes_nc), expected)
    assert_same(iou_vote_reference(labels_nc, dist_nc, boxes_nc, classes_nc), expected)


@pytest.mark.parametrize("label_dtype", [torch.uint8, torch.int16, torch.int32, torch.int64])
def test_casnet_iii_c_any_integer_label_dtype(label_dtype):
    labels, dist, boxes, classes = random_case(9, 10, 7, 3, torch.float32, seed=10)
    labels = labels.clamp(min=0)
    expected = iou_vote(labels, dist, boxes, classes)
    assert_same(iou_vote(labels.to(label_dtype), dist, boxes, classes.to(torch.int32)), expected)


def test_casnet_iii_c_accepts_tensors_requiring_grad():
    labels, dist, boxes, classes = random_case(6, 6, 4, 2, torch.float64, seed=11)
    ids, support = iou_vote(labels, dist.requires_grad_(), boxes.requires_grad_(), classes)
    assert not ids.requires_grad and not support.requires_grad


def _good():
    return random_case(4, 5, 3, 2, torch.float32, seed=12)


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda a: a.update(sem_labels=a["sem_labels"].float()), "integer"),
        (lambda a: a.update(sem_labels=a["sem_labels"] > 0), "integer"),
        (lambda a: a.update(sem_labels=a["sem_labels"][None]), "dimensions"),
        (lambda a: a.update(sem_labels=a["sem_labels"].tolist()), "torch.Tensor"),
        (lambda a: a.update(distances=a["distances"][:3]), "shape"),
        (lambda a: a.update(distances=a["distances"][:, :, :4]), "shape"),
        (lambda a: a.update(distances=a["distances"].long()), "floating"),
        (lambda a: a.update(distances=a["distances"].half(), seed_boxes=a["seed_boxes"].half()), "float32"),
        (lambda a: a.update(seed_boxes=a["seed_boxes"].double()), "dtype"),
        (lambda a: a.update(seed_boxes=a["seed_boxes"][:, :3]), "shape"),
        (lambda a: a.update(seed_boxes=a["seed_boxes"].view(-1)), "dimensions"),
        (lambda a: a.update(seed_classes=a["seed_classes"][:2]), "shape"),
        (lambda a: a.update(seed_classes=a["seed_classes"].float()), "integer"),
        (lambda a: a.update(seed_boxes=a["seed_boxes"].to("meta")), "device"),
        (lambda a: a.update(min_iou=float("nan")), "min_iou"),
        (lambda a: a.update(min_iou="0.5"), "min_iou"),
        (lambda a: a.update(tie_eps=-0.1), "tie_eps"),
        (lambda a: a.update(tie_eps=float("inf")), "tie_eps"),
    ],
)
def test_casnet_iii_c_bad_inputs_raise_value_error(mutate, message):
    labels, dist, boxes, classes = _good()
    args = dict(sem_labels=labels, distances=dist, seed_boxes=boxes, seed_classes=classes)
    mutate(args)
    with pytest.raises(ValueError, match=message):
        iou_vote(**args)
    with pytest.raises(ValueError, match=message):
        iou_vote_reference(**args)


def test_casnet_iii_c_numpy_reference_rejects_bad_inputs():
    labels, dist, boxes, classes = (t.numpy() for t in _good())
    with pytest.raises(ValueError, match="distances"):
        iou_vote_numpy(labels, dist[:3], boxes, classes)
    with pytest.raises(ValueError, match="seed_boxes"):
        iou_vote_numpy(labels, dist, boxes.astype(np.float64), classes)
    with pytest.raises(ValueError, match="sem_labels"):
        iou_vote_numpy(labels.astype(np.float32), dist, boxes, classes)


def test_casnet_iii_c_compiled_op_checks_its_inputs():
    op = get_op("iou_vote")
    if op is None:
        pytest.skip("the compiled op is not available")
    labels, dist, boxes, classes = _good()
    with pytest.raises(RuntimeError, match="distances must be"):
        op(labels, dist[:3], boxes, classes, 0.0, 1e-3)
    with pytest.raises(RuntimeError, match="dtype of distances"):
        op(labels, dist, boxes.double(), classes, 0.0, 1e-3)
    with pytest.raises(RuntimeError, match="integer"):
        op(labels.float(), dist, boxes, classes, 0.0, 1e-3)
    with pytest.raises(RuntimeError, match="tie_eps"):
        op(labels, dist, boxes, classes, 0.0, -1.0)


# ------------------------------------------------------------------------------------------------
# CUDA
# ------------------------------------------------------------------------------------------------
@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("grid", [False, True])
def test_casnet_iii_c_cuda_matches_cpu(dtype, grid):
    if not extension_has_cuda():
        pytest.skip("instseg._C has no CUDA kernels")
    for H, W, S, C in ((1, 1, 1, 1), (33, 64, 40, 8), (128, 257, 100, 8)):
        labels, dist, boxes, classes = random_case(H, W, S, C, dtype, seed=H + S, integer_grid=grid)
        dist[0, 0, :2] = float("nan")
        cpu = iou_vote(labels, dist, boxes, classes, 0.05, 1e-2)
        gpu = iou_vote(*(t.cuda() for t in (labels, dist, boxes, classes)), 0.05, 1e-2)
        assert gpu[0].is_cuda and gpu[1].is_cuda
        assert_same(gpu, cpu)
        assert_same(iou_vote_reference(*(t.cuda() for t in (labels, dist, boxes, classes)), 0.05, 1e-2), cpu)
    # empty image, no seeds
    cuda = dict(device="cuda")
    long = dict(dtype=torch.int64, device="cuda")
    ids, support = iou_vote(
        torch.zeros(0, 3, **long),
        torch.zeros(4, 0, 3, dtype=dtype, **cuda),
        torch.zeros(2, 4, dtype=dtype, **cuda),
        torch.zeros(2, **long),
    )
    assert ids.shape == (0, 3) and support.tolist() == [0, 0]
    ids, support = iou_vote(
        torch.zeros(3, 3, **long),
        torch.ones(4, 3, 3, dtype=dtype, **cuda),
        torch.zeros(0, 4, dtype=dtype, **cuda),
        torch.zeros(0, **long),
    )
    assert (ids == -1).all() and support.shape == (0,)


@requires_cuda
def test_casnet_iii_c_cuda_and_cpu_inputs_mixed_raise():
    labels, dist, boxes, classes = _good()
    with pytest.raises(ValueError, match="device"):
        iou_vote(labels.cuda(), dist, boxes, classes)
