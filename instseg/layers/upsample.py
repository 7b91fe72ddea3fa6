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


def _is_plain(m: nn.Module, cls, kernel: int) -> bool:
    """``m`` is a ``cls`` with a ``kernel`` x ``kernel`` window moved by its own size, no padding, dilation,
    groups, norm or activation: then every output pixel is a matrix product of one input pixel."""
    return (
        isinstance(m, cls)
        and tuple(m.kernel_size) == (kernel, kernel)
        and tuple(m.stride) == (kernel, kernel)
        and tuple(m.padding) == (0, 0)
        and tuple(getattr(m, "output_padding", (0, 0))) == (0, 0)
        and tuple(m.dilation) == (1, 1)
        and m.groups == 1
        and getattr(m, "norm", None) is None
        and getattr(m, "activation", None) is None
    )


def upsample_and_predict(x: torch.Tensor, deconv: nn.Module, predictor: nn.Module) -> torch.Tensor:
    """``predictor(relu(deconv(x)))`` for x (R, D_in, S, S) -> logits (R, C, 2S, 2S).

    Uses the matrix-product form when ``deconv`` is a 2x2 stride-2 ConvTranspose2d and ``predictor`` a
    plain 1x1 Conv2d (detectron2's mask head); any other pair runs as the modules themselves."""
    if x.dim() != 4 or not (_is_plain(deconv, nn.ConvTranspose2d, 2) and _is_plain(predictor, nn.Conv2d, 1)):
        return predictor(F.relu(deconv(x)))
    r, d_in, h, w = x.shape
    d_out, c = deconv.out_channels, predictor.out_channels
    # (D_in, D_out, 2, 2) -> (D_in, 2, 2, D_out): each input pixel gives its 2x2 output pixels' features
    wd = deconv.weight.permute(0, 2, 3, 1).reshape(d_in, 4 * d_out)
    pix = x.permute(0, 2, 3, 1).reshape(r * h * w, d_in)
    # one (R*S*S, 4*D_out) buffer, biased by addmm and rectified in place (neither product needs it back)
    up = pix @ wd if deconv.bias is None else torch.addmm(deconv.bias.repeat(4), pix, wd)
    up = up.relu_().view(r * h * w * 4, d_out)
    pw = predictor.weight.view(c, d_out).t()
    logits = up @ pw if predictor.bias is None else torch.addmm(predictor.bias, up, pw)  # (R*S*S*4, C)
    # (R, S, S, 2, 2, C) -> (R, C, S, 2, S, 2) -> (R, C, 2S, 2S)
    logits = logits.view(r, h, w, 2, 2, c).permute(0, 5, 1, 3, 2, 4)
    return logits.reshape(r, c, 2 * h, 2 * w)
