"""Correlation + cropping (RDSNet, Wang et al., AAAI 2020, Sec. 3.2: Eq. 1 and the cropping module).

For object ``o`` with representation φ(v_o) ∈ R^{2×d} (a foreground and a background kernel) and the pixel
representations Ψ(U) ∈ R^{d×h×w} of its image, Eq. 1 is

    M_o = softmax(Ψ(U) ⋆ φ(v_o)),

a 1×1 convolution with two output channels followed by a softmax over them. With the two logits
l_fg = <φ_fg, Ψ> and l_bg = <φ_bg, Ψ>, softmax([l_fg, l_bg]) = (sigmoid(z), sigmoid(−z)) with

    z = l_fg − l_bg = <φ_fg − φ_bg, Ψ(U)>,

so the logit z carries all of Eq. 1 at half the cost. The cropping module then keeps only the pixels inside
the object's (expanded) box: a pixel (i, j) is inside when its centre (j + 0.5, i + 0.5) lies in
[x1, x2] × [y1, y2], edges included; every other pixel is set to ``fill`` (−inf by default, i.e. background
probability 1 after the sigmoid) and receives no gradient.

:func:`correlation_crop` runs the compiled op ``torch.ops.instseg.correlation_crop_forward`` (CPU and CUDA
kernels in ``csrc/correlation_crop/``; its backward ``correlation_crop_backward``), which visits only the pixels
inside each box and never forms a (K, d, h, w) or (K, 2, h, w) tensor; this module registers its fake kernels
and backward formula with ``torch.library``. :func:`correlation_crop_reference` is Eq. 1 written out in PyTorch; it is
the test oracle, the benchmark baseline and the CPU fallback when ``instseg._C`` is not built.
"""

import numbers

import torch
from torch import nn

from instseg.extension import (
    check_same_device,
    check_same_dtype,
    check_tensor,
    dispatch,
    extension_available,
    values_readable,
)

__all__ = ["correlation_crop", "correlation_crop_reference", "CorrelationCrop"]

_OP = "correlation_crop"
_FORWARD, _BACKWARD = f"{_OP}_forward", f"{_OP}_backward"  # torch.ops.instseg.*
_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _box_mask(boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(K, h, w) bool: pixel centre (j + 0.5, i + 0.5) inside box k, edges included (the cropping module).

    Compared in float64, where j + 0.5 is exact, so the rule is applied exactly for float32/float64 boxes.
    """
    b = boxes.to(torch.float64)
    cx = torch.arange(w, dtype=torch.float64, device=boxes.device) + 0.5
    cy = torch.arange(h, dtype=torch.float64, device=boxes.device) + 0.5
    in_x = (cx[None, :] >= b[:, 0:1]) & (cx[None, :] <= b[:, 2:3])  # (K, w)
    in_y = (cy[None, :] >= b[:, 1:2]) & (cy[None, :] <= b[:, 3:4])  # (K, h)
    return in_y[:, :, None] & in_x[:, None, :]


def correlation_crop_reference(pixel_embed, obj_embed, batch_idx, boxes, fill=float("-inf")):
    """Eq. 1 of RDSNet and the cropping module, straight from the paper, in plain PyTorch.

    Forms both correlation channels (K, 2, h, w) with an einsum per image, takes the softmax's logit
    difference and crops it with the boxes. Differentiable through autograd. Same arguments as
    :func:`correlation_crop` (no input checks beyond what PyTorch does).
    """
    N, d, h, w = pixel_embed.shape
    K = obj_embed.shape[0]
    batch_idx = batch_idx.to(device=pixel_embed.device, dtype=torch.int64)
    # Eq. 1, the correlation Ψ(U) ⋆ φ(v_o): a 1×1 convolution of each object's image with its two kernels.
    logits = pixel_embed.new_zeros((K, 2, h, w))
    for n in range(N):
        sel = (batch_idx == n).nonzero().squeeze(1)
        if sel.numel() > 0:
            logits[sel] = torch.einsum("kcd,dhw->kchw", obj_embed[sel], pixel_embed[n])
    # softmax over the two channels: M_o[fg] = sigmoid(l_fg − l_bg); keep the logit z = l_fg − l_bg.
    z = logits[:, 0] - logits[:, 1]
    # Cropping module: pixels outside the (expanded) box are background.
    return torch.where(_box_mask(boxes, h, w), z, float(fill))


def _check_inputs(pixel_embed, obj_embed, batch_idx, boxes, fill):
    check_tensor("pixel_embed", pixel_embed, ndim=4, floating=True, op=_OP)
    d = pixel_embed.shape[1]
    check_tensor("obj_embed", obj_embed, ndim=3, shape=(None, 2, d), floating=True, op=_OP)
    K = obj_embed.shape[0]
    check_tensor("batch_idx", batch_idx, ndim=1, shape=(K,), integer=True, op=_OP)
    check_tensor("boxes", boxes, ndim=2, shape=(K, 4), floating=True, op=_OP)
    check_same_dtype(_OP, pixel_embed=pixel_embed, obj_embed=obj_embed)
    if pixel_embed.dtype not in _SUPPORTED_DTYPES:
        raise ValueError(f"{_OP}: unsupported dtype {pixel_embed.dtype}; use one of {_SUPPORTED_DTYPES}")
    check_same_device(_OP, pixel_embed=pixel_embed, obj_embed=obj_embed, batch_idx=batch_idx, boxes=boxes)
    if not isinstance(fill, numbers.Real) or isinstance(fill, bool):
        raise ValueError(f"{_OP}: 'fill' must be a real number, got {type(fill).__name__}")
    if K > 0 and values_readable(batch_idx):
        lo, hi = int(batch_idx.min()), int(batch_idx.max())
        if lo < 0 or hi >= pixel_embed.shape[0]:
            raise ValueError(
                f"{_OP}: batch_idx values must lie in [0, {pixel_embed.shape[0]}) (pixel_embed has "
                f"{pixel_embed.shape[0]} images), got values in [{lo}, {hi}]"
            )


# ------------------------------------------------------------------------------------------------------------
# The compiled op: fake kernels and backward formula, registered with torch.library.
# ------------------------------------------------------------------------------------------------------------
def _forward_fake(pixel_embed, obj_embed, batch_idx, boxes, fill):
    return pixel_embed.new_empty((obj_embed.shape[0], pixel_embed.shape[2], pixel_embed.shape[3]))


def _backward_fake(grad_out, pixel_embed, obj_embed, batch_idx, boxes):
    return pixel_embed.new_empty(pixel_embed.shape), obj_embed.new_empty(obj_embed.shape)


def _setup_context(ctx, inputs, output):
    pixel_embed, obj_embed, batch_idx, boxes, _ = inputs
    ctx.save_for_backward(pixel_embed, obj_embed, batch_idx, boxes)


def _backward(ctx, grad_out):
    need_pixel, need_obj = ctx.needs_input_grad[:2]
    if not (need_pixel or need_obj):
        return None, None, None, None, None
    grad_pixel, grad_obj = torch.ops.instseg.correlation_crop_backward(grad_out, *ctx.saved_tensors)
    # No gradient for the boxes: the crop is piecewise constant in them.
    return (grad_pixel if need_pixel else None), (grad_obj if need_obj else None), None, None, None


if extension_available():
    torch.library.register_fake(f"instseg::{_FORWARD}", _forward_fake)
    torch.library.register_fake(f"instseg::{_BACKWARD}", _backward_fake)
    torch.library.register_autograd(f"instseg::{_FORWARD}", _backward, setup_context=_setup_context)


def correlation_crop(pixel_embed, obj_embed, batch_idx, boxes, fill=float("-inf")):
    """Foreground logits of RDSNet's correlation module (Eq. 1), cropped by each object's box.

    Args:
        pixel_embed: Ψ(U), (N, d, h, w) pixel representations (float16/bfloat16/float32/float64).
        obj_embed: φ(v_o), (K, 2, d): the foreground then the background kernel of each object (same dtype).
        batch_idx: (K,) integer image index of each object, in [0, N).
        boxes: (K, 4) floating (x1, y1, x2, y2) in the pixel embedding's pixel coordinates, already expanded
            by the caller (RDSNet: ×1.5 in training, ×1.2 at inference).
        fill: value of the pixels whose centre lies outside the box (default −inf: background).

    Returns:
        (K, h, w) tensor z with softmax(Eq. 1)[foreground] = sigmoid(z) inside each box and ``fill`` outside.
        Differentiable with respect to ``pixel_embed`` and ``obj_embed``; outside pixels pass no gradient.

    Raises:
        ValueError: wrong types, shapes, dtypes, devices or batch indices.
    """
    _check_inputs(pixel_embed, obj_embed, batch_idx, boxes, fill)
    fill = float(fill)
    impl = dispatch(_FORWARD, correlation_crop_reference, pixel_embed, obj_embed, batch_idx, boxes)
    if impl is correlation_crop_reference:  # instseg._C not built: the pure-PyTorch path (CPU only)
        return correlation_crop_reference(pixel_embed, obj_embed, batch_idx, boxes, fill)
    return impl(pixel_embed, obj_embed, batch_idx.to(torch.int64), boxes, fill)


class CorrelationCrop(nn.Module):
    """Module form of :func:`correlation_crop` (RDSNet's correlation + cropping modules)."""

    def __init__(self, fill: float = float("-inf")):
        super().__init__()
        if not isinstance(fill, numbers.Real) or isinstance(fill, bool):
            raise ValueError(f"CorrelationCrop: 'fill' must be a real number, got {fill!r}")
        self.fill = float(fill)

    def forward(self, pixel_embed, obj_embed, batch_idx, boxes):
        return correlation_crop(pixel_embed, obj_embed, batch_idx, boxes, self.fill)

    def extra_repr(self) -> str:
        return f"fill={self.fill}"
