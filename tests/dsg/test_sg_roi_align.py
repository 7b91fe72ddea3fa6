"""Shape-guided RoIAlign (DSG Sec. 3.4, Eq. 1-2): the compiled op, its pure-PyTorch reference, the module and
the multi-level pooler.

What every op is tested for (opcheck, parity with the reference in float32/float64, gradcheck, empty inputs, meta
tensors, torch.compile, registration, fallback) comes from the shared harness (tests/ops/harness.py) through
TestSgRoIAlignOp; the tests below are specific to SgRoIAlign. Tests parametrised over ``impl`` run both on the
compiled op (skipped when instseg._C is not built) and on the reference, so each is checked against torchvision's
RoIAlign independently.
"""

import pytest
import torch
import torchvision

import instseg.extension as ext
from dsg.layers import SgROIAlign, sg_roi_align, sg_roi_align_reference
from tests.ops.harness import OpTester, Sample
from tests.utils import requires_cuda, requires_detectron2

OP_NAMES = ("sg_roi_align_forward", "sg_roi_align_backward")


def compiled_available() -> bool:
    return all(ext.get_op(name) is not None for name in OP_NAMES)


requires_compiled = pytest.mark.skipif(
    not compiled_available(), reason="instseg._C (csrc/sg_roi_align) is not built: run `pip install -e .`"
)

IMPLS = [
    pytest.param(sg_roi_align, id="compiled", marks=requires_compiled),
    pytest.param(sg_roi_align_reference, id="reference"),
]

# (N, C, H, W), K, output size, probs map (Hp, Wp), spatial_scale
SHAPES = [
    ((2, 3, 10, 13), 7, (3, 4), (5, 6), 0.25),
    ((1, 5, 16, 16), 12, (7, 7), (28, 28), 0.5),
    ((3, 2, 7, 5), 4, (2, 2), (1, 3), 1.0),
]


def random_rois(num, batch, height, width, spatial_scale, dtype=torch.float64, generator=None, max_frac=0.7):
    """(K, 5) RoIs in image coordinates; many reach past the map's border (some lie fully outside)."""
    img_h, img_w = height / spatial_scale, width / spatial_scale
    g = generator
    x1 = torch.rand(num, generator=g, dtype=torch.float64) * 1.4 * img_w - 0.3 * img_w
    y1 = torch.rand(num, generator=g, dtype=torch.float64) * 1.4 * img_h - 0.3 * img_h
    w = torch.rand(num, generator=g, dtype=torch.float64) * max_frac * img_w
    h = torch.rand(num, generator=g, dtype=torch.float64) * max_frac * img_h
    b = torch.randint(0, batch, (num,), generator=g).to(torch.float64)
    return torch.stack([b, x1, y1, x1 + w, y1 + h], dim=1).to(dtype)


def make_case(shape, num_rois, probs_size, spatial_scale, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)
    rois = random_rois(num_rois, shape[0], shape[2], shape[3], spatial_scale, dtype, g)
    probs = torch.rand(num_rois, *probs_size, generator=g, dtype=torch.float64).to(dtype)
    return x, rois, probs


def tol(dtype):
    return dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)


class TestSgRoIAlignOp(OpTester):
    """The shared op tests (tests/ops/harness.py) on SgRoIAlign: 3 x 4 bins, 2 x 2 samples, aligned, stride 2."""

    forward_op, backward_op = OP_NAMES
    wrapper_module = "dsg.layers.sg_roi_align"
    OUTPUT_SIZE, SCALE, RATIO, ALIGNED = (3, 4), 0.5, 2, True

    def fn(self, *args):
        return sg_roi_align(*args)

    def reference(self, *args):
        return sg_roi_align_reference(*args)

    def _sample(self, x, rois, probs, device):
        args = (x, rois, probs, self.OUTPUT_SIZE, self.SCALE, self.RATIO, self.ALIGNED)
        return Sample(tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args), grad_args=(0, 2))

    def sample(self, dtype, device="cpu", seed=0):
        return self._sample(*make_case((2, 3, 10, 13), 6, (5, 6), self.SCALE, dtype, seed=seed), device)

    def empty_samples(self, dtype, device="cpu"):
        x, rois, probs = make_case((2, 3, 8, 9), 3, (4, 4), self.SCALE, dtype)
        return [
            self._sample(x, rois[:0], probs[:0], device),  # no RoI
            self._sample(x[:, :0], rois, probs, device),  # no channel
        ]

    def op_args(self, args):
        x, rois, probs, (ph, pw), scale, ratio, aligned = args
        return x, rois, probs, scale, ph, pw, ratio, aligned

    def backward_op_args(self, args, grad):
        return (grad, *self.op_args(args), [True, True])

    def expected_shapes(self, args):
        x, rois, _, (ph, pw) = args[:4]
        return [((rois.shape[0], x.shape[1], ph, pw), x.dtype)]


# ---------------------------------------------------------------------------------------------------------
# The compiled op against the reference (forward and both gradients).
# ---------------------------------------------------------------------------------------------------------
@requires_compiled
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("shape,num_rois,output_size,probs_size,scale", SHAPES)
def test_dsg_eq2_compiled_matches_reference(
    dtype, aligned, sampling_ratio, shape, num_rois, output_size, probs_size, scale
):
    x, rois, probs = make_case(shape, num_rois, probs_size, scale, dtype, seed=sampling_ratio + 3 * aligned)
    xa, pa = x.clone().requires_grad_(), probs.clone().requires_grad_()
    xb, pb = x.clone().requires_grad_(), probs.clone().requires_grad_()
    out = sg_roi_align(xa, rois, pa, output_size, scale, sampling_ratio, aligned)
    ref = sg_roi_align_reference(xb, rois, pb, output_size, scale, sampling_ratio, aligned)
    assert out.shape == (num_rois, shape[1], *output_size)
    assert out.abs().sum() > 0
    torch.testing.assert_close(out, ref, **tol(dtype))
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
    ga = torch.autograd.grad(out, (xa, pa), grad)
    gb = torch.autograd.grad(ref, (xb, pb), grad)
    torch.testing.assert_close(ga[0], gb[0], **tol(dtype))
    torch.testing.assert_close(ga[1], gb[1], **tol(dtype))


# ---------------------------------------------------------------------------------------------------------
# Eq. 2 with P = 0 and P = c against torchvision's RoIAlign.
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2, -1, 1])
def test_dsg_eq2_zero_probs_equals_roi_align(impl, dtype, aligned, sampling_ratio):
    for i, (shape, num_rois, output_size, probs_size, scale) in enumerate(SHAPES):
        x, rois, _ = make_case(shape, num_rois, probs_size, scale, dtype, seed=10 + i)
        probs = torch.zeros(num_rois, *probs_size, dtype=dtype)
        out = impl(x, rois, probs, output_size, scale, sampling_ratio, aligned)
        expected = torchvision.ops.roi_align(x, rois, output_size, scale, sampling_ratio, aligned)
        assert out.abs().sum() > 0
        torch.testing.assert_close(out, expected, **tol(dtype))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("constant", [0.5, -0.25, 3.0])
def test_dsg_eq2_constant_probs_scales_roi_align(impl, aligned, constant):
    shape, num_rois, output_size, probs_size, scale = SHAPES[1]
    x, rois, _ = make_case(shape, num_rois, probs_size, scale, torch.float64, seed=4)
    probs = torch.full((num_rois, *probs_size), constant, dtype=torch.float64)
    for sampling_ratio in (0, 2):
        out = impl(x, rois, probs, output_size, scale, sampling_ratio, aligned)
        expected = (1 + constant) * torchvision.ops.roi_align(x, rois, output_size, scale, sampling_ratio, aligned)
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
def test_dsg_eq2_mean_of_per_sample_products_hand_computed(impl):
    # DSG Eq. 2 with both f and P varying inside every bin: F(h, w) = sum_i f_i * (1 + p_i) / N, the mean of
    # the per-sample products, which differs from mean(f) * (1 + mean(p)) when f and p covary in a bin.
    # Features (image 1 of 2; image 0 and rows 0 and 5 of image 1 hold 100s, which no sample may touch):
    F = [
        [100, 100, 100, 100, 100],
        [1, 3, 5, 2, 0],
        [4, 0, 2, 8, 6],
        [2, 2, 6, 0, 4],
        [0, 4, 1, 3, 7],
        [100, 100, 100, 100, 100],
    ]
    x = torch.full((2, 1, 6, 5), 100.0, dtype=torch.float64)
    x[1, 0] = torch.tensor(F, dtype=torch.float64)
    # RoI (0.5, 1.0)-(4.5, 5.0) on image 1, aligned: on the map x1 = 0, y1 = 0.5, 4 x 4, so 2 x 2 bins of 2 x 2;
    # sampling_ratio 2 puts the samples at x = 0.5, 1.5 | 2.5, 3.5 and y = 1, 2 | 3, 4: f is the mean of the two
    # horizontal neighbours, e.g. f(x=0.5, y=1) = (1 + 3) / 2 = 2. Per row y, at x = 0.5, 1.5, 2.5, 3.5:
    #   y=1: 2, 4, 3.5, 1     y=2: 2, 1, 5, 7     y=3: 2, 4, 3, 2     y=4: 2, 2.5, 2, 5
    rois = torch.tensor([[1, 0.5, 1.0, 4.5, 5.0]], dtype=torch.float64)
    # P is 4 x 2 over the RoI (Eq. 1): relative positions 1/8, 3/8, 5/8, 7/8 give d = 4u - 0.5 = 0, 1, 2, 3 (P's
    # rows, no interpolation) and c = 2u - 0.5 = -0.25, 0.25, 0.75, 1.25, clamped to 0, 0.25, 0.75, 1: along x
    # p = P0, 0.75 P0 + 0.25 P1, 0.25 P0 + 0.75 P1, P1. Per row:
    #   P row 0 (0.2, 0.6): 0.2, 0.3, 0.5, 0.6      P row 1 (1.0, 0.2): 1.0, 0.8, 0.4, 0.2
    #   P row 2 (0.0, 0.8): 0.0, 0.2, 0.6, 0.8      P row 3 (0.4, 0.0): 0.4, 0.3, 0.1, 0.0
    probs = torch.tensor([[[0.2, 0.6], [1.0, 0.2], [0.0, 0.8], [0.4, 0.0]]], dtype=torch.float64)
    expected = torch.tensor(
        [
            [
                # bin (0, 0): samples (x, y) = (0.5, 1), (1.5, 1), (0.5, 2), (1.5, 2)
                [
                    (2 * 1.2 + 4 * 1.3 + 2 * 2.0 + 1 * 1.8) / 4,  # = 3.35  (mean(f) * (1 + mean(p)) = 3.54375)
                    # bin (0, 1): (2.5, 1), (3.5, 1), (2.5, 2), (3.5, 2)
                    (3.5 * 1.5 + 1 * 1.6 + 5 * 1.4 + 7 * 1.2) / 4,
                ],  # = 5.5625  (product of means: 5.878125)
                # bin (1, 0): (0.5, 3), (1.5, 3), (0.5, 4), (1.5, 4)
                [
                    (2 * 1.0 + 4 * 1.2 + 2 * 1.4 + 2.5 * 1.3) / 4,  # = 3.2125  (product of means: 3.215625)
                    # bin (1, 1): (2.5, 3), (3.5, 3), (2.5, 4), (3.5, 4)
                    (3 * 1.6 + 2 * 1.8 + 2 * 1.1 + 5 * 1.0) / 4,
                ],  # = 3.9  (product of means: 4.125)
            ]
        ],
        dtype=torch.float64,
    )
    out = impl(x, rois, probs, (2, 2), 1.0, 2, True)
    assert out.shape == (1, 1, 2, 2)
    torch.testing.assert_close(out[0], expected, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------
# Eq. 1: where the map is sampled (it covers the RoI; pixel centres at k + 0.5; clamped at its border).
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("aligned", [True, False])
def test_dsg_eq1_map_covers_the_roi(impl, aligned):
    # Constant features: F_{R,P} = 1 + mean of p over the bin's samples. With output == map size and one
    # sample per bin, every sample lands on a map pixel centre (output = 1 + P); with a map twice as fine and
    # 2 x 2 samples, each bin averages a 2 x 2 block of the map.
    x = torch.ones(1, 1, 20, 30, dtype=torch.float64)
    rois = torch.tensor([[0, 3.3, 2.1, 17.9, 15.2], [0, 10.0, 1.0, 28.5, 19.0]], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(2, 4, 5, generator=g, dtype=torch.float64)
    out = impl(x, rois, probs, (4, 5), 1.0, 1, aligned)
    torch.testing.assert_close(out[:, 0], 1 + probs, rtol=1e-12, atol=1e-12)

    fine = torch.rand(2, 8, 10, generator=g, dtype=torch.float64)
    out = impl(x, rois, fine, (4, 5), 1.0, 2, aligned)
    expected = 1 + torch.nn.functional.avg_pool2d(fine.unsqueeze(1), 2)[:, 0]
    torch.testing.assert_close(out[:, 0], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
def test_dsg_eq1_bilinear_and_clamped_at_map_border(impl):
    # A 2 x 2 map sampled by a 4 x 4 output (one sample per bin): relative positions u = (p + 0.5) / 4 give
    # c = 2u - 0.5 = -0.25, 0.25, 0.75, 1.25, clamped to [0, 1]; p = A P A^T with these linear weights.
    x = torch.ones(1, 1, 12, 12, dtype=torch.float64)
    rois = torch.tensor([[0, 1.7, 2.2, 9.1, 10.6]], dtype=torch.float64)
    probs = torch.tensor([[[0.1, 0.9], [0.4, 0.2]]], dtype=torch.float64)
    A = torch.tensor([[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]], dtype=torch.float64)
    out = impl(x, rois, probs, 4, 1.0, 1, True)
    torch.testing.assert_close(out[0, 0], 1 + A @ probs[0] @ A.T, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------
# Gradients (float64 gradcheck) with respect to input and probs.
# ---------------------------------------------------------------------------------------------------------
def _gradcheck(impl, aligned, sampling_ratio):
    x, rois, probs = make_case((2, 2, 6, 7), 5, (3, 4), 0.5, torch.float64, seed=7)
    x.requires_grad_()
    probs.requires_grad_()

    def fn(inp, p):
        return impl(inp, rois, p, (2, 3), 0.5, sampling_ratio, aligned)

    assert torch.autograd.gradcheck(fn, (x, probs), eps=1e-6, atol=1e-6)


@requires_compiled
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_dsg_eq2_gradcheck_compiled(aligned, sampling_ratio):
    _gradcheck(sg_roi_align, aligned, sampling_ratio)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_dsg_eq2_gradcheck_reference(aligned, sampling_ratio):
    _gradcheck(sg_roi_align_reference, aligned, sampling_ratio)


@requires_compiled
def test_dsg_eq2_backward_only_requested_gradients():
    x, rois, probs = make_case((1, 3, 8, 8), 4, (5, 5), 1.0, torch.float64)
    p = probs.clone().requires_grad_()
    sg_roi_align(x, rois, p, 3, 1.0, 2, True).sum().backward()
    ref_p = probs.clone().requires_grad_()
    sg_roi_align_reference(x, rois, ref_p, 3, 1.0, 2, True).sum().backward()
    torch.testing.assert_close(p.grad, ref_p.grad)
    grad_input, grad_probs = torch.ops.instseg.sg_roi_align_backward(
        torch.ones(4, 3, 3, 3, dtype=torch.float64), x, rois, probs, 1.0, 3, 3, 2, True, [True, False]
    )
    assert grad_probs is None and grad_input.shape == x.shape


# ---------------------------------------------------------------------------------------------------------
# Empty, degenerate and out-of-map RoIs; non-contiguous and half-precision inputs.
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", IMPLS)
def test_dsg_eq2_empty_rois(impl):
    x = torch.randn(2, 3, 8, 9, dtype=torch.float64, requires_grad=True)
    rois = torch.zeros(0, 5, dtype=torch.float64)
    probs = torch.zeros(0, 7, 7, dtype=torch.float64, requires_grad=True)
    out = impl(x, rois, probs, (2, 4), 0.5, 0, True)
    assert out.shape == (0, 3, 2, 4)
    # backward through no RoI: zero gradients of the inputs' shapes (both paths are differentiable)
    assert out.requires_grad
    grad_x, grad_probs = torch.autograd.grad(out.sum(), (x, probs), allow_unused=True)
    for grad, inp in ((grad_x, x), (grad_probs, probs)):
        assert grad is not None and grad.shape == inp.shape and grad.dtype == inp.dtype
        assert torch.count_nonzero(grad) == 0


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_dsg_eq2_zero_width_rois(impl, aligned, sampling_ratio):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 2, 10, 10, generator=g, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor(
        [[0, 4.0, 2.0, 4.0, 8.0], [0, 1.0, 5.5, 9.0, 5.5], [0, 3.0, 3.0, 3.0, 3.0]], dtype=torch.float64
    )
    probs = torch.rand(3, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    out = impl(x, rois, probs, (2, 2), 1.0, sampling_ratio, aligned)
    assert torch.isfinite(out).all()
    base = torchvision.ops.roi_align(x.detach(), rois, (2, 2), 1.0, sampling_ratio, aligned)
    torch.testing.assert_close(
        impl(x.detach(), rois, torch.zeros_like(probs), (2, 2), 1.0, sampling_ratio, aligned), base
    )
    if aligned and sampling_ratio == 0:  # RoIAlign's adaptive grid is empty for a zero extent: all zeros
        assert torch.count_nonzero(out) == 0
    else:
        assert torch.count_nonzero(out) > 0
    ref = sg_roi_align_reference(x.detach(), rois, probs.detach(), (2, 2), 1.0, sampling_ratio, aligned)
    torch.testing.assert_close(out, ref)
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(probs.grad).all()


@pytest.mark.parametrize("impl", IMPLS)
def test_dsg_eq2_rois_outside_the_map(impl):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 2, 8, 8, generator=g, dtype=torch.float64)
    rois = torch.tensor(
        [[0, 20.0, 20.0, 30.0, 30.0], [0, -9.0, -9.0, -3.0, -2.5], [0, -3.0, 2.0, 4.0, 12.0], [0, 6.0, 6.0, 11.0, 9.0]],
        dtype=torch.float64,
    )
    probs = torch.rand(4, 3, 3, generator=g, dtype=torch.float64)
    out = impl(x, rois, probs, 3, 1.0, 2, True)
    assert torch.count_nonzero(out[:2]) == 0  # every sample beyond [-1, size]: f = 0
    assert torch.count_nonzero(out[2:]) > 0
    torch.testing.assert_close(out, sg_roi_align_reference(x, rois, probs, 3, 1.0, 2, True))
    zero = impl(x, rois, torch.zeros_like(probs), 3, 1.0, 2, True)
    torch.testing.assert_close(zero, torchvision.ops.roi_align(x, rois, 3, 1.0, 2, True))


@pytest.mark.parametrize("impl", IMPLS)
def test_dsg_eq2_non_contiguous_inputs(impl):
    x, rois, probs = make_case((2, 4, 9, 11), 6, (5, 7), 0.5, torch.float64, seed=9)
    expected = impl(x, rois, probs, (3, 3), 0.5, 2, True)
    x_cl = x.to(memory_format=torch.channels_last)
    rois_nc = torch.cat([rois, torch.zeros(6, 2, dtype=torch.float64)], dim=1)[:, :5]
    probs_t = probs.transpose(1, 2).contiguous().transpose(1, 2)
    x_sliced = torch.cat([x, torch.zeros_like(x)], dim=3)[..., :11]
    assert not (x_cl.is_contiguous() or rois_nc.is_contiguous() or probs_t.is_contiguous() or x_sliced.is_contiguous())
    torch.testing.assert_close(impl(x_cl, rois_nc, probs_t, (3, 3), 0.5, 2, True), expected)
    torch.testing.assert_close(impl(x_sliced, rois, probs, (3, 3), 0.5, 2, True), expected)
    # A non-contiguous upstream gradient (expand) gives the same gradients as a contiguous one.
    xg = x_cl.clone().requires_grad_()
    pg = probs_t.clone().requires_grad_()
    out = impl(xg, rois_nc, pg, (3, 3), 0.5, 2, True)
    out.backward(torch.ones(1, 1, 1, 1, dtype=torch.float64).expand_as(out))
    xr, pr = x.clone().requires_grad_(), probs.clone().requires_grad_()
    sg_roi_align_reference(xr, rois, pr, (3, 3), 0.5, 2, True).sum().backward()
    torch.testing.assert_close(xg.grad, xr.grad)
    torch.testing.assert_close(pg.grad, pr.grad)


@requires_compiled
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("num_rois", [2, 96])
def test_dsg_eq2_planar_and_channels_last_kernels_agree(dtype, num_rois):
    # The CPU kernel reads the features in place (planar) when the RoIs sample little of the map and through
    # a channels-last copy when they sample much of it or the input is channels-last already. Two small RoIs
    # on a 64 x 64 map run the planar loops for an NCHW input; 96 RoIs of 7 x 7 bins x 4 samples run the
    # channels-last ones. A channels-last input always takes the channels-last loops: both must agree with
    # each other and with the reference, forward and backward.
    g = torch.Generator().manual_seed(num_rois)
    x = torch.randn(1, 6, 64, 64, generator=g, dtype=torch.float64).to(dtype)
    rois = random_rois(num_rois, 1, 64, 64, 1.0, dtype, g, max_frac=0.3)
    probs = torch.rand(num_rois, 9, 11, generator=g, dtype=torch.float64).to(dtype)
    grad = torch.randn(num_rois, 6, 7, 7, generator=g, dtype=torch.float64).to(dtype)
    results = []
    for inp, fn in (
        (x, sg_roi_align),
        (x.to(memory_format=torch.channels_last), sg_roi_align),
        (x, sg_roi_align_reference),
    ):
        xi, pi = inp.clone().requires_grad_(), probs.clone().requires_grad_()
        out = fn(xi, rois, pi, 7, 1.0, 2, True)
        results.append((out, *torch.autograd.grad(out, (xi, pi), grad)))
    for planar_or_cl, ref in zip(results[0], results[2]):
        torch.testing.assert_close(planar_or_cl, ref, **tol(dtype))
    for cl, ref in zip(results[1], results[2]):
        torch.testing.assert_close(cl, ref, **tol(dtype))
    assert results[0][0].abs().sum() > 0 and results[0][2].abs().sum() > 0


@requires_compiled
@pytest.mark.parametrize("channels_last", [False, True])
def test_dsg_eq2_compiled_op_is_deterministic_across_thread_counts(channels_last):
    # The CPU kernels split RoIs, or (image, channel block) pairs, among threads without atomics and visit an
    # image's RoIs in ascending order: the same bits whatever the number of threads (and enough work to thread).
    g = torch.Generator().manual_seed(17)
    x = torch.randn(2, 40, 48, 48, generator=g)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    rois = random_rois(64, 2, 48, 48, 1.0, torch.float32, g, max_frac=0.5)
    probs = torch.rand(64, 14, 14, generator=g)
    grad = torch.randn(64, 40, 7, 7, generator=g)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            xi, pi = x.clone().requires_grad_(), probs.clone().requires_grad_()
            out = sg_roi_align(xi, rois, pi, 7, 1.0, 0, True)
            results.append((out.detach(), *torch.autograd.grad(out, (xi, pi), grad)))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dsg_eq2_half_precision_is_computed_in_float32(dtype):
    x, rois, probs = make_case((1, 3, 8, 8), 4, (4, 4), 1.0, torch.float32)
    out = sg_roi_align(x.to(dtype), rois, probs.to(dtype), 2, 1.0, 2, True)
    assert out.dtype == dtype
    expected = sg_roi_align_reference(x.to(dtype).float(), rois, probs.to(dtype).float(), 2, 1.0, 2, True)
    torch.testing.assert_close(out.float(), expected, rtol=1e-2, atol=1e-2)


# ---------------------------------------------------------------------------------------------------------
# Input checks: clear ValueError / RuntimeError messages.
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", IMPLS)
def test_dsg_invalid_inputs_raise_clear_errors(impl):
    x, rois, probs = make_case((2, 3, 8, 8), 4, (5, 5), 1.0, torch.float32)
    with pytest.raises(ValueError, match="'input' must have 4 dimensions"):
        impl(x[0], rois, probs, 2, 1.0, 2, True)
    with pytest.raises(ValueError, match="'input' must be a floating-point tensor"):
        impl(x.to(torch.int32), rois, probs, 2, 1.0, 2, True)
    with pytest.raises(ValueError, match="'rois' must have shape"):
        impl(x, rois[:, 1:], probs, 2, 1.0, 2, True)
    with pytest.raises(ValueError, match="'rois' must be a floating-point tensor"):
        impl(x, rois.long(), probs, 2, 1.0, 2, True)
    with pytest.raises(ValueError, match="'probs' must have shape"):
        impl(x, rois, probs[:3], 2, 1.0, 2, True)
    with pytest.raises(ValueError, match="'probs' must have 3 dimensions"):
        impl(x, rois, probs[:, 0], 2, 1.0, 2, True)
    with pytest.raises(ValueError, match="must be non-empty"):
        impl(x, rois, probs[:, :0], 2, 1.0, 2, True)
    with pytest.raises(ValueError, match="must share one dtype"):
        impl(x, rois, probs.double(), 2, 1.0, 2, True)
    with pytest.raises(ValueError, match="same device"):
        impl(x, rois, probs.to("meta"), 2, 1.0, 2, True)
    with pytest.raises(ValueError, match="output_size"):
        impl(x, rois, probs, (2, 0), 1.0, 2, True)
    with pytest.raises(ValueError, match="must be a torch.Tensor"):
        impl(x, rois.tolist(), probs, 2, 1.0, 2, True)
    bad = rois.clone()
    bad[1, 0] = 2  # batch has 2 images
    with pytest.raises((ValueError, RuntimeError), match=r"batch ind"):
        impl(x, bad, probs, 2, 1.0, 2, True)


@requires_compiled
def test_dsg_compiled_op_checks_its_arguments():
    x, rois, probs = make_case((2, 3, 8, 8), 4, (5, 5), 1.0, torch.float32)
    fwd, bwd = torch.ops.instseg.sg_roi_align_forward, torch.ops.instseg.sg_roi_align_backward
    with pytest.raises(RuntimeError, match=r"rois must be \(K, 5\)"):
        fwd(x, rois[:, :4], probs, 1.0, 2, 2, 2, True)
    with pytest.raises(RuntimeError, match="share one dtype"):
        fwd(x, rois.double(), probs, 1.0, 2, 2, 2, True)
    with pytest.raises(RuntimeError, match="probs must be"):
        fwd(x, rois, probs[:2], 1.0, 2, 2, 2, True)
    with pytest.raises(RuntimeError, match="output size must be positive"):
        fwd(x, rois, probs, 1.0, 0, 2, 2, True)
    with pytest.raises(RuntimeError, match="grad must be"):
        bwd(torch.ones(4, 3, 2, 3), x, rois, probs, 1.0, 2, 2, 2, True, [True, True])
    nan_roi = rois.clone()
    nan_roi[0, 0] = float("nan")
    with pytest.raises(RuntimeError, match="is not a batch index"):
        fwd(x, nan_roi, probs, 1.0, 2, 2, 2, True)


# ---------------------------------------------------------------------------------------------------------
# Module and CUDA.
# ---------------------------------------------------------------------------------------------------------
def test_dsg_sgroialign_module_matches_function():
    x, rois, probs = make_case((2, 3, 10, 13), 5, (6, 6), 0.25, torch.float32)
    module = SgROIAlign((3, 4), spatial_scale=0.25, sampling_ratio=0)
    assert module.aligned and "output_size=(3, 4)" in repr(module)
    torch.testing.assert_close(module(x, rois, probs), sg_roi_align(x, rois, probs, (3, 4), 0.25, 0, True))
    legacy = SgROIAlign(3, 0.25, 2, aligned=False)
    torch.testing.assert_close(
        legacy(x, rois, torch.zeros_like(probs)), torchvision.ops.roi_align(x, rois, 3, 0.25, 2, False)
    )


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_dsg_eq2_cuda_matches_cpu(dtype, aligned, sampling_ratio):
    if not ext.extension_has_cuda():
        with pytest.raises(RuntimeError, match="no CUDA kernels"):
            sg_roi_align(*(t.cuda() for t in make_case((1, 2, 6, 6), 2, (3, 3), 1.0, dtype)), 2, 1.0, 2, True)
        return
    for i, (shape, num_rois, output_size, probs_size, scale) in enumerate(SHAPES):
        x, rois, probs = make_case(shape, num_rois, probs_size, scale, dtype, seed=20 + i)
        grad = torch.randn(num_rois, shape[1], *output_size, dtype=dtype)
        results = []
        for device in ("cpu", "cuda"):
            xd = x.to(device).requires_grad_()
            pd = probs.to(device).requires_grad_()
            out = sg_roi_align(xd, rois.to(device), pd, output_size, scale, sampling_ratio, aligned)
            gx, gp = torch.autograd.grad(out, (xd, pd), grad.to(device))
            results.append([t.cpu() for t in (out, gx, gp)])
        for cpu, cuda in zip(*results):
            torch.testing.assert_close(cuda, cpu, **tol(dtype))
    if dtype == torch.float64:
        xc, rc, pc = (t.cuda() for t in make_case((2, 2, 6, 7), 4, (3, 4), 0.5, dtype, seed=7))
        xc.requires_grad_()
        pc.requires_grad_()
        assert torch.autograd.gradcheck(
            lambda a, b: sg_roi_align(a, rc, b, (2, 3), 0.5, sampling_ratio, aligned), (xc, pc), eps=1e-6, atol=1e-6
        )


# ---------------------------------------------------------------------------------------------------------
# ShapeGuidedROIPooler (needs detectron2).
# ---------------------------------------------------------------------------------------------------------
@requires_detectron2
@pytest.mark.parametrize("pooler_type", ["ROIAlignV2", "ROIAlign"])
def test_dsg_pooler_zero_probs_equals_roipooler_across_fpn_levels(pooler_type):
    from detectron2.modeling.poolers import ROIPooler, assign_boxes_to_levels
    from detectron2.structures import Boxes

    from dsg.modeling import ShapeGuidedROIPooler

    g = torch.Generator().manual_seed(0)
    scales = (1 / 4, 1 / 8, 1 / 16, 1 / 32)
    feats = [torch.randn(2, 3, int(256 * s), int(320 * s), generator=g) for s in scales]
    sizes = torch.tensor([8.0, 20.0, 48.0, 90.0, 150.0, 230.0, 250.0, 12.0, 64.0, 120.0, 200.0])
    boxes = []
    for _ in range(2):
        xy = torch.rand(len(sizes), 2, generator=g) * torch.tensor([320.0, 256.0]) * 0.5
        wh = sizes.view(-1, 1) * (0.6 + 0.8 * torch.rand(len(sizes), 2, generator=g))
        boxes.append(Boxes(torch.cat([xy, xy + wh], dim=1)))
    num_boxes = sum(len(b) for b in boxes)
    levels = assign_boxes_to_levels(boxes, 2, 5, 224, 4)
    assert len(set(levels.tolist())) >= 3  # the boxes really spread over the FPN levels

    pooler = ROIPooler((7, 7), scales, 0, pooler_type)
    sg_pooler = ShapeGuidedROIPooler((7, 7), scales, 0, pooler_type)
    zeros = torch.zeros(num_boxes, 14, 14)
    torch.testing.assert_close(sg_pooler(feats, boxes, zeros), pooler(feats, boxes))

    # Each RoI's map reaches the level that pools it: compare with a per-level call.
    probs = torch.rand(num_boxes, 14, 14, generator=g)
    out = sg_pooler(feats, boxes, probs)
    rois = torch.cat([torch.cat([torch.full((len(b), 1), float(n)), b.tensor], 1) for n, b in enumerate(boxes)])
    for level, scale in enumerate(scales):
        inds = (levels == level).nonzero()[:, 0]
        expected = sg_roi_align(feats[level], rois[inds], probs[inds], 7, scale, 0, pooler_type == "ROIAlignV2")
        torch.testing.assert_close(out[inds], expected)

    empty = [Boxes(torch.zeros(0, 4)), Boxes(torch.zeros(0, 4))]
    assert sg_pooler(feats, empty, torch.zeros(0, 14, 14)).shape == (0, 3, 7, 7)
    with pytest.raises(ValueError, match="probs must be"):
        sg_pooler(feats, boxes, probs[:-1])
    with pytest.raises(ValueError, match="pooler_type"):
        ShapeGuidedROIPooler(7, scales, 0, "ROIPool")


@requires_compiled
def test_dsg_empty_feature_map_with_rois_is_a_clear_error():
    """A feature map with H = 0 or W = 0 has nothing to pool: the op refuses it (it used to read element -1)."""
    rois = torch.tensor([[0.0, 0.0, 0.0, 2.0, 0.2]])
    for shape in ((1, 3, 0, 4), (1, 3, 4, 0)):
        with pytest.raises(RuntimeError, match="H > 0 and W > 0"):
            torch.ops.instseg.sg_roi_align_forward(torch.randn(shape), rois, torch.rand(1, 2, 2), 1.0, 2, 2, 1, True)


@requires_compiled
def test_dsg_channels_last_gradient_has_the_fake_kernels_strides():
    """The CPU backward's grad_input is contiguous, as the CUDA kernel and the registered fake kernel give it, so
    torch.compile's layout of the result is the real one."""
    x = torch.randn(1, 8, 10, 10).to(memory_format=torch.channels_last).requires_grad_()
    rois = torch.tensor([[0.0, 1.0, 1.0, 8.0, 7.0]])
    probs = torch.rand(1, 4, 4)
    out = sg_roi_align(x, rois, probs, 2, 1.0, 2, True)
    (grad,) = torch.autograd.grad(out.sum(), x)
    fake = torch.ops.instseg.sg_roi_align_backward.default
    mode = torch._subclasses.fake_tensor.FakeTensorMode()
    args = [mode.from_tensor(t) for t in (torch.ones_like(out), x.detach(), rois, probs)]
    with mode:
        f = fake(*args, 1.0, 2, 2, 2, True, [True, True])[0]
    assert grad.stride() == f.stride() == x.contiguous().stride()
