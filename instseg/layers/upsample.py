"""The tail of a Mask R-CNN mask head, ``predictor(relu(deconv(x)))``, as two matrix products.

detectron2's mask head upsamples with a 2x2, stride-2 transposed convolution. Every output pixel then comes
from exactly one input pixel, so the layer is a matrix product per input pixel (D_in -> 4 x D_out); the
1x1 predictor is another matrix product per output pixel. On the CPU, PyTorch's ConvTranspose2d and the
NCHW copy of its (R, D_out, 2S, 2S) output cost about as much as two of the head's 3x3 convs on the RoI
batches of an MPN (DSG runs one on all 1000 test proposals). This computes the same function, with the
same parameters, in pixel-major layout, and only reshapes the small (R, C, 2S, 2S) logits at the end.
"""
import torch
from torch import nn
from torch.nn import functional as F


def _is_2x_deconv(deconv: nn.Module) -> bool:
    return (
        isinstance(deconv, nn.ConvTranspose2d)
        and tuple(deconv.kernel_size) == (2, 2)
        and tuple(deconv.stride) == (2, 2)
        and tuple(deconv.padding) == (0, 0)
        and tuple(deconv.output_padding) == (0, 0)
        and tuple(deconv.dilation) == (1, 1)
        and deconv.groups == 1
    )


def _is_1x1_conv(conv: nn.Module) -> bool:
    return (
        isinstance(conv, nn.Conv2d)
        and tuple(conv.kernel_size) == (1, 1)
        and tuple(conv.stride) == (1, 1)
        and tuple(conv.padding) == (0, 0)
        and conv.groups == 1
        and getattr(conv, "norm", None) is None
        and getattr(conv, "activation", None) is None
    )


def upsample_and_predict(x: torch.Tensor, deconv: nn.Module, predictor: nn.Module) -> torch.Tensor:
    """``predictor(relu(deconv(x)))`` for x (R, D_in, S, S) -> logits (R, C, 2S, 2S).

    Uses the matrix-product form when ``deconv`` is a 2x2 stride-2 ConvTranspose2d and ``predictor`` a
    plain 1x1 Conv2d (detectron2's mask head); any other pair runs as the modules themselves."""
    if not (_is_2x_deconv(deconv) and _is_1x1_conv(predictor)) or x.dim() != 4:
        return predictor(F.relu(deconv(x)))
    r, d_in, h, w = x.shape
    d_out, c = deconv.out_channels, predictor.out_channels
    # (D_in, D_out, 2, 2) -> (D_in, 2, 2, D_out): each input pixel gives its 2x2 output pixels' features
    wd = deconv.weight.permute(0, 2, 3, 1).reshape(d_in, 4 * d_out)
    pix = x.permute(0, 2, 3, 1).reshape(r * h * w, d_in)
    up = pix @ wd  # (R*S*S, 4*D_out)
    up = up.view(r * h * w * 4, d_out)
    if deconv.bias is not None:
        up = up + deconv.bias
    up = F.relu(up)
    logits = up @ predictor.weight.view(c, d_out).t()  # (R*S*S*4, C)
    if predictor.bias is not None:
        logits = logits + predictor.bias
    # (R, S, S, 2, 2, C) -> (R, C, S, 2, S, 2) -> (R, C, 2S, 2S)
    logits = logits.view(r, h, w, 2, 2, c).permute(0, 5, 1, 3, 2, 4)
    return logits.reshape(r, c, 2 * h, 2 * w)
