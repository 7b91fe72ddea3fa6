"""instseg.layers.upsample_and_predict: the mask head's deconv -> ReLU -> 1x1 predictor as matrix products."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from instseg.layers import upsample_and_predict


def _reference(x, deconv, predictor):
    return predictor(F.relu(deconv(x)))


@pytest.mark.parametrize("r,d_in,d_out,c,s", [(5, 8, 6, 3, 7), (3, 16, 16, 1, 14), (1, 4, 8, 2, 1)])
def test_matches_modules_values_and_gradients(r, d_in, d_out, c, s):
    torch.manual_seed(0)
    deconv, predictor = nn.ConvTranspose2d(d_in, d_out, 2, stride=2), nn.Conv2d(d_out, c, 1)
    x = torch.randn(r, d_in, s, s, dtype=torch.float64, requires_grad=True)
    deconv, predictor = deconv.double(), predictor.double()
    ref = _reference(x, deconv, predictor)
    out = upsample_and_predict(x, deconv, predictor)
    assert out.shape == (r, c, 2 * s, 2 * s)
    torch.testing.assert_close(out, ref)
    params = [x, deconv.weight, deconv.bias, predictor.weight, predictor.bias]
    g_ref = torch.autograd.grad((ref * torch.arange(ref.numel()).view_as(ref).sin()).sum(), params)
    g_out = torch.autograd.grad((out * torch.arange(out.numel()).view_as(out).sin()).sum(), params)
    for a, b in zip(g_out, g_ref):
        torch.testing.assert_close(a, b)


def test_no_bias_and_detectron2_style_modules():
    deconv = nn.ConvTranspose2d(4, 4, 2, stride=2, bias=False)
    predictor = nn.Conv2d(4, 2, 1, bias=False)
    x = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(upsample_and_predict(x, deconv, predictor), _reference(x, deconv, predictor))


def test_empty_batch():
    deconv, predictor = nn.ConvTranspose2d(4, 4, 2, stride=2), nn.Conv2d(4, 1, 1)
    out = upsample_and_predict(torch.zeros(0, 4, 14, 14), deconv, predictor)
    assert out.shape == (0, 1, 28, 28)


@pytest.mark.parametrize(
    "deconv,predictor",
    [
        (nn.ConvTranspose2d(4, 4, 4, stride=2, padding=1), nn.Conv2d(4, 1, 1)),  # another upsampling
        (nn.ConvTranspose2d(4, 4, 2, stride=2), nn.Conv2d(4, 1, 3, padding=1)),  # a 3x3 predictor
    ],
)
def test_other_layers_run_as_modules(deconv, predictor):
    x = torch.randn(2, 4, 6, 6)
    torch.testing.assert_close(upsample_and_predict(x, deconv, predictor), _reference(x, deconv, predictor))
