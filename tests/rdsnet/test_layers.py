"""RDSNet's torch-only layers against the paper: box expansion of the cropping module (Sec. 4.1), the mask loss with
OHEM and its normalisation (Sec. 3.2), Table 4's *direct* box, and MBRM (Sec. 3.3, Eq. 2-7), on hand-built cases."""

import math

import pytest
import torch

from rdsnet.layers import MBRM, expand_boxes, mask_enclosing_boxes, rdsnet_mask_loss


def test_sec41_expand_boxes_about_the_centre_and_clip():
    """Training crops with the ground-truth boxes expanded 1.5x (TE), inference with the detections expanded 1.2x
    (IE), both dimensions, centre kept, clipped to the image."""
    boxes = torch.tensor([[10.0, 20.0, 30.0, 60.0], [2.0, 4.0, 12.0, 9.0]])
    torch.testing.assert_close(
        expand_boxes(boxes, 1.5), torch.tensor([[5.0, 10.0, 35.0, 70.0], [-0.5, 2.75, 14.5, 10.25]])
    )
    torch.testing.assert_close(
        expand_boxes(boxes, 1.5, image_size=(64, 32)), torch.tensor([[5.0, 10.0, 32.0, 64.0], [0.0, 2.75, 14.5, 10.25]])
    )
    torch.testing.assert_close(expand_boxes(boxes, 1.2), torch.tensor([[8.0, 16.0, 32.0, 64.0], [1.0, 3.5, 13.0, 9.5]]))
    with pytest.raises(ValueError, match="ratio must be > 0"):
        expand_boxes(boxes, 0.0)


def test_table4_direct_box_is_the_masks_enclosing_rectangle():
    masks = torch.zeros(3, 6, 8, dtype=torch.bool)
    masks[0, 1:4, 2:7] = True
    masks[1, 5, 0] = True
    masks[1, 2, 3] = True
    fallback = torch.tensor([[0.0, 0, 1, 1], [0.0, 0, 1, 1], [1.5, 2.5, 3.5, 4.5]])
    out = mask_enclosing_boxes(masks, fallback)
    torch.testing.assert_close(out, torch.tensor([[2.0, 1, 7, 4], [0.0, 2, 4, 6], [1.5, 2.5, 3.5, 4.5]]))


def _bce(z, t):
    p = 1 / (1 + math.exp(-z))
    return -math.log(p) if t else -math.log(1 - p)


def test_sec32_mask_loss_ohem_keeps_the_hardest_negatives_at_1_to_1_and_normalises_per_object():
    """Object 0: 2 foreground pixels in its crop, 5 background ones (losses all different) and one very hard
    background pixel outside the crop (ignored). OHEM keeps the 2 hardest background pixels of the crop. Object 1:
    1 foreground, 3 background pixels: keeps 1. Each object's loss is the mean over its kept pixels; the loss the
    mean over objects (not over all kept pixels)."""
    logits = torch.tensor(
        [
            [[2.0, -1.0, 0.5, -3.0], [1.5, 0.2, -0.7, 9.0]],
            [[0.3, -2.0, 1.2, 0.0], [0.0, 0.0, 0.0, 0.0]],
        ]
    )
    targets = torch.tensor(
        [
            [[1, 1, 0, 0], [0, 0, 0, 0]],
            [[1, 0, 0, 0], [0, 0, 0, 0]],
        ],
        dtype=torch.bool,
    )
    valid = torch.tensor(
        [
            [[1, 1, 1, 1], [1, 1, 1, 0]],
            [[1, 1, 1, 1], [0, 0, 0, 0]],
        ],
        dtype=torch.bool,
    )
    # object 0: positives 2.0, -1.0; negatives 0.5, -3.0, 1.5, 0.2, -0.7 -> hardest 1.5 and 0.5
    o0 = (_bce(2.0, 1) + _bce(-1.0, 1) + _bce(1.5, 0) + _bce(0.5, 0)) / 4
    # object 1: positive 0.3; negatives -2.0, 1.2, 0.0 -> hardest 1.2
    o1 = (_bce(0.3, 1) + _bce(1.2, 0)) / 2
    loss = rdsnet_mask_loss(logits, targets, valid, ohem=True)
    assert loss.item() == pytest.approx((o0 + o1) / 2, rel=1e-6)
    # without OHEM every pixel of the crop counts
    a0 = (_bce(2.0, 1) + _bce(-1.0, 1) + sum(_bce(z, 0) for z in (0.5, -3.0, 1.5, 0.2, -0.7))) / 7
    a1 = (_bce(0.3, 1) + sum(_bce(z, 0) for z in (-2.0, 1.2, 0.0))) / 4
    assert rdsnet_mask_loss(logits, targets, valid, ohem=False).item() == pytest.approx((a0 + a1) / 2, rel=1e-6)
    # 2 negatives per positive
    o1_2 = (_bce(0.3, 1) + _bce(1.2, 0) + _bce(0.0, 0)) / 3
    o0_2 = (_bce(2.0, 1) + _bce(-1.0, 1) + _bce(1.5, 0) + _bce(0.5, 0) + _bce(0.2, 0) + _bce(-0.7, 0)) / 6
    loss2 = rdsnet_mask_loss(logits, targets, valid, ohem=True, neg_pos_ratio=2.0)
    assert loss2.item() == pytest.approx((o0_2 + o1_2) / 2, rel=1e-6)


def test_sec32_mask_loss_ignores_outside_the_crop_even_at_minus_inf_and_handles_empty_objects():
    """Outside the crop the op leaves -inf: no nan, no gradient there. An object without a foreground pixel keeps no
    pixel under OHEM and is left out; no object at all gives a 0 connected to the graph."""
    logits = torch.tensor([[[0.5, float("-inf")]], [[1.0, -1.0]]], requires_grad=True)
    targets = torch.tensor([[[1, 0]], [[0, 0]]], dtype=torch.bool)
    valid = torch.tensor([[[1, 0]], [[1, 1]]], dtype=torch.bool)
    loss = rdsnet_mask_loss(logits, targets, valid)
    assert loss.item() == pytest.approx(_bce(0.5, 1))
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad[0, 0, 1] == 0 and (logits.grad[1] == 0).all()
    empty = torch.zeros(0, 4, 4, requires_grad=True)
    out = rdsnet_mask_loss(empty, torch.zeros(0, 4, 4, dtype=torch.bool), torch.zeros(0, 4, 4, dtype=torch.bool))
    assert out.item() == 0.0 and out.requires_grad


def _hand_posterior(profile, mu, sigma, kernel, bias, s):
    """Eq. 3-7 for one side, written out with Python loops."""
    n = len(profile)
    like = []
    for i in range(n):
        acc = bias
        for j in range(-s, s + 1):
            if 0 <= i + j < n:
                acc += kernel[j + s] * profile[i + j]
        like.append(1 / (1 + math.exp(-acc)))
    prior = [math.exp(-((i - mu) ** 2) / (2 * sigma**2)) for i in range(n)]
    z = sum(p * q for p, q in zip(prior, like))
    return [p * q / z for p, q in zip(prior, like)]


def test_sec33_mbrm_eq3_to_eq7_on_a_hand_built_mask():
    """MBRM on a 12 x 16 mask whose foreground covers columns 4..11 and rows 3..8 (soft edges), regressed box
    (5.4, 2.2, 10.3, 9.6): each side's posterior equals Eq. 3 with the Eq. 5 likelihood (max-projection, 1-D conv,
    sigmoid) and the Eq. 6-7 prior, computed by hand; the refined box is each posterior's argmax (Eq. 2)."""
    h, w, s = 12, 16, 2
    probs = torch.zeros(1, h, w, dtype=torch.float64)
    probs[0, 3:9, 4:12] = 0.9
    probs[0, 3:9, 3] = 0.4  # a soft left edge
    probs[0, 5, 12] = 0.6  # one row reaches further right: the max-projection sees it
    probs[0, 2, 5:9] = 0.3
    box = torch.tensor([[5.4, 2.2, 10.3, 9.6]], dtype=torch.float64)
    mbrm = MBRM(s=s, gamma=0.2, shared_kernel=False).double()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        mbrm.kernels.copy_(torch.randn(4, 2 * s + 1, generator=g, dtype=torch.float64) * 2)
        mbrm.biases.copy_(torch.randn(4, generator=g, dtype=torch.float64))
    post = [lp.exp()[0].tolist() for lp in mbrm.log_posteriors(probs, box)]
    prof_x = probs[0].max(dim=0).values.tolist()
    prof_y = probs[0].max(dim=1).values.tolist()
    bw, bh = 10.3 - 5.4, 9.6 - 2.2
    k = mbrm.kernels.tolist()
    b = mbrm.biases.tolist()
    left = _hand_posterior(prof_x, 5.4, max(0.2 * bw, 1), k[0], b[0], s)
    top = _hand_posterior(prof_y, 2.2, max(0.2 * bh, 1), k[1], b[1], s)
    # right / bottom: profiles read from the outside in (mirrored), mu = x2 - 1 in pixel units
    right = _hand_posterior(prof_x[::-1], (w - 1) - (10.3 - 1), max(0.2 * bw, 1), k[2], b[2], s)[::-1]
    bottom = _hand_posterior(prof_y[::-1], (h - 1) - (9.6 - 1), max(0.2 * bh, 1), k[3], b[3], s)[::-1]
    for got, want in zip(post, [left, top, right, bottom]):
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12)
    refined = mbrm(probs, box)[0].tolist()
    am = [max(range(len(p)), key=p.__getitem__) for p in (left, top, right, bottom)]
    assert refined == [am[0], am[1], am[2] + 1, am[3] + 1]


def test_sec33_mbrm_shared_kernel_is_mirrored_for_right_and_bottom():
    """The authors' shared kernel: a mask symmetric about the box centre refines symmetrically."""
    probs = torch.zeros(1, 10, 10)
    probs[0, 2:8, 3:7] = 1.0
    mbrm = MBRM(s=2, gamma=0.5, shared_kernel=True)
    out = mbrm(probs, torch.tensor([[2.0, 1.0, 8.0, 9.0]]))[0]
    assert out.tolist() == [3.0, 2.0, 7.0, 8.0]  # the mask's edges, each side found from its own outside
    assert mbrm.kernels.shape == (1, 5)


def test_fig5_mbrm_gamma_zero_returns_the_regressed_box_and_sigma_is_at_least_a_pixel():
    """Fig. 5: gamma = 0 deactivates the refinement. A tiny gamma keeps sigma at one pixel: the prior then dominates
    a flat likelihood and the argmax is the regressed coordinate's nearest pixel."""
    probs = torch.rand(2, 9, 11, generator=torch.Generator().manual_seed(1))
    boxes = torch.tensor([[1.3, 2.2, 7.6, 8.1], [0.0, 0.0, 11.0, 9.0]])
    assert torch.equal(MBRM(gamma=0.0)(probs, boxes), boxes)
    flat = MBRM(s=1, gamma=1e-6)
    with torch.no_grad():
        flat.kernels.zero_()
    torch.testing.assert_close(flat(probs, boxes), torch.tensor([[1.0, 2.0, 8.0, 8.0], [0.0, 0.0, 11.0, 9.0]]))


def test_sec33_mbrm_boundary_loss_is_the_cross_entropy_at_the_ground_truth_coordinate():
    probs = torch.rand(1, 8, 9, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    box = torch.tensor([[2.0, 1.0, 7.0, 6.0]], dtype=torch.float64)
    gt = torch.tensor([[3.0, 1.0, 8.0, 5.0]], dtype=torch.float64)
    mbrm = MBRM(s=1, gamma=0.3).double()
    lps = mbrm.log_posteriors(probs, box)
    expected = -(lps[0][0, 3] + lps[1][0, 1] + lps[2][0, 7] + lps[3][0, 4]) / 4
    loss = mbrm.boundary_loss(probs, box, gt)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert mbrm.kernels.grad.abs().sum() > 0


def test_sec33_mbrm_keeps_the_regressed_box_for_an_empty_mask_and_for_crossing_sides():
    """An empty mask carries no evidence: the regressed box comes back (as for *direct*). Where the refined sides
    would cross (a 1-px box, a neighbour's mask), that axis keeps its regressed coordinates."""
    mbrm = MBRM(s=1, gamma=1.0)
    boxes = torch.tensor([[10.6, 10.6, 11.2, 11.2], [2.0, 3.0, 9.0, 8.0]])
    prof_x, prof_y = torch.zeros(2, 16), torch.zeros(2, 16)
    prof_x[1, 3:8], prof_y[1, 4:7] = 1.0, 1.0
    out = mbrm.refine(prof_x, prof_y, boxes)
    torch.testing.assert_close(out[0], boxes[0])
    assert out[1].tolist() == [3.0, 4.0, 8.0, 7.0]
    crossing = torch.tensor([[6.0, 3.0, 7.0, 8.0]])
    px = torch.zeros(1, 16)
    px[0, 12:14] = 1.0  # the only evidence lies right of the box: left and right would both move past each other
    out = MBRM(s=1, gamma=5.0).refine(px, prof_y[1:], crossing)
    assert out[0, 2] > out[0, 0]
