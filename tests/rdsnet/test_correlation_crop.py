"""Tests of RDSNet's correlation + cropping op (Sec. 3.2, Eq. 1 and the cropping module).

The compiled op (``instseg._C``) is used when it is built; otherwise the wrapper falls back to the reference and
the parity tests compare the reference with itself (test_rdsnet_eq1_compiled_op_is_registered then tells which).
What every op is tested for (opcheck, parity with the reference in float32/float64, gradcheck, empty inputs, meta
tensors, torch.compile, registration, fallback) comes from the shared harness (tests/ops/harness.py) through
TestCorrelationCropOp; the tests below are specific to correlation + cropping.
"""

import math

import pytest
import torch

import instseg.extension as ext
from rdsnet.layers import CorrelationCrop, correlation_crop, correlation_crop_reference
from tests.ops.harness import OpTester, Sample
from tests.utils import requires_cuda

NEG_INF = float("-inf")


def _random_inputs(N, d, h, w, K, dtype, seed=0, device="cpu", requires_grad=False):
    """Embeddings and boxes of random size (a few pixels up to the whole map), many partly outside the map."""
    g = torch.Generator().manual_seed(seed)
    pixel = torch.randn(N, d, h, w, generator=g, dtype=dtype)
    obj = torch.randn(K, 2, d, generator=g, dtype=dtype)
    batch = torch.randint(0, max(N, 1), (K,), generator=g)
    size = torch.rand(K, 2, generator=g, dtype=torch.float64) * torch.tensor([w, h], dtype=torch.float64)
    corner = torch.rand(K, 2, generator=g, dtype=torch.float64) * torch.tensor([w + 4.0, h + 4.0]) - 4.0
    boxes = torch.cat([corner, corner + size], dim=1).to(dtype)
    tensors = [t.to(device) for t in (pixel, obj, batch, boxes)]
    if requires_grad:
        tensors[0].requires_grad_(True)
        tensors[1].requires_grad_(True)
    return tensors


def _inside_mask(boxes, h, w):
    """The pixel-centre rule written pixel by pixel (independent of the implementation's vectorised form)."""
    K = boxes.shape[0]
    mask = torch.zeros(K, h, w, dtype=torch.bool)
    for k in range(K):
        x1, y1, x2, y2 = (float(v) for v in boxes[k])
        for i in range(h):
            for j in range(w):
                mask[k, i, j] = x1 <= j + 0.5 <= x2 and y1 <= i + 0.5 <= y2
    return mask


def _tol(dtype):
    return dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)


class TestCorrelationCropOp(OpTester):
    """The shared op tests (tests/ops/harness.py) on correlation + cropping, with a finite fill (gradcheck)."""

    forward_op, backward_op = "correlation_crop_forward", "correlation_crop_backward"
    wrapper_module = "rdsnet.layers.correlation_crop"
    FILL = -3.0

    def fn(self, *args):
        return correlation_crop(*args)

    def reference(self, *args):
        return correlation_crop_reference(*args)

    def sample(self, dtype, device="cpu", seed=0):
        return Sample((*_random_inputs(2, 4, 7, 9, 5, dtype, seed=seed, device=device), self.FILL), grad_args=(0, 1))

    def empty_samples(self, dtype, device="cpu"):
        pixel, obj, batch, boxes = _random_inputs(2, 4, 6, 7, 3, dtype, seed=1, device=device)
        return [
            Sample((pixel, obj[:0], batch[:0], boxes[:0], self.FILL), grad_args=(0, 1)),  # no object
            Sample((pixel[:, :, :0], obj, batch, boxes, self.FILL), grad_args=(0, 1)),  # no pixel row
            Sample((pixel[:, :0], obj[:, :, :0], batch, boxes, self.FILL), grad_args=(0, 1)),  # no channel
        ]

    def op_args(self, args):
        return args

    def backward_op_args(self, args, grad):
        return (grad, *args[:4])

    def expected_shapes(self, args):
        pixel, obj = args[:2]
        return [((obj.shape[0], pixel.shape[2], pixel.shape[3]), pixel.dtype)]


# ------------------------------------------------------------------------------------------------------------
# Build / registration
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.skipif(not ext.extension_available(), reason="instseg._C is not built (pip install -e .)")
def test_rdsnet_eq1_compiled_op_is_registered():
    assert ext.get_op("correlation_crop_forward") is not None
    assert ext.get_op("correlation_crop_backward") is not None
    pixel, obj, batch, boxes = _random_inputs(1, 3, 5, 6, 2, torch.float32)
    # The wrapper dispatches to the compiled op, not to the reference.
    assert ext.dispatch("correlation_crop_forward", correlation_crop_reference, pixel) is not correlation_crop_reference
    has_kernel = torch._C._dispatch_has_kernel_for_dispatch_key
    for name in ("instseg::correlation_crop_forward", "instseg::correlation_crop_backward"):
        assert has_kernel(name, "CPU")
        assert has_kernel(name, "CUDA") == ext.extension_has_cuda()


def _compiled_op_available():
    return ext.get_op("correlation_crop_forward") is not None


requires_op = pytest.mark.skipif(not _compiled_op_available(), reason="the compiled correlation_crop op is absent")


# ------------------------------------------------------------------------------------------------------------
# Forward: parity with Eq. 1 written out (the reference)
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "N,d,h,w,K",
    [(1, 1, 1, 1, 1), (1, 4, 7, 9, 3), (2, 8, 13, 17, 11), (3, 32, 24, 40, 25), (2, 16, 48, 64, 40)],
)
def test_rdsnet_eq1_forward_matches_reference(dtype, N, d, h, w, K):
    pixel, obj, batch, boxes = _random_inputs(N, d, h, w, K, dtype, seed=N * 100 + K)
    out = correlation_crop(pixel, obj, batch, boxes)
    ref = correlation_crop_reference(pixel, obj, batch, boxes)
    assert out.shape == (K, h, w) and out.dtype == dtype
    inside = _inside_mask(boxes, h, w)
    assert torch.equal(torch.isneginf(out), ~inside)  # exactly the outside pixels carry the fill value
    torch.testing.assert_close(out, ref, **_tol(dtype))


@pytest.mark.parametrize("fill", [0.0, -7.5, 3.0, NEG_INF])
def test_rdsnet_cropping_fill_value_outside_box(fill):
    pixel, obj, batch, boxes = _random_inputs(2, 6, 11, 14, 9, torch.float64, seed=3)
    out = correlation_crop(pixel, obj, batch, boxes, fill=fill)
    inside = _inside_mask(boxes, 11, 14)
    assert (~inside).any() and inside.any()
    assert torch.all(out[~inside] == fill)
    torch.testing.assert_close(out, correlation_crop_reference(pixel, obj, batch, boxes, fill=fill))


def test_rdsnet_eq1_softmax_of_two_channels_is_sigmoid_of_logit():
    """softmax over Eq. 1's two correlation channels equals (sigmoid(z), sigmoid(-z)) inside the box."""
    pixel, obj, batch, boxes = _random_inputs(2, 8, 10, 12, 6, torch.float64, seed=5)
    z = correlation_crop(pixel, obj, batch, boxes)
    # Eq. 1 as the paper writes it: a 1x1 convolution with the two kernels of each object, then softmax.
    conv = torch.nn.functional.conv2d
    M = torch.stack([conv(pixel[b : b + 1], obj[k][:, :, None, None])[0] for k, b in enumerate(batch.tolist())])
    M = M.softmax(dim=1)
    inside = _inside_mask(boxes, 10, 12)
    assert inside.sum() > 20
    torch.testing.assert_close(torch.sigmoid(z)[inside], M[:, 0][inside])
    torch.testing.assert_close(torch.sigmoid(-z)[inside], M[:, 1][inside])
    # Outside: fill = -inf is "background with probability 1".
    assert torch.all(torch.sigmoid(z)[~inside] == 0)


def test_rdsnet_cropping_pixel_centre_rule_edges_included():
    pixel = torch.arange(1 * 1 * 6 * 8, dtype=torch.float64).reshape(1, 1, 6, 8)
    obj = torch.tensor([[[1.0], [0.0]]], dtype=torch.float64)  # z = Psi itself
    batch = torch.zeros(1, dtype=torch.int64)
    below = math.nextafter(1.5, 0.0)
    above = math.nextafter(1.5, 2.0)
    cases = [
        # (box, expected included columns, expected included rows)
        ((1.5, 2.5, 4.5, 3.5), range(1, 5), range(2, 4)),  # edges exactly on centres: included
        ((above, 2.5, 4.5, 3.5), range(2, 5), range(2, 4)),  # just right of the centre 1.5: excluded
        ((below, 2.5, 4.5, 3.5), range(1, 5), range(2, 4)),
        ((1.0, 1.0, 3.0, 3.0), range(1, 3), range(1, 3)),  # integer edges: centres 1.5, 2.5 only
        ((2.5, 0.0, 2.5, 6.0), range(2, 3), range(0, 6)),  # zero width on a centre: one column
        ((2.4, 0.0, 2.4, 6.0), range(0), range(0)),  # zero width between centres: nothing
        ((-3.0, -3.0, 100.0, 100.0), range(0, 8), range(0, 6)),  # larger than the map: clipped
    ]
    for box, cols, rows in cases:
        for dtype in (torch.float64, torch.float32):
            bx = torch.tensor([box], dtype=dtype)
            if dtype == torch.float32 and any(float(v) != b for v, b in zip(bx[0], box)):
                continue  # nextafter in float64 is not representable in float32
            out = correlation_crop(pixel, obj, batch, bx)
            expected = torch.full((1, 6, 8), NEG_INF, dtype=torch.float64)
            for i in rows:
                for j in cols:
                    expected[0, i, j] = pixel[0, 0, i, j]
            assert torch.equal(out, expected), (box, dtype)
    # float32 boxes: the comparison is made on the exact float32 value (the next float32 above 1.5).
    bx = torch.tensor([[1.5, 2.5, 4.5, 3.5]], dtype=torch.float32)
    bx[0, 0] = torch.nextafter(bx[0, 0], torch.tensor(2.0))
    assert float(bx[0, 0]) > 1.5
    out = correlation_crop(pixel, obj, batch, bx)
    assert torch.isneginf(out[0, 2, 1]) and out[0, 2, 2] == pixel[0, 0, 2, 2]


def test_rdsnet_cropping_boxes_outside_map_and_degenerate():
    N, d, h, w = 2, 5, 9, 11
    pixel, obj, _, _ = _random_inputs(N, d, h, w, 6, torch.float64, seed=7, requires_grad=True)
    batch = torch.tensor([0, 1, 0, 1, 0, 1])
    boxes = torch.tensor(
        [
            [-10.0, -10.0, -1.0, -1.0],  # fully outside (top-left)
            [20.0, 2.0, 30.0, 5.0],  # fully outside (right)
            [3.0, 4.0, 3.0, 8.0],  # zero width between centres
            [1.0, 5.0, 6.0, 5.0],  # zero height between centres
            [6.0, 2.0, 2.0, 7.0],  # inverted (x2 < x1)
            [float("nan"), 1.0, 5.0, 5.0],  # NaN coordinate
        ],
        dtype=torch.float64,
    )
    out = correlation_crop(pixel, obj, batch, boxes)
    assert torch.all(torch.isneginf(out))
    torch.testing.assert_close(out, correlation_crop_reference(pixel, obj, batch, boxes))
    out.masked_fill(torch.isinf(out), 0.0).sum().backward()
    assert torch.all(pixel.grad == 0) and torch.all(obj.grad == 0)


def test_rdsnet_eq1_empty_inputs():
    pixel = torch.randn(2, 4, 6, 7, dtype=torch.float64, requires_grad=True)
    obj = torch.zeros(0, 2, 4, dtype=torch.float64, requires_grad=True)
    out = correlation_crop(pixel, obj, torch.zeros(0, dtype=torch.int64), torch.zeros(0, 4, dtype=torch.float64))
    assert out.shape == (0, 6, 7) and out.dtype == torch.float64
    if _compiled_op_available():  # (the reference's graph does not reach pixel_embed when K = 0)
        out.sum().backward()
        assert pixel.grad is not None and torch.all(pixel.grad == 0)
        assert obj.grad.shape == (0, 2, 4)
    # An empty map (h = 0): objects exist but have no pixel.
    pixel0 = torch.randn(1, 4, 0, 7, dtype=torch.float64)
    obj0 = torch.randn(3, 2, 4, dtype=torch.float64)
    out0 = correlation_crop(pixel0, obj0, torch.zeros(3, dtype=torch.int64), torch.tensor([[0.0, 0.0, 5.0, 5.0]] * 3))
    assert out0.shape == (3, 0, 7)
    # An image with no objects gets zero gradient; one with objects does not.
    pixel2, obj2, _, boxes2 = _random_inputs(3, 4, 8, 8, 5, torch.float64, seed=11, requires_grad=True)
    boxes2 = torch.tensor([[0.0, 0.0, 8.0, 8.0]] * 5, dtype=torch.float64)
    out2 = correlation_crop(pixel2, obj2, torch.tensor([0, 2, 0, 2, 2]), boxes2)
    out2.sum().backward()
    assert torch.all(pixel2.grad[1] == 0) and torch.all(pixel2.grad[0] != 0)


def test_rdsnet_eq1_noncontiguous_inputs():
    N, d, h, w, K = 2, 6, 10, 13, 7
    pixel, obj, batch, boxes = _random_inputs(N, d, h, w, K, torch.float32, seed=13)
    expected = correlation_crop(pixel, obj, batch, boxes)
    pixel_nc = pixel.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # channels-last strides
    obj_nc = obj.transpose(1, 2).contiguous().transpose(1, 2)
    batch_nc = torch.stack([batch, batch], dim=1)[:, 0]
    boxes_nc = boxes.t().contiguous().t()
    assert not any(t.is_contiguous() for t in (pixel_nc, obj_nc, batch_nc, boxes_nc))
    out = correlation_crop(pixel_nc, obj_nc, batch_nc, boxes_nc)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    # int32 batch indices are accepted too.
    torch.testing.assert_close(correlation_crop(pixel, obj, batch.int(), boxes), expected, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------------------
# Backward
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("N,d,h,w,K", [(1, 3, 5, 6, 2), (2, 4, 7, 8, 5), (3, 2, 6, 5, 7)])
def test_rdsnet_eq1_gradcheck_float64(N, d, h, w, K):
    pixel, obj, batch, boxes = _random_inputs(N, d, h, w, K, torch.float64, seed=17 + K, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda p, o: correlation_crop(p, o, batch, boxes, fill=-3.0), (pixel, obj), eps=1e-6, atol=1e-8
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rdsnet_eq1_backward_matches_reference(dtype):
    N, d, h, w, K = 2, 16, 30, 41, 24
    pixel, obj, batch, boxes = _random_inputs(N, d, h, w, K, dtype, seed=19, requires_grad=True)
    # Overlapping objects in one image exercise the reduction over objects in dL/dPsi.
    boxes[:6] = torch.tensor([5.0, 5.0, 30.0, 25.0], dtype=dtype)
    batch[:6] = 0
    grad = torch.randn(K, h, w, dtype=dtype, generator=torch.Generator().manual_seed(1))
    g_op = torch.autograd.grad(correlation_crop(pixel, obj, batch, boxes), (pixel, obj), grad)
    g_ref = torch.autograd.grad(correlation_crop_reference(pixel, obj, batch, boxes), (pixel, obj), grad)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    for a, b in zip(g_op, g_ref):
        torch.testing.assert_close(a, b, **tol)
    # The background kernel's gradient is the negative of the foreground kernel's.
    assert torch.equal(g_op[1][:, 1], -g_op[1][:, 0])


def test_rdsnet_cropping_no_gradient_from_outside_pixels():
    N, d, h, w, K = 2, 4, 9, 10, 6
    pixel, obj, batch, boxes = _random_inputs(N, d, h, w, K, torch.float64, seed=23, requires_grad=True)
    inside = _inside_mask(boxes, h, w)
    assert inside.any() and (~inside).any()
    out = correlation_crop(pixel, obj, batch, boxes)
    grad_outside = torch.randn(K, h, w, dtype=torch.float64).masked_fill(inside, 0.0)
    gp, go = torch.autograd.grad(out, (pixel, obj), grad_outside)
    assert torch.all(gp == 0) and torch.all(go == 0)
    # And only the inside pixels of an object's image receive gradient from it.
    k = int(inside.flatten(1).sum(1).argmax())
    grad_k = torch.zeros(K, h, w, dtype=torch.float64)
    grad_k[k] = 1.0
    gp, _ = torch.autograd.grad(correlation_crop(pixel, obj, batch, boxes), (pixel, obj), grad_k)
    touched = (gp != 0).any(dim=1)  # (N, h, w)
    expected = torch.zeros(N, h, w, dtype=torch.bool)
    expected[batch[k]] = inside[k]
    assert torch.equal(touched, expected & (obj[k, 0] != obj[k, 1]).any())


@requires_op
def test_rdsnet_eq1_compiled_op_is_deterministic_across_thread_counts():
    """No atomics, fixed summation order: the same bits whatever the number of threads."""
    pixel, obj, batch, boxes = _random_inputs(2, 12, 40, 50, 30, torch.float32, seed=61, requires_grad=True)
    grad = torch.randn(30, 40, 50, generator=torch.Generator().manual_seed(2))
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            out = correlation_crop(pixel, obj, batch, boxes)
            results.append((out.detach(),) + torch.autograd.grad(out, (pixel, obj), grad))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_rdsnet_eq1_gradient_only_for_requested_inputs():
    pixel, obj, batch, boxes = _random_inputs(1, 3, 6, 6, 2, torch.float64, seed=29)
    obj.requires_grad_(True)
    out = correlation_crop(pixel, obj, batch, boxes, fill=0.0)
    out.sum().backward()
    assert pixel.grad is None and obj.grad is not None


# ------------------------------------------------------------------------------------------------------------
# Other dtypes, the module, the fallback, bad input
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_rdsnet_eq1_reduced_precision_accumulates_in_float(dtype):
    pixel, obj, batch, boxes = _random_inputs(2, 32, 12, 15, 8, torch.float32, seed=31)
    pixel, obj = pixel.to(dtype), obj.to(dtype)
    out = correlation_crop(pixel, obj, batch, boxes)
    assert out.dtype == dtype
    exact = correlation_crop_reference(pixel.double(), obj.double(), batch, boxes)
    tol = 2e-2 if dtype == torch.float16 else 1e-1
    torch.testing.assert_close(out.double(), exact, rtol=tol, atol=tol)


def test_rdsnet_correlation_crop_module():
    pixel, obj, batch, boxes = _random_inputs(2, 4, 8, 9, 5, torch.float32, seed=37)
    module = CorrelationCrop(fill=-1.0)
    assert "fill=-1.0" in repr(module)
    torch.testing.assert_close(module(pixel, obj, batch, boxes), correlation_crop(pixel, obj, batch, boxes, -1.0))
    with pytest.raises(ValueError, match="fill"):
        CorrelationCrop(fill="low")


def test_rdsnet_eq1_reference_fallback_warns_and_matches(monkeypatch):
    pixel, obj, batch, boxes = _random_inputs(2, 5, 9, 10, 6, torch.float64, seed=41)
    expected = correlation_crop(pixel, obj, batch, boxes)
    monkeypatch.setattr(ext, "get_op", lambda name: None)
    monkeypatch.setattr(ext, "_warned", set())
    with pytest.warns(RuntimeWarning, match="correlation_crop_forward"):
        out = correlation_crop(pixel, obj, batch, boxes)
    torch.testing.assert_close(out, expected)


def _bad_input_cases():
    pixel, obj, batch, boxes = _random_inputs(2, 4, 6, 7, 3, torch.float32, seed=43)
    return [
        ("must have 4 dimensions", (pixel[0], obj, batch, boxes)),
        ("'obj_embed' must have shape", (pixel, obj[:, :, :3], batch, boxes)),
        ("'obj_embed' must have shape", (pixel, torch.cat([obj, obj], 1), batch, boxes)),
        ("'batch_idx' must have shape", (pixel, obj, batch[:2], boxes)),
        ("'boxes' must have shape", (pixel, obj, batch, boxes[:, :3])),
        ("'pixel_embed' must be a floating-point", (pixel.long(), obj, batch, boxes)),
        ("must share one dtype", (pixel, obj.double(), batch, boxes)),
        ("'batch_idx' must be an integer", (pixel, obj, batch.float(), boxes)),
        ("'boxes' must be a floating-point", (pixel, obj, batch, boxes.long())),
        ("must be a torch.Tensor", (pixel.numpy(), obj, batch, boxes)),
        ("batch_idx values must lie in", (pixel, obj, torch.tensor([0, 2, 1]), boxes)),
        ("batch_idx values must lie in", (pixel, obj, torch.tensor([0, -1, 1]), boxes)),
        ("same device", (pixel, obj.to("meta"), batch, boxes)),
    ]


@pytest.mark.parametrize("case", range(13))
def test_rdsnet_eq1_bad_input_raises_value_error(case):
    match, args = _bad_input_cases()[case]
    with pytest.raises(ValueError, match=match):
        correlation_crop(*args)


def test_rdsnet_eq1_bad_fill_raises_value_error():
    pixel, obj, batch, boxes = _random_inputs(1, 2, 3, 3, 1, torch.float32)
    with pytest.raises(ValueError, match="fill"):
        correlation_crop(pixel, obj, batch, boxes, fill=torch.tensor(0.0))


@requires_op
def test_rdsnet_eq1_compiled_op_rejects_bad_input_with_runtime_error():
    """Called directly (bypassing the wrapper's checks), the op reports errors instead of crashing."""
    op = torch.ops.instseg.correlation_crop_forward
    pixel, obj, batch, boxes = _random_inputs(2, 4, 6, 7, 3, torch.float32, seed=47)
    with pytest.raises(RuntimeError, match="batch_idx"):
        op(pixel, obj, torch.tensor([0, 5, 1]), boxes, NEG_INF)
    with pytest.raises(RuntimeError, match="int64"):
        op(pixel, obj, batch.int(), boxes, NEG_INF)
    with pytest.raises(RuntimeError, match="obj_embed"):
        op(pixel, obj[:, :1], batch, boxes, NEG_INF)
    with pytest.raises(RuntimeError, match="grad_out"):
        torch.ops.instseg.correlation_crop_backward(torch.zeros(3, 6, 6), pixel, obj, batch, boxes)


# ------------------------------------------------------------------------------------------------------------
# CUDA
# ------------------------------------------------------------------------------------------------------------
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("N,d,h,w,K", [(1, 3, 5, 6, 2), (2, 32, 50, 76, 40), (3, 20, 33, 47, 0)])
def test_rdsnet_eq1_cuda_matches_cpu(dtype, N, d, h, w, K):
    cpu = _random_inputs(N, d, h, w, K, dtype, seed=53 + K, requires_grad=True)
    cuda = [t.detach().cuda().requires_grad_(t.requires_grad) for t in cpu]
    grad = torch.randn(K, h, w, dtype=dtype)
    out_cpu = correlation_crop(*cpu)
    out_cuda = correlation_crop(*cuda)
    tol = _tol(dtype) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out_cuda.cpu(), out_cpu, **tol)
    g_cpu = torch.autograd.grad(out_cpu, cpu[:2], grad, allow_unused=True)
    g_cuda = torch.autograd.grad(out_cuda, cuda[:2], grad.cuda(), allow_unused=True)
    for a, b in zip(g_cuda, g_cpu):
        torch.testing.assert_close(a.cpu(), b, **tol)


@requires_cuda
def test_rdsnet_eq1_cuda_gradcheck_and_reduced_precision():
    pixel, obj, batch, boxes = _random_inputs(2, 3, 6, 7, 4, torch.float64, seed=59, device="cuda", requires_grad=True)
    assert torch.autograd.gradcheck(lambda p, o: correlation_crop(p, o, batch, boxes, fill=1.0), (pixel, obj))
    for dtype in (torch.float16, torch.bfloat16):
        out = correlation_crop(pixel.detach().to(dtype), obj.detach().to(dtype), batch, boxes)
        ref = correlation_crop(pixel.detach().cpu().to(dtype), obj.detach().cpu().to(dtype), batch.cpu(), boxes.cpu())
        torch.testing.assert_close(out.cpu().double(), ref.double(), rtol=1e-2, atol=1e-2)
