"""CASNet's torch-only targets (Sec. III-A/B: Eq. 2's attributes, Eq. 3's centre regions, instance-mode semantic
labels) and post-processing (Sec. III-C) on hand-built maps."""

import math

import pytest
import torch

from casnet.layers import (
    attribute_targets,
    casnet_postprocess,
    centre_targets,
    instance_boxes,
    pixel_boxes,
    pixel_owners,
    semantic_from_instances,
    upsample_instance_ids,
)


def _two_instances():
    """A 16 x 24 input with two instances whose boxes overlap: A = rows 2-9, cols 2-13 (box 2,2,14,10) and B = rows
    6-13, cols 10-21 (box 10,6,22,14); the overlap's pixels are B's (A's mask leaves them out)."""
    masks = torch.zeros(2, 16, 24, dtype=torch.bool)
    masks[0, 2:10, 2:14] = True
    masks[1, 6:14, 10:22] = True
    masks[0, 6:10, 10:14] = False  # the overlap is B's
    boxes = torch.tensor([[2.0, 2.0, 14.0, 10.0], [10.0, 6.0, 22.0, 14.0]])
    return masks, boxes


def test_eq2_attribute_targets_are_the_distances_to_the_box_divided_by_the_stride_on_thing_pixels_only():
    masks, boxes = _two_instances()
    owners = pixel_owners(masks, boxes, (4, 6), stride=4)  # output pixel (i, j) samples input (4i + 2, 4j + 2)
    # output rows sample input rows 2, 6, 10, 14 and columns 2, 6, ..., 22
    expected_owners = torch.tensor(
        [
            [0, 0, 0, -1, -1, -1],  # row 2: A covers cols 2-13
            [0, 0, 1, 1, 1, -1],  # row 6: cols 10-13 are the overlap, B's; B covers cols 10-21
            [-1, -1, 1, 1, 1, -1],  # row 10: below A
            [-1, -1, -1, -1, -1, -1],  # row 14: below B
        ]
    )
    assert torch.equal(owners, expected_owners)
    dist, valid = attribute_targets(owners, boxes, stride=4)
    assert torch.equal(valid, owners >= 0)
    # pixel (1, 1): centre (6, 6), instance A (2, 2, 14, 10): l = 4, t = 4, r = 8, b = 4, over the stride 4
    torch.testing.assert_close(dist[:, 1, 1], torch.tensor([1.0, 1.0, 2.0, 1.0]))
    # pixel (2, 4): centre (18, 10), instance B (10, 6, 22, 14): l = 8, t = 4, r = 4, b = 4
    torch.testing.assert_close(dist[:, 2, 4], torch.tensor([2.0, 1.0, 1.0, 1.0]))
    assert (dist[:, ~valid] == 0).all()


def test_overlapping_masks_go_to_the_smallest_instance():
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, :, :] = True
    masks[1, 2:6, 2:6] = True
    owners = pixel_owners(masks, torch.tensor([[0.0, 0, 8, 8], [2.0, 2, 6, 6]]), (4, 4), stride=2)
    assert owners[1:3, 1:3].eq(1).all() and owners[0].eq(0).all()


def test_eq3_centre_targets_are_fcos_centre_regions_clipped_to_the_box_in_the_class_channel():
    """Radius 1.5 strides around the box centre, clipped to the box, in the box's class channel."""
    boxes = torch.tensor([[0.0, 0.0, 40.0, 16.0], [30.0, 20.0, 34.0, 40.0]])
    t = centre_targets(boxes, torch.tensor([2, 0]), 3, (12, 12), stride=4, radius=1.5)
    # box 0: centre (20, 8), region x in [14, 26], y in [2, 14] -> centres 4j + 2: cols 3..6, rows 0..3
    want0 = torch.zeros(12, 12)
    want0[0:4, 3:7] = 1
    assert torch.equal(t[2], want0)
    # box 1 (4 px wide): centre (32, 30), region x in [30, 34] (clipped), y in [24, 36] -> col 7 (centre 30)... and
    # col 8 (34 is the edge, centre 34 included), rows 6..8 (centres 26, 30, 34)
    want1 = torch.zeros(12, 12)
    want1[6:9, 7:9] = 1
    assert torch.equal(t[0], want1)
    assert t[1].sum() == 0


def test_instance_mode_semantic_labels_come_from_the_instance_masks():
    masks, boxes = _two_instances()
    owners = pixel_owners(masks, boxes, (4, 6), stride=4)
    labels = semantic_from_instances(owners, torch.tensor([3, 1]), background=5)
    assert torch.equal(labels, torch.where(owners == 0, 3, torch.where(owners == 1, 1, 5)))


def _logit(p):
    return math.log(p / (1 - p))


def _maps(h, w, instances, classes=3):
    """Semantic logits, attribute maps and centre logits from hand-made instances: (class, box, centre pixel, p)."""
    sem = torch.full((classes, h, w), -5.0)
    sem[0] = 5.0  # background
    dist = torch.zeros(4, h, w)
    centre = torch.full((classes - 1, h, w), -8.0)
    for cls, (x1, y1, x2, y2), (ci, cj), p in instances:
        for i in range(y1, y2):
            for j in range(x1, x2):
                sem[:, i, j] = -5.0
                sem[cls, i, j] = 5.0
                dist[:, i, j] = torch.tensor([j + 0.5 - x1, i + 0.5 - y1, x2 - j - 0.5, y2 - i - 0.5])
        centre[cls - 1, ci, cj] = _logit(p)
    return sem, dist, centre


def test_sec3c_two_overlapping_boxes_are_split_by_their_pixels_attributes():
    """Two class-1 instances whose boxes overlap (0,0,6,6) and (4,2,10,8): the pixels of the overlap (drawn last: the
    second's) carry the second box, so they join the second seed; every thing pixel joins exactly one instance."""
    sem, dist, centre = _maps(10, 12, [(1, (0, 0, 6, 6), (3, 3), 0.9), (1, (4, 2, 10, 8), (5, 7), 0.8)])
    out = casnet_postprocess(sem, dist, centre, thing_classes=[1, 2], nms_threshold=0.9)
    ids = out["instance_ids"]
    assert len(out["scores"]) == 2
    first, second = ids[3, 3].item(), ids[5, 7].item()
    assert {first, second} == {0, 1}
    assert (ids[2:8, 4:10] == second).all()  # the second box's pixels, overlap included
    assert (ids[0:2, 0:6] == first).all() and (ids[2:6, 0:4] == first).all()
    assert (ids[sem.argmax(0) == 0] == -1).all()
    torch.testing.assert_close(out["boxes"][first], torch.tensor([0.0, 0, 6, 6]))
    assert out["classes"].tolist() == [0, 0]


def test_sec3c_a_seed_without_support_is_dropped_and_classes_do_not_mix():
    """A class-2 seed over class-1 pixels gets no vote (pixels vote among their own class's seeds): dropped."""
    sem, dist, centre = _maps(8, 8, [(1, (1, 1, 6, 6), (3, 3), 0.9)])
    centre[1, 3, 4] = _logit(0.95)  # a class-2 seed where no pixel is class 2
    out = casnet_postprocess(sem, dist, centre, thing_classes=[1, 2])
    assert out["classes"].tolist() == [0] and len(out["boxes"]) == 1
    assert (out["instance_ids"][1:6, 1:6] == 0).all()


def test_sec3c_at_most_seed_topk_seeds_the_most_probable():
    """Three separate class-1 objects with seeds of probability 0.9, 0.7 and 0.8: with SEED_TOPK 2 the 0.7 seed is
    not considered, so its object's pixels (whose boxes meet no other seed's) join no instance; with 3 all are kept."""
    objects = [(1, (0, 0, 3, 3), (1, 1), 0.9), (1, (5, 0, 8, 3), (1, 6), 0.7), (1, (0, 5, 3, 8), (6, 1), 0.8)]
    sem, dist, centre = _maps(8, 8, objects)
    out = casnet_postprocess(sem, dist, centre, thing_classes=[1, 2], seed_topk=2)
    assert [round(v, 3) for v in out["boxes"][:, 0].tolist()] == [0.0, 0.0] and len(out["scores"]) == 2
    assert (out["instance_ids"][0:3, 5:8] == -1).all() and (out["instance_ids"][5:8, 0:3] >= 0).all()
    assert len(casnet_postprocess(sem, dist, centre, thing_classes=[1, 2], seed_topk=3)["scores"]) == 3


def test_sec3c_near_tie_is_decided_by_the_centre():
    """The pixels of one class-1 region all describe the box P = (0, 0, 4, 4). Seed A's box (0, 0, 4, 4.4) has the
    best IoU with P (0.909) but its centre is 0.2 off; seed B's box (0.1, 0.1, 3.9, 3.9) is 0.0065 behind (0.9025) with
    P's very centre. Within tie_eps the centre decides (B); with tie_eps 0 the IoU does (A)."""
    sem, dist, centre = _maps(8, 8, [(1, (0, 0, 4, 4), (1, 1), 0.6)])
    centre[0, 1, 1] = -8.0  # the seeds are placed by hand below, on background pixels (which do not vote)
    for (i, j), box, p in [((6, 6), (0.0, 0.0, 4.0, 4.4), 0.9), ((6, 1), (0.1, 0.1, 3.9, 3.9), 0.8)]:
        x1, y1, x2, y2 = box
        dist[:, i, j] = torch.tensor([j + 0.5 - x1, i + 0.5 - y1, x2 - j - 0.5, y2 - i - 0.5])
        centre[0, i, j] = _logit(p)
    for tie_eps, winner in [(0.01, (0.1, 0.1, 3.9, 3.9)), (0.0, (0.0, 0.0, 4.0, 4.4))]:
        out = casnet_postprocess(sem, dist, centre, thing_classes=[1, 2], nms_threshold=1.0, tie_eps=tie_eps)
        assert len(out["scores"]) == 1  # the other seed got no support: dropped
        assert (out["instance_ids"][0:4, 0:4] == 0).all()
        torch.testing.assert_close(out["boxes"][0], torch.tensor(winner), atol=1e-5, rtol=0)


def test_sec3c_scores_are_seed_probability_times_mean_semantic_probability():
    sem, dist, centre = _maps(6, 6, [(2, (0, 0, 3, 3), (1, 1), 0.8)])
    sem[2, 0, 0] = 0.0  # one pixel less sure of class 2 (still its argmax)
    out = casnet_postprocess(sem, dist, centre, thing_classes=[1, 2])
    probs = sem.softmax(0)[2, 0:3, 0:3]
    torch.testing.assert_close(out["scores"], torch.tensor([0.8]) * probs.mean(), rtol=1e-5, atol=1e-6)
    seed_only = casnet_postprocess(sem, dist, centre, thing_classes=[1, 2], score_mode="seed")
    torch.testing.assert_close(seed_only["scores"], torch.tensor([0.8]), rtol=1e-5, atol=1e-6)


def test_sec3c_random_predictions_give_every_thing_pixel_at_most_one_instance_and_no_seed_without_pixels():
    g = torch.Generator().manual_seed(0)
    sem = torch.randn(4, 20, 24, generator=g)
    dist = torch.rand(4, 20, 24, generator=g) * 6
    centre = torch.randn(2, 20, 24, generator=g) * 2
    out = casnet_postprocess(sem, dist, centre, thing_classes=[1, 3])
    ids = out["instance_ids"]
    n = len(out["scores"])
    assert n > 0 and ids.min() >= -1 and ids.max() < n
    assert torch.bincount(ids[ids >= 0], minlength=n).min() > 0  # every instance has pixels
    things = (out["sem_labels"] == 1) | (out["sem_labels"] == 3)
    assert (ids[~things] == -1).all()
    for k in range(n):  # an instance's pixels all have its class
        label = [1, 3][out["classes"][k]]
        assert (out["sem_labels"][ids == k] == label).all()


def test_pixel_boxes_follow_the_op_convention():
    d = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(4, 1, 1).expand(4, 2, 3)
    b = pixel_boxes(d)
    torch.testing.assert_close(b[1, 2], torch.tensor([2.5 - 1, 1.5 - 2, 2.5 + 3, 1.5 + 4]))


def _grid(rows):
    return torch.tensor([[-1 if c == "." else int(c) for c in r] for r in rows])


def test_instance_ids_are_upsampled_bilinearly_between_the_stride_pixel_centres():
    """Stride 4, a 4 x 5 grid: instance 0 owns cell (1, 1), instance 1 the cells (1, 2), (2, 1), (2, 2), both of class
    7, and the output-resolution semantic map says class 7 on input pixels 4-11 x 4-11. Each of those pixels joins the
    instance whose indicator, bilinear between the cell centres ((j + 0.5) x 4), is higher. By hand: pixel (y 7, x 7)
    is at cell coordinates (1.375, 1.375): instance 0 0.625^2 = 0.39, instance 1 1 - 0.39 = 0.61: instance 1; (4, 7):
    0.39 against 0.625 x 0.375 = 0.23: instance 0; (4, 4): 0.39 against 0: instance 0. Pixels outside class 7 join
    nothing; when the two instances' classes differ, each keeps to its own class's pixels. The boxes are the masks'
    extents."""
    ids = _grid([".....", ".01..", ".11..", "....."])
    classes = torch.full((16, 20), -1)
    classes[4:12, 4:12] = 7
    out = upsample_instance_ids(ids, torch.tensor([7, 7]), classes, (16, 20), 4)
    want = torch.full((16, 20), -1)
    want[4:12, 4:12] = _grid(["00001111", "00001111", "00001111", "00011111"] + ["11111111"] * 4)
    assert torch.equal(out, want)
    boxes = instance_boxes(out, 3, torch.tensor([[0.0, 0, 1, 1]] * 3))
    assert boxes.tolist() == [[4, 4, 8, 8], [4, 4, 12, 12], [0, 0, 1, 1]]  # the empty mask keeps its fallback
    classes[4:8, 8:12] = classes[8:12, 4:12] = 8  # instance 1's cells are class 8
    out = upsample_instance_ids(ids, torch.tensor([7, 8]), classes, (16, 20), 4)
    want[4:12, 4:12] = _grid(["00001111"] * 4 + ["11111111"] * 4)
    assert torch.equal(out, want)


def test_instance_ids_upsampled_to_another_output_size_and_ties_go_to_the_lower_id():
    """A 2 x 2 grid of instances 0 | 1 over 2 | 3 at stride 4 (an 8 x 8 input), all of one class, read at half and
    at twice the input size: each output pixel takes the instance of the nearest cell centre (quadrants). A 1 x 2 grid
    0 | 1 read 7 pixels wide over its 8 input pixels: pixel 3's centre is at input x = 4.0, exactly between the two
    centres (2 and 6): the lower id takes it."""
    ids = _grid(["01", "23"])
    one = torch.tensor([1, 1, 1, 1])
    small = upsample_instance_ids(ids, one, torch.ones(4, 4, dtype=torch.int64), (8, 8), 4)
    assert torch.equal(small, _grid(["0011", "0011", "2233", "2233"]))
    big = upsample_instance_ids(ids, one, torch.ones(16, 16, dtype=torch.int64), (8, 8), 4)
    assert torch.equal(big, torch.tensor([[0] * 8 + [1] * 8] * 8 + [[2] * 8 + [3] * 8] * 8))
    tie = upsample_instance_ids(_grid(["01"]), one[:2], torch.ones(1, 7, dtype=torch.int64), (4, 8), 4)
    assert tie.tolist() == [[0, 0, 0, 0, 1, 1, 1]]


@pytest.mark.parametrize(
    "out_size, image_size", [((40, 52), (40, 52)), ((23, 61), (40, 52)), ((97, 75), (38, 49)), ((30, 33), (40, 44))]
)
def test_instance_ids_upsampled_as_each_instance_indicator_sampled_bilinearly(out_size, image_size):
    """The one-pass up-sampling against its definition on random maps: each instance's indicator map sampled by
    torch's grid_sample (bilinear, border padding; in float64, so that a pixel exactly on a cell centre, as every
    third one of a 4/3 input/output ratio, gets no weight from a neighbouring cell) at every output pixel's position
    on the stride grid; each pixel takes, among the instances of its class with a positive value, the highest (ties,
    up to rounding: the lower id)."""
    g = torch.Generator().manual_seed(0)
    stride, n = 4, 9
    h, w = math.ceil(image_size[0] / stride), math.ceil(image_size[1] / stride)
    ids = torch.randint(-1, n, (h, w), generator=g)
    inst_classes = torch.randint(0, 3, (n,), generator=g)
    pixel_classes = torch.randint(-1, 3, out_size, generator=g)
    out = upsample_instance_ids(ids, inst_classes, pixel_classes, image_size, stride)

    def grid(n_out, n_in, n_grid):  # output pixel centres on the cell grid, in grid_sample's [-1, 1] (align_corners)
        return ((torch.arange(n_out, dtype=torch.float64) + 0.5) * n_in / n_out / stride - 0.5) / (n_grid - 1) * 2 - 1

    gy, gx = grid(out_size[0], image_size[0], h), grid(out_size[1], image_size[1], w)
    xy = torch.stack(torch.broadcast_tensors(gx[None, :], gy[:, None]), dim=-1)[None]
    value = torch.stack(
        [
            torch.nn.functional.grid_sample(
                (ids == k).double()[None, None], xy, mode="bilinear", padding_mode="border", align_corners=True
            )[0, 0]
            for k in range(n)
        ]
    )
    value[inst_classes[:, None, None] != pixel_classes[None]] = 0
    best = value.max(dim=0).values
    near = value >= best - 1e-6  # equal up to the two computations' rounding: the lowest such id
    want = torch.where(near, torch.arange(n)[:, None, None], n).min(dim=0).values
    want[best <= 1e-9] = -1
    assert torch.equal(out, want) and (out >= 0).float().mean() > 0.2


def test_eq3_box_probability_loss_weights_positives_and_negatives_half_each():
    """Eq. 3 with w_n: by hand, logits (2, 0, -1, 1) against targets (1, 0, 0, 0): the BCE terms are
    log(1 + e^-2) = 0.1269 on the one positive and log 2 = 0.6931, log(1 + e^-1) = 0.3133, log(1 + e) = 1.3133 on the
    negatives. Balanced: 0.5 x 0.1269 + 0.5 x mean(0.6931, 0.3133, 1.3133) = 0.4496; plain mean (w_n = 1): 0.6117;
    without positives, the mean over the negatives; nothing: 0, still connected to the logits."""
    from casnet.layers import box_probability_loss

    x = torch.tensor([2.0, 0.0, -1.0, 1.0], requires_grad=True)
    y = torch.tensor([1.0, 0.0, 0.0, 0.0])
    pos, negs = math.log1p(math.exp(-2)), [math.log(2), math.log1p(math.exp(-1)), math.log1p(math.e)]
    assert box_probability_loss(x, y).item() == pytest.approx(0.5 * pos + 0.5 * sum(negs) / 3, abs=1e-5)
    assert box_probability_loss(x, y, balanced=False).item() == pytest.approx((pos + sum(negs)) / 4, abs=1e-5)
    assert box_probability_loss(x[1:], y[1:]).item() == pytest.approx(sum(negs) / 3, abs=1e-5)
    empty = box_probability_loss(x[:0], y[:0])
    assert empty.item() == 0.0 and empty.requires_grad
