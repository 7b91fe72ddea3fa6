"""CASNet's detectron2 model (``casnet.modeling``, instance mode): Eq. 4's weights, the targets of a padded batch,
training with images without instances, non-overlapping instances, detectron2's tools."""

import re

import pytest
import torch

from tests.utils import TINY, config_from, images_only, importorskip_detectron2, seeded_model, synthetic_batch

importorskip_detectron2()
pytest.importorskip("timm", reason="timm is in requirements.txt (make venv installs it)")

from detectron2.utils.events import EventStorage  # noqa: E402

from instseg.registry import load_methods  # noqa: E402

load_methods()

SYN = "configs/CASNet/casnet_hrnet_w18_small_synthetic_instance.yaml"


def test_eq4_total_loss_weights_each_term():
    """L = alpha Lcls + beta Lcommon + gamma Lprob: each loss scales by its own weight, on the same weights and data."""
    batch = synthetic_batch(2, empty=())
    out = {}
    for w in [(1.0, 1.0, 1.0), (2.0, 3.0, 0.5)]:
        model = seeded_model(
            SYN, ["MODEL.CASNET.ALPHA", str(w[0]), "MODEL.CASNET.BETA", str(w[1]), "MODEL.CASNET.GAMMA", str(w[2])]
        )
        with EventStorage(0):
            out[w] = model(batch)
    base, weighted = out[(1.0, 1.0, 1.0)], out[(2.0, 3.0, 0.5)]
    for key, factor in [("loss_sem", 2.0), ("loss_common", 3.0), ("loss_prob", 0.5)]:
        torch.testing.assert_close(weighted[key], factor * base[key])
    assert base["loss_common"] > 0


def test_eq1_to_3_losses_count_only_their_pixels():
    """Eq. 1-3 on given head outputs for a padded batch of two images (96 x 96 and 90 x 80 in 96 x 96): the cross
    entropy over the non-padding pixels, the L1 over the thing pixels' 4 distances only (large errors planted on the
    background and the padding must not count), the balanced BCE over the non-padding pixels x classes."""
    from detectron2.structures import ImageList
    from torch.nn import functional as F

    from casnet.layers import box_probability_loss

    model = seeded_model(SYN)
    batch = synthetic_batch(2, empty=())
    gts = [d["instances"] for d in batch]
    images = ImageList(torch.zeros(2, 3, 96, 96), [(96, 96), (90, 80)])
    g = torch.Generator().manual_seed(0)
    sem, attr, prob = (
        torch.randn(2, 6, 24, 24, generator=g),
        torch.rand(2, 4, 24, 24, generator=g),
        torch.randn(2, 5, 24, 24, generator=g),
    )
    t = [model.targets(gt, (96, 96), size) for gt, size in zip(gts, images.image_sizes)]
    labels, dist, valid, centres, inside = (torch.stack(x) for x in zip(*t))
    attr = torch.where(valid[:, None], attr, torch.full_like(attr, 1000.0))  # off the thing pixels: huge errors
    losses = model.losses(sem, attr, prob, gts, images)
    keep = labels != 255
    ce = -F.log_softmax(sem, dim=1).gather(1, labels.clamp(max=5)[:, None])[:, 0][keep].mean()
    l1 = (attr - dist).abs().permute(0, 2, 3, 1)[valid].mean()
    p = inside[:, None].expand_as(prob)
    torch.testing.assert_close(losses["loss_sem"], ce)
    torch.testing.assert_close(losses["loss_common"], l1)
    assert l1 < 100  # the planted errors are out
    torch.testing.assert_close(losses["loss_prob"], box_probability_loss(prob[p], centres[p]))
    assert not inside[1, 23].any() and inside[0].all()


def test_targets_ignore_the_padding_and_follow_the_instances():
    """In a batch padded to 96 x 96, an image of 90 x 80 has semantic targets only on its own pixels (stride 4: rows
    with centres < 90, columns < 80); thing pixels carry their instance's class, the rest background (K = 5)."""
    model = seeded_model(SYN)
    d = synthetic_batch(1, empty=())[0]
    inst = d["instances"]
    labels, dist, valid, centres, inside = model.targets(inst, (96, 96), (90, 80))
    assert labels.shape == (24, 24)
    assert (labels[23, :] == 255).all() and (labels[:, 20:] == 255).all() and (labels[:22, :20] != 255).all()
    assert set(labels[:22, :20].unique().tolist()) <= set(inst.gt_classes.tolist()) | {5}
    assert (labels[valid] < 5).all() and not valid[23].any()
    assert centres.shape == (5, 24, 24) and centres.sum() > 0


@pytest.mark.parametrize("crowd_format", ["polygon", "rle"])
def test_instance_mode_mapper_keeps_crowd_regions_ignored_by_the_semantic_loss(tmp_path, crowd_format):
    """CASNetInstanceMapper on a hand-built 32 x 48 dict, flipped left-right: instance A (rows 4-11, columns 4-15,
    class 2), instance B (rows 16-23, columns 24-31, class 1) and a crowd (rows 16-27, columns 24-39, iscrowd: dropped
    by detectron2's mapper; a polygon as Cityscapes' groups, or RLE as COCO's crowds) follow the flip. In the targets
    at stride 4 the crowd's pixels are ignored (255) where no instance owns them, B's class where B does, background
    (5) elsewhere. Without the crowd mask (as detectron2's mapper gives) the crowd is background; through the model's
    forward the mask changes the semantic loss. Doubled in size (a resize), the crowd mask doubles."""
    import numpy as np
    import pycocotools.mask as mask_util
    from detectron2.data import transforms as T
    from PIL import Image

    from casnet.data import CASNetInstanceMapper

    path = tmp_path / "im.png"
    Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(path)
    rect = lambda x0, y0, x1, y1: [[x0, y0, x1, y0, x1, y1, x0, y1]]  # noqa: E731
    crowd_seg = rect(24, 16, 40, 28)
    if crowd_format == "rle":
        m = np.zeros((32, 48), np.uint8, order="F")
        m[16:28, 24:40] = 1
        crowd_seg = mask_util.encode(m)
    d = {
        "file_name": str(path),
        "height": 32,
        "width": 48,
        "annotations": [
            {"bbox": [4, 4, 16, 12], "bbox_mode": 0, "category_id": 2, "segmentation": rect(4, 4, 16, 12)},
            {"bbox": [24, 16, 32, 24], "bbox_mode": 0, "category_id": 1, "segmentation": rect(24, 16, 32, 24)},
            {"bbox": [24, 16, 40, 28], "bbox_mode": 0, "category_id": 0, "iscrowd": 1, "segmentation": crowd_seg},
        ],
    }

    def mapped(augs):
        mapper = CASNetInstanceMapper(is_train=True, augmentations=augs, image_format="BGR", use_instance_mask=True)
        return mapper(dict(d))

    out = mapped([T.RandomFlip(prob=1.0)])
    crowd = out["crowd_mask"]
    assert crowd.shape == (32, 48) and int(crowd.sum()) == 12 * 16 and bool(crowd[16:28, 8:24].all())
    inst = out["instances"]
    assert inst.gt_boxes.tensor.tolist() == [[32.0, 4.0, 44.0, 12.0], [16.0, 16.0, 24.0, 24.0]]
    assert inst.gt_classes.tolist() == [2, 1]
    model = seeded_model(SYN)
    labels = model.targets(inst, (32, 48), (32, 48), None, crowd)[0]
    want = torch.full((8, 12), 5)
    want[1:3, 8:11] = 2
    want[4:7, 2:6] = 255
    want[4:6, 4:6] = 1
    assert torch.equal(labels, want)
    without = model.targets(inst, (32, 48), (32, 48))[0]
    assert (without[4:7, 2:4] == 5).all() and (without[6, 2:6] == 5).all()
    losses = []
    with EventStorage(0):
        for extra in ({}, {"crowd_mask": crowd}):
            losses.append(model([{"image": out["image"], "instances": inst, **extra}])["loss_sem"])
    assert not torch.allclose(losses[0], losses[1])
    big = mapped([T.Resize((64, 96)), T.RandomFlip(prob=1.0)])["crowd_mask"]
    assert int(big.sum()) == 4 * 12 * 16 and bool(big[32:56, 16:48].all())


def test_trains_with_images_without_instances_and_predicts_non_overlapping_instances():
    model = seeded_model(SYN)
    model.eval()
    with torch.no_grad():
        out = model([{**d, "height": 120, "width": 144} for d in images_only(synthetic_batch(2, empty=()))])
    assert all(o["instances"].image_size == (120, 144) and o["sem_seg"].shape == (6, 120, 144) for o in out)
    # random maps (thing pixels, boxes and seeds everywhere): the vote gives each pixel at most one instance
    g = torch.Generator().manual_seed(1)
    sem, attr = torch.randn(6, 24, 24, generator=g), torch.rand(4, 24, 24, generator=g) * 4 + 0.5
    inst = model.inference_single(sem, attr, torch.randn(5, 24, 24, generator=g), (96, 96), (120, 144))["instances"]
    assert len(inst) > 0
    assert inst.pred_masks.sum(dim=0).max() <= 1  # no pixel in two instances
    assert inst.pred_masks.flatten(1).any(dim=1).all()  # no instance without a pixel
    model.train()
    with EventStorage(0):
        for empty in ((1,), (0, 1)):
            losses = model(synthetic_batch(2, empty=empty))
            assert all(torch.isfinite(v) for v in losses.values())
            sum(losses.values()).backward()


def test_sec3c_the_instances_cover_the_semantic_thing_region_at_full_resolution():
    """Sec. III-C: every pixel the semantic map gives to a thing class belongs to an instance ("no holes"), at the
    output resolution too: a disc of class 2 whose smooth logits cross at a radius between the stride-4 centres, one
    seed, every attribute pointing at the disc's box. The instance is exactly the full-resolution argmax's region of
    class 2 (the stride grid's blocks copied by nearest neighbour would leave part of it to no one), at 1x and 1.5x."""
    model = seeded_model(SYN).eval()
    n = 24
    yy, xx = torch.meshgrid(torch.arange(n) + 0.5, torch.arange(n) + 0.5, indexing="ij")
    r = ((yy - 12) ** 2 + (xx - 12) ** 2).sqrt()
    sem = torch.full((6, n, n), -5.0)
    sem[2] = 2.0 * (5.3 - r)  # class 2 inside radius 5.3 cells, background (5) outside
    sem[5] = 0.0
    dist = torch.stack([xx - 6.7, yy - 6.7, 17.3 - xx, 17.3 - yy]).clamp(min=0)
    prob = torch.full((5, n, n), -10.0)
    prob[2, 11:13, 11:13] = 10.0
    for out_size in [(96, 96), (144, 144)]:
        out = model.inference_single(sem, dist, prob, (96, 96), out_size)
        inst = out["instances"]
        assert len(inst) == 1 and inst.pred_classes.tolist() == [2]
        region = out["sem_seg"].argmax(dim=0) == 2
        assert torch.equal(inst.pred_masks[0], region)


def test_sec3c_perfect_predictions_give_back_the_ground_truth_instances():
    """Round trip: the targets of a synthetic image, as (saturated) predictions, through the inference: every instance
    that owns a pixel at the output stride comes back once, with its class, a mask close to its ground-truth mask (IoU
    >= 0.6 each, and closer on average than the stride grid's blocks copied by nearest neighbour), and its box, the
    mask's extent, within a stride of the ground-truth box; at the input size and at 1.5x it."""
    from torch.nn import functional as F

    from casnet.layers import pixel_owners

    model = seeded_model(SYN, ["MODEL.CASNET.SEED_NMS_THRESHOLD", "0.95"])
    inst = synthetic_batch(1, empty=(), seed=5)[0]["instances"]
    labels, dist, valid, centres, inside = model.targets(inst, (96, 96), (96, 96))
    sem = F.one_hot(labels, 6).permute(2, 0, 1).float() * 20
    prob = (centres * 2 - 1) * 20
    owners = pixel_owners(inst.gt_masks.tensor, inst.gt_boxes.tensor, (24, 24), 4)
    present = owners[owners >= 0].unique().tolist()
    assert len(present) >= 3

    def iou(a, b):
        return float((a & b).sum()) / max(float((a | b).sum()), 1.0)

    for out_size in [(96, 96), (144, 144)]:
        pred = model.inference_single(sem, dist, prob, (96, 96), out_size)["instances"]
        assert len(pred) == len(present)
        scale = out_size[0] / 96
        gt_masks = F.interpolate(inst.gt_masks.tensor[:, None].float(), size=out_size, mode="nearest")[:, 0].bool()
        ours, blocks = [], []
        for g in present:
            k = max(range(len(pred)), key=lambda k: iou(pred.pred_masks[k], gt_masks[g]))
            ours.append(iou(pred.pred_masks[k], gt_masks[g]))
            block = F.interpolate((owners == g)[None, None].float(), size=out_size, mode="nearest-exact")[0, 0].bool()
            blocks.append(iou(block, gt_masks[g]))
            assert ours[-1] >= 0.6, (g, ours[-1])
            assert pred.pred_classes[k] == inst.gt_classes[g]
            box = pred.pred_boxes.tensor[k]
            assert (box - inst.gt_boxes.tensor[g] * scale).abs().max() <= 4 * scale, (box, inst.gt_boxes.tensor[g])
            ys, xs = pred.pred_masks[k].nonzero(as_tuple=True)
            assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert sum(ours) > sum(blocks)


def test_eq3_centre_positives_are_the_instances_own_pixels():
    """A seed's box is read from the attributes at the seed: the centre positives of an instance are its own pixels
    (a ring's centre, its hole, is not), the nearest own pixel to the centre when none is in the region."""
    from casnet.layers import centre_targets

    owners = torch.full((10, 10), -1)
    owners[2:8, 2:8] = 0
    owners[4:6, 4:6] = -1  # a ring: the centre is a hole
    boxes = torch.tensor([[8.0, 8.0, 32.0, 32.0]])  # stride 4: pixels 2..7
    t = centre_targets(boxes, torch.tensor([0]), 1, (10, 10), 4, radius=0.5, owners=owners)
    # radius 0.5 strides around (20, 20) covers only the hole's pixels (4, 4)..(5, 5): the nearest own pixel instead
    assert t[0].sum() == 1 and owners[t[0].bool()].item() == 0
    t = centre_targets(boxes, torch.tensor([0]), 1, (10, 10), 4, radius=1.5, owners=owners)
    assert t[0].sum() > 0 and (owners[t[0].bool()] == 0).all()


def test_train_net_trains_evaluates_and_default_predictor(tmp_path, datasets_dir):
    import numpy as np
    from detectron2.engine import DefaultPredictor

    import train_net

    out = tmp_path / "out"
    res = train_net.run(["--config-file", SYN, *TINY, "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", str(out)])
    assert {"bbox", "segm"} <= set(res)
    cfg = config_from(SYN, [*TINY, "MODEL.WEIGHTS", str(out / "model_final.pth"), "MODEL.CASNET.SEED_THRESHOLD", "0.0"])
    image = synthetic_batch(1, empty=())[0]["image"].permute(1, 2, 0).numpy()
    inst = DefaultPredictor(cfg)(np.ascontiguousarray(image))["instances"]
    assert inst.pred_masks.shape[1:] == (96, 96)


@pytest.mark.parametrize(
    "config, opts",
    [
        ("configs/CASNet/casnet_hrnet_w18_small_synthetic.yaml", []),
        (SYN, []),
        ("configs/CASNet/casnet_R_18_FPN_synthetic.yaml", []),
        ("configs/CASNet/casnet_hrnet_w48_cityscapes.yaml", ["MODEL.HRNET.PRETRAINED", "False"]),
    ],
)
def test_every_trainable_parameter_gets_a_gradient(config, opts):
    """DDP's condition for --num-gpus N: one training step reaches every trainable parameter. timm's HRNet builds its
    last stage's fusions for the 1/16 and 1/32 outputs and detectron2's FPN an output conv for P5, none of which
    CASNet reads (30 and 3 tensors): ``freeze_unreached`` freezes exactly those at build time."""
    if "cityscapes" in config:
        opts = opts + ["DATASETS.TRAIN", "('synthetic_panoptic_train',)", "MODEL.CASNET.NUM_THING_CLASSES", "5"]
        opts += ["INPUT.CROP.ENABLED", "False"]
    model = seeded_model(config, opts)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    want = {"hrnet_w18_small": 30, "R_18_FPN": 3, "hrnet_w48": 30}
    assert len(frozen) == next(v for k, v in want.items() if k in config)
    # the last module of stage 4 (0 in w18_small, 2 in w48): its fusions into the outputs 2 and 3 (1/16, 1/32)
    assert all(re.search(r"\.stage4\.[02]\.fuse_layers\.[23]\.", n) or ".fpn_output5." in n for n in frozen)
    batch = synthetic_batch(2, empty=(1,))
    for x in batch:  # panoptic mode's semantic targets (their values do not matter here)
        x["sem_seg"] = torch.zeros(x["image"].shape[-2:], dtype=torch.int64)
    with EventStorage(0):
        sum(model(batch).values()).backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []


def test_trains_with_two_processes(tmp_path, datasets_dir):
    """train_net.py --num-gpus 2 (DDP over gloo on the CPU) on the shipped synthetic panoptic config, 2 iterations."""
    import subprocess
    import sys

    cfg = "configs/CASNet/casnet_hrnet_w18_small_synthetic.yaml"
    opts = [*TINY, "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2", "TEST.EVAL_PERIOD", "0"]
    cmd = [sys.executable, "train_net.py", "--config-file", cfg, "--num-gpus", "2", "--dist-url", "auto"]
    cmd += [*opts, "OUTPUT_DIR", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "model_final.pth").is_file()


def test_bad_settings_stop_at_build_time():
    with pytest.raises(ValueError, match="are not backbone outputs"):
        seeded_model(SYN, ["MODEL.CASNET.IN_FEATURES", "['s16']"])
    with pytest.raises(ValueError, match="SCORE_MODE must be one of"):
        seeded_model(SYN, ["MODEL.CASNET.SCORE_MODE", "mean"])
    with pytest.raises(ValueError, match="SEED_TOPK must be >= 1"):
        seeded_model(SYN, ["MODEL.CASNET.SEED_TOPK", "0"])
