"""Shape-guided RoIAlign (SgRoIAlign), DSG Sec. 3.4, Eq. 1-2.

RoIAlign samples N = grid_h * grid_w points (a_i, b_i) in every output bin and averages the bilinearly
interpolated features f(a_i, b_i). SgRoIAlign weights each sample by one plus the RoI's probability map P
(DSG's class-agnostic mask of the RoI) at the corresponding point:

    F_{R,P}(h, w) = sum_i f(a_i, b_i) * (1 + p(c_i, d_i)) / N                                     (Eq. 2)

Eq. 1 maps a sample point to the map, which covers the RoI exactly (``Hp x Wp`` pixels, centres at k + 0.5):

    c = (a - x1) * Wp / roi_w - 0.5,     d = (b - y1) * Hp / roi_h - 0.5                            (Eq. 1)

with (x1, y1, roi_w, roi_h) the RoI as RoIAlign samples it on the feature map (after ``spatial_scale``, the
``aligned`` half-pixel offset and, when ``aligned=False``, RoIAlign's minimum size of 1). p is the bilinear
interpolation of P at (c, d) clamped to the map's border. (The paper writes the scale as Hp/H; the
RoI-relative form makes P cover the RoI.) Because a = x1 + (pw + (ix + 0.5) / grid_w) * roi_w / pooled_w,
the relative position (a - x1) / roi_w is (pw + (ix + 0.5) / grid_w) / pooled_w; the reference and the CPU
and CUDA kernels all compute it that way, which also keeps zero-width RoIs defined.

With P = 0 the op is RoIAlign (``torchvision.ops.roi_align``, same ``aligned`` and ``sampling_ratio``
semantics); with P = c it is (1 + c) * RoIAlign.

``sg_roi_align`` runs the compiled op ``torch.ops.instseg.sg_roi_align_forward`` (csrc/sg_roi_align; its
backward ``sg_roi_align_backward``), whose fake kernels and backward formula this module registers with
``torch.library``, and falls back to :func:`sg_roi_align_reference` (pure PyTorch, CPU only) when the extension
is not built.
"""

from typing import Sequence, Tuple, Union

import torch
from torch import nn

from instseg.extension import check_same_device, check_same_dtype, check_tensor, dispatch, extension_available

__all__ = ["sg_roi_align", "sg_roi_align_reference", "SgROIAlign"]

_OP = "sg_roi_align"
_FORWARD, _BACKWARD = f"{_OP}_forward", f"{_OP}_backward"  # torch.ops.instseg.*
_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _pair(output_size: Union[int, Sequence[int]]) -> Tuple[int, int]:
    if isinstance(output_size, int):
        size = (output_size, output_size)
    else:
        size = tuple(output_size)
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise ValueError(f"{_OP}: output_size must be a positive int or a pair of them, got {output_size!r}")
    return size


def _check_inputs(input, rois, probs, output_size) -> Tuple[int, int]:
    check_tensor("input", input, ndim=4, floating=True, op=_OP)
    check_tensor("rois", rois, ndim=2, shape=(None, 5), floating=True, op=_OP)
    check_tensor("probs", probs, ndim=3, shape=(rois.shape[0], None, None), floating=True, op=_OP)
    if probs.shape[1] == 0 or probs.shape[2] == 0:
        raise ValueError(f"{_OP}: 'probs' maps must be non-empty (Hp, Wp >= 1), got shape {tuple(probs.shape)}")
    check_same_device(_OP, input=input, rois=rois, probs=probs)
    check_same_dtype(_OP, input=input, probs=probs)
    if input.dtype not in _SUPPORTED_DTYPES:
        raise ValueError(f"{_OP}: 'input' must be float16, bfloat16, float32 or float64, got {input.dtype}")
    return _pair(output_size)


# ------------------------------------------------------------------------------------------------------
# Reference: Eq. 1-2 in vectorised PyTorch (the test oracle and the fallback without instseg._C).
# ------------------------------------------------------------------------------------------------------
def _feature_lerp(v: torch.Tensor, size: int):
    """RoIAlign's rule along one axis: (lo, hi, w_lo, w_hi); outside [-1, size] (or NaN) the weights are 0."""
    inside = (v >= -1.0) & (v <= size)
    v = torch.where(inside, v, torch.zeros_like(v)).clamp(min=0)
    lo = v.floor().long()
    at_edge = lo >= size - 1
    lo = torch.where(at_edge, torch.full_like(lo, size - 1), lo)
    hi = torch.where(at_edge, lo, lo + 1)
    v = torch.where(at_edge, lo.to(v.dtype), v)
    frac = v - lo.to(v.dtype)
    keep = inside.to(v.dtype)
    return lo, hi, (1 - frac) * keep, frac * keep


def _probs_lerp(grid: torch.Tensor, pooled: int, gmax: int, size: int, dtype) -> Tuple[torch.Tensor, ...]:
    """Eq. 1 along one axis for every (RoI, bin, sample): (lo, hi, w_lo, w_hi), each (K, pooled, gmax).

    Sample i of bin p sits at the RoI-relative position u = (p + (i + 0.5) / grid) / pooled, i.e. at
    c = u * size - 0.5 in the map's pixels, clamped to [0, size - 1].
    """
    p = torch.arange(pooled, dtype=dtype, device=grid.device).view(1, pooled, 1)
    i = torch.arange(gmax, dtype=dtype, device=grid.device).view(1, 1, gmax)
    g = grid.clamp(min=1).to(dtype).view(-1, 1, 1)
    u = (p + (i + 0.5) / g) / pooled
    c = (u * size - 0.5).clamp(min=0, max=size - 1)
    lo = c.floor().long()
    hi = (lo + 1).clamp(max=size - 1)
    frac = c - lo.to(dtype)
    return lo, hi, 1 - frac, frac


def _roi_geometry(rois, pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned):
    """RoIAlign's view of each RoI: batch index, (y1, x1) and bin size on the feature map, and the grid."""
    offset = 0.5 if aligned else 0.0
    x1 = rois[:, 1] * spatial_scale - offset
    y1 = rois[:, 2] * spatial_scale - offset
    roi_w = rois[:, 3] * spatial_scale - offset - x1
    roi_h = rois[:, 4] * spatial_scale - offset - y1
    if not aligned:  # RoIAlign (legacy) forces malformed RoIs to be at least 1 x 1
        roi_w = roi_w.clamp(min=1.0)
        roi_h = roi_h.clamp(min=1.0)

    def grid_of(extent_per_bin):  # RoIAlign's adaptive rule ceil(roi_extent / pooled); empty if <= 0 or NaN
        if sampling_ratio > 0:
            return torch.full_like(extent_per_bin, sampling_ratio, dtype=torch.long)
        ok = (extent_per_bin > 0) & (extent_per_bin < 1e9)
        return torch.where(ok, extent_per_bin, torch.zeros_like(extent_per_bin)).ceil().long()

    return dict(
        batch=rois[:, 0].long(),
        y1=y1,
        x1=x1,
        bin_h=roi_h / pooled_h,
        bin_w=roi_w / pooled_w,
        grid_h=grid_of(roi_h / pooled_h),
        grid_w=grid_of(roi_w / pooled_w),
    )


def _reference_chunk(feat, shape, geo, probs, pooled_h, pooled_w):
    """Eq. 1-2 for a chunk of RoIs (geometry ``geo``); ``feat`` is the input as (N * H * W, C) rows."""
    _, C, H, W = shape
    K = probs.shape[0]
    Hp, Wp = probs.shape[1:]
    dtype, device = feat.dtype, feat.device
    grid_h, grid_w = geo["grid_h"], geo["grid_w"]
    # Largest grid in the chunk (at least 1, so that an all-empty chunk still gives zeros attached to the graph).
    gh, gw = max(int(grid_h.max()), 1), max(int(grid_w.max()), 1)

    def coords(start, bin_size, grid, pooled, gmax):  # sample coordinates (K, pooled, gmax) and their mask
        p = torch.arange(pooled, dtype=dtype, device=device).view(1, pooled, 1)
        i = torch.arange(gmax, device=device).view(1, 1, gmax)
        g = grid.clamp(min=1).view(-1, 1, 1)
        b = bin_size.view(-1, 1, 1)
        v = start.view(-1, 1, 1) + p * b + (i + 0.5).to(dtype) * b / g.to(dtype)
        return v, i < grid.view(-1, 1, 1)  # samples beyond the RoI's own grid are padding

    ys, ys_valid = coords(geo["y1"], geo["bin_h"], grid_h, pooled_h, gh)
    xs, xs_valid = coords(geo["x1"], geo["bin_w"], grid_w, pooled_w, gw)
    y_lo, y_hi, wy_lo, wy_hi = _feature_lerp(ys, H)
    x_lo, x_hi, wx_lo, wx_hi = _feature_lerp(xs, W)
    # Samples beyond a RoI's own grid (its grid is smaller than the chunk's largest) weigh nothing.
    wy_lo, wy_hi = wy_lo * ys_valid, wy_hi * ys_valid
    wx_lo, wx_hi = wx_lo * xs_valid, wx_hi * xs_valid

    def outer(vy, vx):  # (K, pooled_h, gh) x (K, pooled_w, gw) -> (K, pooled_h, gh, pooled_w, gw)
        return vy.view(K, pooled_h, gh, 1, 1) * vx.view(K, 1, 1, pooled_w, gw)

    # p(c, d) at every sample (Eq. 1), shape (K, pooled_h, gh, pooled_w, gw).
    py_lo, py_hi, vy_lo, vy_hi = _probs_lerp(grid_h, pooled_h, gh, Hp, dtype)
    px_lo, px_hi, vx_lo, vx_hi = _probs_lerp(grid_w, pooled_w, gw, Wp, dtype)
    ki = torch.arange(K, device=device).view(K, 1, 1, 1, 1)

    def pgather(rows, cols):
        return probs[ki, rows.view(K, pooled_h, gh, 1, 1), cols.view(K, 1, 1, pooled_w, gw)]

    p = (
        outer(vy_lo, vx_lo) * pgather(py_lo, px_lo)
        + outer(vy_lo, vx_hi) * pgather(py_lo, px_hi)
        + outer(vy_hi, vx_lo) * pgather(py_hi, px_lo)
        + outer(vy_hi, vx_hi) * pgather(py_hi, px_hi)
    )

    # Eq. 2: F(h, w) = sum_i f(a_i, b_i) * (1 + p_i) / N with f(a_i, b_i) = sum_j w_ij F[neighbour j of i]:
    # each of the four neighbours contributes its feature row times w_ij * (1 + p_i) / N, summed over the
    # bin's S = gh * gw samples, i.e. a (1 x S) @ (S x C) product per bin.
    count = (grid_h * grid_w).clamp(min=1).to(dtype).view(K, 1, 1, 1, 1)
    scale = (1 + p) / count
    base = (geo["batch"] * H).view(K, 1, 1, 1, 1)
    bins, S = K * pooled_h * pooled_w, gh * gw
    out = None
    for rows, wy in ((y_lo, wy_lo), (y_hi, wy_hi)):
        for cols, wx in ((x_lo, wx_lo), (x_hi, wx_hi)):
            # rows of the features at every sample, ordered (K, pooled_h, pooled_w, gh, gw)
            flat = (base + rows.view(K, pooled_h, 1, gh, 1)) * W + cols.view(K, 1, pooled_w, 1, gw)
            f = feat.index_select(0, flat.reshape(-1)).view(bins, S, C)
            coef = (outer(wy, wx) * scale).permute(0, 1, 3, 2, 4).reshape(bins, 1, S)
            term = torch.bmm(coef, f)
            out = term if out is None else out + term
    return out.view(K, pooled_h, pooled_w, C).permute(0, 3, 1, 2)


def sg_roi_align_reference(
    input: torch.Tensor,
    rois: torch.Tensor,
    probs: torch.Tensor,
    output_size: Union[int, Sequence[int]],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    max_chunk_elements: int = 1 << 23,
) -> torch.Tensor:
    """Shape-guided RoIAlign written directly from Eq. 1-2 in vectorised PyTorch (differentiable).

    The oracle of the tests and the fallback when ``instseg._C`` is not built. RoIs are sorted by their
    number of samples and processed in chunks of at most ``max_chunk_elements`` gathered feature values (the
    grid is padded to the chunk's largest), which bounds memory; within a chunk everything is vectorised.
    Arguments as :func:`sg_roi_align`.
    """
    pooled_h, pooled_w = _check_inputs(input, rois, probs, output_size)
    K, C = rois.shape[0], input.shape[1]
    rois = rois.to(input.dtype)
    if K == 0 or C == 0:  # nothing to sample; zeros still attached to the graph, so backward gives zero gradients
        attached = input.reshape(-1)[:0].sum() + probs.reshape(-1)[:0].sum()
        return input.new_zeros(K, C, pooled_h, pooled_w) + attached
    b = rois[:, 0]
    if not bool(((b >= 0) & (b < input.shape[0])).all()):
        raise ValueError(f"{_OP}: rois[:, 0] must be batch indices in [0, {input.shape[0]})")
    geo = _roi_geometry(rois, pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned)
    gh, gw = geo["grid_h"].clamp(min=1), geo["grid_w"].clamp(min=1)
    order = torch.argsort(gh * gw, stable=True)
    gh_sorted, gw_sorted = gh[order].tolist(), gw[order].tolist()
    feat = input.permute(0, 2, 3, 1).reshape(-1, C)  # (N * H * W, C): each sample gathers whole rows
    outs, start = [], 0
    while start < K:
        stop, max_h, max_w = start, 1, 1
        while stop < K:
            h, w = max(max_h, gh_sorted[stop]), max(max_w, gw_sorted[stop])
            if stop > start and (stop - start + 1) * h * w * pooled_h * pooled_w * C > max_chunk_elements:
                break
            stop, max_h, max_w = stop + 1, h, w
        idx = order[start:stop]
        chunk_geo = {key: value[idx] for key, value in geo.items()}
        outs.append(_reference_chunk(feat, input.shape, chunk_geo, probs[idx], pooled_h, pooled_w))
        start = stop
    out = torch.cat(outs, dim=0) if len(outs) > 1 else outs[0]
    return out[torch.argsort(order)]


# ------------------------------------------------------------------------------------------------------
# The compiled op: fake kernels and backward formula, registered with torch.library.
# ------------------------------------------------------------------------------------------------------
def _forward_fake(input, rois, probs, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned):
    return input.new_empty((rois.shape[0], input.shape[1], pooled_height, pooled_width))


def _backward_fake(
    grad, input, rois, probs, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, output_mask
):
    return (
        input.new_empty(input.shape) if output_mask[0] else None,
        probs.new_empty(probs.shape) if output_mask[1] else None,
    )


def _setup_context(ctx, inputs, output):
    input, rois, probs, *params = inputs
    ctx.save_for_backward(input, rois, probs)
    ctx.params = params  # spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned


def _backward(ctx, grad):
    input, rois, probs = ctx.saved_tensors
    need_input, _, need_probs = ctx.needs_input_grad[:3]
    grad_input, grad_probs = torch.ops.instseg.sg_roi_align_backward(
        grad, input, rois, probs, *ctx.params, [bool(need_input), bool(need_probs)]
    )
    return grad_input, None, grad_probs, None, None, None, None, None


if extension_available():
    torch.library.register_fake(f"instseg::{_FORWARD}", _forward_fake)
    torch.library.register_fake(f"instseg::{_BACKWARD}", _backward_fake)
    torch.library.register_autograd(f"instseg::{_FORWARD}", _backward, setup_context=_setup_context)


def sg_roi_align(
    input: torch.Tensor,
    rois: torch.Tensor,
    probs: torch.Tensor,
    output_size: Union[int, Sequence[int]],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> torch.Tensor:
    """Shape-guided RoIAlign (DSG Eq. 1-2): RoIAlign whose samples are weighted by ``1 + p``.

    Args:
        input: (N, C, H, W) features.
        rois: (K, 5) = (batch index, x1, y1, x2, y2) in image coordinates (cast to ``input``'s dtype).
        probs: (K, Hp, Wp) probability map of each RoI (any Hp, Wp >= 1), covering the RoI exactly.
        output_size: (oh, ow) or an int.
        spatial_scale: image-to-feature-map scale (e.g. 1/16).
        sampling_ratio: samples per bin along each axis; <= 0 means ceil(roi_size / output_size) (RoIAlign).
        aligned: shift the RoI by -0.5 pixel (RoIAlignV2 / detectron2's default), as RoIAlign.

    Returns:
        (K, C, oh, ow). Differentiable with respect to ``input`` and ``probs``. float16/bfloat16 inputs are
        computed in float32 and cast back (as torchvision's RoIAlign does under autocast).
    """
    pooled_h, pooled_w = _check_inputs(input, rois, probs, output_size)
    spatial_scale, sampling_ratio, aligned = float(spatial_scale), int(sampling_ratio), bool(aligned)
    if input.dtype in (torch.float16, torch.bfloat16):
        out = sg_roi_align(input.float(), rois, probs.float(), output_size, spatial_scale, sampling_ratio, aligned)
        return out.to(input.dtype)
    rois = rois.to(input.dtype)
    impl = dispatch(_FORWARD, sg_roi_align_reference, input, rois, probs)
    if impl is sg_roi_align_reference:  # instseg._C not built: the pure-PyTorch path (CPU only)
        return sg_roi_align_reference(input, rois, probs, (pooled_h, pooled_w), spatial_scale, sampling_ratio, aligned)
    return impl(input, rois, probs, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned)


class SgROIAlign(nn.Module):
    """Shape-guided RoIAlign as a module (the DSG counterpart of detectron2's ``ROIAlign``).

    Args:
        output_size: (oh, ow) or an int.
        spatial_scale: image-to-feature-map scale.
        sampling_ratio: samples per bin along each axis (<= 0: adaptive, as RoIAlign).
        aligned: half-pixel offset (True = detectron2's ROIAlignV2 semantics).
    """

    def __init__(self, output_size, spatial_scale: float, sampling_ratio: int, aligned: bool = True):
        super().__init__()
        self.output_size = _pair(output_size)
        self.spatial_scale = float(spatial_scale)
        self.sampling_ratio = int(sampling_ratio)
        self.aligned = bool(aligned)

    def forward(self, input: torch.Tensor, rois: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """input (N, C, H, W), rois (K, 5), probs (K, Hp, Wp) -> (K, C, oh, ow)."""
        if isinstance(input, torch.Tensor) and input.is_quantized:
            input = input.dequantize()
        return sg_roi_align(input, rois, probs, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned)

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}"
        )
