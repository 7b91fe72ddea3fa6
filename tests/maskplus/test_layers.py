"""MaskPlus's torch-only blocks: boundary refinement (Sec. 3.3, 4.6, Table 3) and the deconvolutional pyramid
(Sec. 3.2, 4.5, Table 2)."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from maskplus.layers import (
    DeconvPyramid,
    ImprovedBoundaryRefinement,
    OriginalBoundaryRefinement,
    build_boundary_refinement,
)


def _randomise(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)
    return module


def test_sec33_original_boundary_refinement_is_peng_residual_block():
    """Table 3 "original": x + conv3x3(ReLU(conv3x3(x))), no normalisation, as wide as the logits."""
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    br = _randomise(OriginalBoundaryRefinement(3).double())
    w1, b1, w2, b2 = br.conv1.weight, br.conv1.bias, br.conv2.weight, br.conv2.bias
    expected = x + F.conv2d(F.relu(F.conv2d(x, w1, b1, padding=1)), w2, b2, padding=1)
    torch.testing.assert_close(br(x), expected)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in br.modules())


def test_sec46_improved_boundary_refinement_dense_modules():
    """Sec. 4.6: 4 modules of BN -> PReLU -> Conv(16) -> BN -> PReLU -> Conv(4), module i on the concatenation of the
    logits and all previous outputs (widths C, C+4, C+8, C+12), then a 1x1 conv of C+16 channels back to C, added."""
    C = 5
    br = ImprovedBoundaryRefinement(C)
    assert len(br.dense) == 4
    for i, module in enumerate(br.dense):
        kinds = [type(m).__name__ for m in module]
        assert kinds == ["BatchNorm2d", "PReLU", "Conv2d", "BatchNorm2d", "PReLU", "Conv2d"]
        assert module[0].num_features == C + 4 * i
        assert (module[2].in_channels, module[2].out_channels, module[2].kernel_size) == (C + 4 * i, 16, (1, 1))
        assert (module[5].in_channels, module[5].out_channels, module[5].kernel_size) == (16, 4, (3, 3))
    assert (br.fuse.in_channels, br.fuse.out_channels) == (C + 16, C)
    x = torch.randn(3, C, 7, 7, dtype=torch.float64)
    br = br.double().eval()
    torch.testing.assert_close(br(x), x)  # the zero-initialised 1x1 conv: starts as the identity
    _randomise(br, seed=1)
    # dense connectivity by hand: each module sees everything before it, concatenated (not summed)
    m1 = br.dense[0](x)
    m2 = br.dense[1](torch.cat([x, m1], 1))
    m3 = br.dense[2](torch.cat([x, m1, m2], 1))
    m4 = br.dense[3](torch.cat([x, m1, m2, m3], 1))
    expected = x + br.fuse(torch.cat([x, m1, m2, m3, m4], 1))
    torch.testing.assert_close(br(x), expected)
    assert (expected - x).abs().max() > 1e-3


def test_table3_switch_builds_each_refinement():
    assert isinstance(build_boundary_refinement("none", 4), nn.Identity)
    assert isinstance(build_boundary_refinement("original", 4), OriginalBoundaryRefinement)
    assert isinstance(build_boundary_refinement("improved", 4), ImprovedBoundaryRefinement)
    with pytest.raises(ValueError, match="BOUNDARY_REFINEMENT"):
        build_boundary_refinement("dense", 4)


def test_sec32_deconv_pyramid_adds_at_matching_scales():
    """Sec. 3.2 / 4.5: up 2x twice, down 2x twice, 256 filters everywhere (added, not concatenated), output the shape of
    the input; the sums pair the 2S x 2S maps and the S x S maps."""
    p = DeconvPyramid(256)
    for layer, kind, stride in (
        (p.up1, nn.ConvTranspose2d, 2),
        (p.up2, nn.ConvTranspose2d, 2),
        (p.down1, nn.Conv2d, 2),
        (p.down2, nn.Conv2d, 2),
    ):
        assert isinstance(layer, kind) and (layer.in_channels, layer.out_channels) == (256, 256)
        assert layer.stride == (stride, stride)
    x = torch.randn(2, 256, 14, 14)
    seen = {}
    for name in ("up1", "up2", "down1", "down2"):
        getattr(p, name).register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, (i[0], o)))
    out = p(x)
    assert out.shape == x.shape
    assert seen["up1"][1].shape[-1] == 28 and seen["up2"][1].shape[-1] == 56 and seen["down1"][1].shape[-1] == 28
    u1 = F.relu(seen["up1"][1])
    torch.testing.assert_close(seen["up2"][0], u1)
    torch.testing.assert_close(seen["down1"][0], F.relu(seen["up2"][1]))
    d1 = F.relu(seen["down1"][1]) + u1
    torch.testing.assert_close(seen["down2"][0], d1)
    torch.testing.assert_close(out, F.relu(seen["down2"][1]) + x)
    out.sum().backward()
    assert all(getattr(p, n).weight.grad.abs().sum() > 0 for n in ("up1", "up2", "down1", "down2"))


def test_sec31_contextual_fusion_adds_each_images_context_to_its_rois():
    """Sec. 3.1 / Table 1: 3x3 stride-1 convs (ReLU between, none after the last) on each image's context map, the
    result added to every RoI of that image; two images, 3 and 1 RoIs, checked by hand with F.conv2d."""
    from maskplus.layers import ContextualFusion

    fusion = _randomise(ContextualFusion(4, [6, 5, 4]).double())
    convs = [m for m in fusion.convs if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (4, 6, (3, 3), (1, 1)),
        (6, 5, (3, 3), (1, 1)),
        (5, 4, (3, 3), (1, 1)),
    ]
    context = torch.randn(2, 4, 7, 7, dtype=torch.float64)
    rois = torch.randn(4, 4, 7, 7, dtype=torch.float64)
    h = context
    for i, c in enumerate(convs):
        h = F.conv2d(h, c.weight, c.bias, padding=1)
        if i < len(convs) - 1:
            h = F.relu(h)
    expected = rois + torch.stack([h[0], h[0], h[0], h[1]])
    torch.testing.assert_close(fusion(rois, context, [3, 1]), expected)
    # an image without RoIs takes nothing; no RoI at all gives an empty batch
    torch.testing.assert_close(fusion(rois, context, [0, 4]), rois + h[1])
    assert fusion(rois[:0], context, [0, 0]).shape == (0, 4, 7, 7)


def test_sec31_contextual_fusion_refuses_widths_that_cannot_be_added():
    from maskplus.layers import ContextualFusion

    with pytest.raises(ValueError, match="the last conv must have their 256 channels"):
        ContextualFusion(256, [720, 512, 512])
    fusion = ContextualFusion(4, [4])
    with pytest.raises(ValueError, match="2 context maps and 1 images"):
        fusion(torch.zeros(3, 4, 7, 7), torch.zeros(2, 4, 7, 7), [3])
