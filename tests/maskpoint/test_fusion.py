"""Mask Point R-CNN Eq. 1-2 and the fusion ablations of Tables II-IV (structure, reduction, mode)."""

import itertools

import pytest
import torch
from torch.nn import functional as F

from maskpoint.layers import FUSIONS, REDUCTIONS, STRUCTURES, ContourFusion

K, C, R = 5, 3, 4


def _inputs(structure, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    s = 28 if structure == "d" else 56
    mask = torch.randn(R, C, 28, 28, generator=g, dtype=dtype)
    kp = torch.randn(R, K, s, s, generator=g, dtype=dtype)
    return mask, kp


def _randomize(m):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    return m


@pytest.mark.parametrize("structure,reduction,fusion", list(itertools.product(STRUCTURES, REDUCTIONS, FUSIONS)))
def test_table2_4_every_combination_gives_the_right_shape(structure, reduction, fusion):
    m = _randomize(ContourFusion(K, C, structure, reduction, fusion).double())  # trained, not identity, weights
    mask, kp = _inputs(structure)
    mask.requires_grad_()
    kp.requires_grad_()
    out = m(mask, kp)
    side = 56 if structure == "c" and fusion != "none" else 28
    assert out.shape == (R, C, side, side)
    out.sum().backward()  # differentiable in every setting
    assert mask.grad is not None
    # the keypoint maps reach the mask output unless the fusion is off (multi-task only)
    assert (kp.grad is not None and kp.grad.abs().sum() > 0) == (fusion != "none")


def test_mask_point_eq1_is_the_channel_sum_of_per_map_3x3_stride2_convolutions():
    m = _randomize(ContourFusion(K, C, "b", "conv", "mul").double())
    mask, kp = _inputs("b")
    w, b = m.reduce_conv.weight, m.reduce_conv.bias  # (K, 1, 3, 3), (K,)
    # Eq. 1 literally: conv each keypoint map with its own 3x3 stride-2 kernel, then sum over i = 1..k+1
    o_k = sum(F.conv2d(kp[:, i : i + 1], w[i : i + 1], b[i : i + 1], stride=2, padding=1) for i in range(K))
    torch.testing.assert_close(m.reduce(kp), o_k)
    # Eq. 2: O_m = O_k (x) f_m, broadcast to every class channel
    torch.testing.assert_close(m(mask, kp), o_k * mask)
    # the fast form has the gradients of the literal one
    kp1, kp2 = kp.clone().requires_grad_(), kp.clone().requires_grad_()
    gm = torch.randn(R, 1, 28, 28, dtype=torch.float64)
    (m.reduce(kp1) * gm).sum().backward()
    grad_w_fast = w.grad.clone()
    w.grad = None
    lit = sum(F.conv2d(kp2[:, i : i + 1], w[i : i + 1], b[i : i + 1], stride=2, padding=1) for i in range(K))
    (lit * gm).sum().backward()
    torch.testing.assert_close(kp1.grad, kp2.grad)
    torch.testing.assert_close(grad_w_fast, w.grad)


def test_mask_point_eq1_eq2_hand_computed():
    # k+1 = 2 maps of 4x4, one class; kernels that pick the window centre: 1x map 0 and 2x map 1, biases 0.5
    m = ContourFusion(2, 1, "b", "conv", "mul")
    with torch.no_grad():
        m.reduce_conv.weight.zero_()
        m.reduce_conv.weight[0, 0, 1, 1] = 1.0
        m.reduce_conv.weight[1, 0, 1, 1] = 2.0
        m.reduce_conv.bias.fill_(0.5)
    kp = torch.zeros(1, 2, 4, 4)
    kp[0, 0] = torch.arange(16.0).reshape(4, 4)
    kp[0, 1] = 1.0
    # stride 2, padding 1: the window centres are pixels (0,0), (0,2), (2,0), (2,2)
    # O_k = map0[centre] + 2 * map1[centre] + (0.5 + 0.5) = [[0, 2], [8, 10]] + 2 + 1
    expected_ok = torch.tensor([[3.0, 5.0], [11.0, 13.0]])
    mask = torch.tensor([[[[1.0, -1.0], [0.5, 2.0]]]])
    torch.testing.assert_close(m.reduce(kp)[0, 0], expected_ok)
    torch.testing.assert_close(m(mask, kp)[0, 0], expected_ok * mask[0, 0])  # Eq. 2, elementwise product
    m_add = ContourFusion(2, 1, "b", "conv", "add")
    m_add.load_state_dict(m.state_dict())
    torch.testing.assert_close(m_add(mask, kp)[0, 0], expected_ok + mask[0, 0])
    m_max = ContourFusion(2, 1, "b", "conv", "max")
    m_max.load_state_dict(m.state_dict())
    torch.testing.assert_close(m_max(mask, kp)[0, 0], torch.maximum(expected_ok, mask[0, 0]))


def test_table2_structure_a_sums_first_then_reduces():
    m = _randomize(ContourFusion(K, C, "a", "conv", "mul").double())
    mask, kp = _inputs("a")
    conv = m.reduce_conv
    expected = F.conv2d(kp.sum(1, keepdim=True), conv.weight, conv.bias, stride=2, padding=1)
    torch.testing.assert_close(m(mask, kp), expected * mask)


def test_table2_structures_c_and_d_sum_the_maps_at_their_own_resolution():
    mask, kp56 = _inputs("c")
    mc = _randomize(ContourFusion(K, C, "c", "conv", "mul").double())
    up = mc.mask_upsample(mask)
    assert up.shape == (R, C, 56, 56)
    torch.testing.assert_close(mc(mask, kp56), kp56.sum(1, keepdim=True) * up)
    _, kp28 = _inputs("d")
    md = ContourFusion(K, C, "d", "conv", "mul").double()
    torch.testing.assert_close(md(mask, kp28), kp28.sum(1, keepdim=True) * mask)
    assert not md.keypoint_upsample and mc.keypoint_upsample
    with pytest.raises(ValueError, match="twice the mask side"):
        md(mask, kp56)


@pytest.mark.parametrize("structure", ["a", "b"])
def test_table3_pooling_reductions(structure):
    mask, kp = _inputs(structure)
    for reduction, pool in (
        ("max", lambda x: F.max_pool2d(x, 3, 2, 1)),
        ("avg", lambda x: F.avg_pool2d(x, 3, 2, 1, count_include_pad=False)),
    ):
        m = ContourFusion(K, C, structure, reduction, "add").double()
        assert m.reduce_conv is None  # nothing to learn
        expected = pool(kp).sum(1, keepdim=True) if structure == "b" else pool(kp.sum(1, keepdim=True))
        torch.testing.assert_close(m(mask, kp), expected + mask)


def test_table4_none_is_multitask_only_and_init_is_identity():
    mask, kp = _inputs("b")
    none = ContourFusion(K, C, "b", "conv", "none").double()
    assert none(mask, kp) is mask and len(list(none.parameters())) == 0
    # the learnable reduction starts as the identity fusion: training starts from Mask R-CNN's output
    for fusion in ("mul", "add"):
        torch.testing.assert_close(ContourFusion(K, C, "b", "conv", fusion).double()(mask, kp), mask)
    # max starts as max(0, f_m): O_k = 0 (the conv must see gradient where f_m < 0 to learn anything)
    torch.testing.assert_close(ContourFusion(K, C, "b", "conv", "max").double()(mask, kp), mask.clamp(min=0))
    c = ContourFusion(K, C, "c", "conv", "add").double()
    torch.testing.assert_close(c.mask_upsample(mask), mask.repeat_interleave(2, 2).repeat_interleave(2, 3))


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="FUSION_STRUCTURE"):
        ContourFusion(K, C, "e")
    with pytest.raises(ValueError, match="REDUCTION"):
        ContourFusion(K, C, reduction="median")
    with pytest.raises(ValueError, match="FUSION"):
        ContourFusion(K, C, fusion="concat")
    m = ContourFusion(K, C)
    with pytest.raises(ValueError, match="keypoint maps"):
        m(torch.zeros(2, C, 28, 28), torch.zeros(2, K + 1, 56, 56))
    with pytest.raises(ValueError, match="same R"):
        m(torch.zeros(2, C, 28, 28), torch.zeros(3, K, 56, 56))
    # no RoI at all (an image without detections) is fine
    assert m(torch.zeros(0, C, 28, 28), torch.zeros(0, K, 56, 56)).shape == (0, C, 28, 28)
