"""Mask Point R-CNN's ROI heads in detectron2: what the default keys build (Eq. 1-3), contour targets, every
Table II-VII switch trains a step (the keypoint-only row too), keys that contradict MODEL.MASK_POINT are refused,
inference outputs, MASK_FROM_CONTOUR (Sec. IV-E), and a briefly trained model through DefaultPredictor."""

import json
import os

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from tests.utils import TINY, importorskip_detectron2, synthetic_batch, with_contour_targets

importorskip_detectron2()

from detectron2.modeling import build_model  # noqa: E402
from detectron2.structures import BitMasks, PolygonMasks  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from instseg.config import get_cfg  # noqa: E402
from maskpoint import sample_contour_points  # noqa: E402
from maskpoint.config import set_implied_keys  # noqa: E402
from maskpoint.modeling import MaskPointROIHeads, contour_keypoints, contour_polygon_masks  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "configs", "MaskPoint", "mask_point_rcnn_R_18_FPN_synthetic.yaml")


def make_cfg(*opts, imply=True):
    """The synthetic Mask Point config at the tiny size with k = 16, then ``opts``; with ``imply``, the detectron2
    keypoint keys are set from MODEL.MASK_POINT (maskpoint.config.set_implied_keys), as a user building a config in
    code would."""
    cfg = get_cfg()
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list(
        TINY + ["MODEL.MASK_POINT.NUM_POINTS", "16", "MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS", "17", *opts]
    )
    if imply:
        set_implied_keys(cfg)
    return cfg


def train_step(cfg, batch):
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    with EventStorage(0):
        losses = model(batch)
    sum(losses.values()).backward()
    return model, losses


# the paper's Mask Point R-CNN (Sec. III-D, IV-B, Table VII): k = 100 contour points plus the centre, 56x56 keypoint
# heatmaps, 28x28 mask logits, alpha = 0.5
PAPER_K, PAPER_HEATMAP, PAPER_MASK, PAPER_ALPHA = 100, 56, 28, 0.5


def test_default_heads_are_the_papers():
    """What the default keys build and run: k+1 heatmaps of 56x56 fused into 28x28 mask logits by Eq. 1 (one 3x3
    stride-2 kernel per keypoint map, summed) and Eq. 2 (broadcast product), and pred_keypoints of k+1 points."""
    cfg = get_cfg()
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list(TINY)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    fusion = model.roi_heads.fusion
    with torch.no_grad():  # trained-looking weights instead of the identity start
        for p in fusion.parameters():
            p.copy_(torch.randn_like(p))
    seen = {}
    fusion.register_forward_hook(lambda m, args, out: seen.update(mask=args[0], kp=args[1], out=out))
    with torch.no_grad():
        inst = model([{k: v for k, v in synthetic_batch(1, empty=())[0].items() if k != "instances"}])[0]["instances"]
    mask, kp, out = seen["mask"], seen["kp"], seen["out"]
    assert len(inst) > 0 and kp.shape[0] == len(inst)
    assert kp.shape[1:] == (PAPER_K + 1, PAPER_HEATMAP, PAPER_HEATMAP)
    assert mask.shape[-2:] == (PAPER_MASK, PAPER_MASK)
    w, b, kp = fusion.reduce_conv.weight.double(), fusion.reduce_conv.bias.double(), kp.double()
    o_k = sum(F.conv2d(kp[:, i : i + 1], w[i : i + 1], b[i : i + 1], stride=2, padding=1) for i in range(PAPER_K + 1))
    expected = o_k * mask.double()  # Eq. 1, then Eq. 2 (computed in float64: 101 float32 maps add up differently)
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())
    assert inst.pred_keypoints.shape[1:] == (PAPER_K + 1, 3)


def test_eq3_alpha_scales_the_keypoint_loss():
    """Eq. 3: the default model's keypoint loss is alpha times the unweighted one (same weights, same batch)."""
    batch = synthetic_batch(2, empty=())
    _, weighted = train_step(make_cfg(), with_contour_targets(batch, make_cfg()))
    _, plain = train_step(make_cfg("MODEL.MASK_POINT.KEYPOINT_LOSS_WEIGHT", "1.0"), batch)
    assert plain["loss_keypoint"].item() > 0
    assert weighted["loss_keypoint"].item() == pytest.approx(PAPER_ALPHA * plain["loss_keypoint"].item(), rel=1e-5)
    assert weighted["loss_mask"].item() == pytest.approx(plain["loss_mask"].item(), rel=1e-5)


def test_sec3c_targets_from_bitmasks_and_polygons_in_image_coordinates():
    m = np.zeros((60, 80), bool)
    m[20:40, 30:70] = True
    bit = BitMasks(torch.from_numpy(np.stack([m, np.zeros_like(m)])))
    kp = contour_keypoints(bit, (60, 80), 12).tensor
    assert kp.shape == (2, 13, 3)
    np.testing.assert_allclose(kp[0, :, :2].numpy(), sample_contour_points(m, 12))  # crop offsets undone
    assert torch.all(kp[0, :, 2] == 2) and torch.all(kp[1, :, 2] == 0)  # an empty mask: invisible points
    poly = PolygonMasks([[np.array([30, 20, 70, 20, 70, 40, 30, 40], dtype=np.float64)]])
    kp_poly = contour_keypoints(poly, (60, 80), 12).tensor
    # the polygon rasterises to (about) the same rectangle: points within a pixel
    assert torch.allclose(kp_poly[0, :, :2], kp[0, :, :2], atol=1.01)


def test_heads_train_a_step_with_an_image_without_instances():
    cfg = make_cfg()
    batch = with_contour_targets(synthetic_batch(2, empty=(1,)), cfg)
    assert len(batch[1]["instances"]) == 0 and len(batch[0]["instances"]) > 0
    model, losses = train_step(cfg, batch)
    assert isinstance(model.roi_heads, MaskPointROIHeads)
    assert {"loss_mask", "loss_keypoint", "loss_cls", "loss_box_reg"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    head = model.roi_heads.keypoint_head
    assert head.conv_fcn1.weight.grad.abs().sum() > 0
    # the mask loss reaches the fusion conv (Eq. 1) through Eq. 2
    assert model.roi_heads.fusion.reduce_conv.weight.grad.abs().sum() > 0


def test_a_batch_with_no_instance_at_all_trains():
    cfg = make_cfg()
    _, losses = train_step(cfg, with_contour_targets(synthetic_batch(2, empty=(0, 1)), cfg))
    assert losses["loss_mask"].item() == 0 and losses["loss_keypoint"].item() == 0


def test_sec3c_heads_learn_the_targets_they_are_given():
    """The heads only crop and scale the gt_keypoints of the batch (sampled in the data loader): nothing is sampled
    in the step, and other points give another keypoint loss."""
    import maskpoint.modeling.targets as targets

    cfg = make_cfg()
    batch = with_contour_targets(synthetic_batch(2, empty=()), cfg)
    _, ref = train_step(cfg, batch)
    sampler = targets.sample_contour_points
    targets.sample_contour_points = None  # any sampling inside the step would fail
    try:
        _, again = train_step(cfg, batch)
        for d in batch:
            d["instances"].gt_keypoints.tensor[..., :2] += 3.0  # 3 px off: other heatmap targets
        _, shifted = train_step(cfg, batch)
    finally:
        targets.sample_contour_points = sampler
    assert again["loss_keypoint"].item() == pytest.approx(ref["loss_keypoint"].item(), rel=1e-6)
    assert abs(shifted["loss_keypoint"].item() - ref["loss_keypoint"].item()) > 1e-3


def test_training_without_contour_targets_is_a_clear_error():
    cfg = make_cfg()
    with pytest.raises(ValueError, match="INPUT.DATASET_MAPPER_NAME ContourPointDatasetMapper"):
        train_step(cfg, synthetic_batch(2, empty=()))  # no gt_keypoints: not from the Mask Point mapper
    batch = with_contour_targets(synthetic_batch(2, empty=()), make_cfg("MODEL.MASK_POINT.NUM_POINTS", "8"))
    with pytest.raises(ValueError, match="predicts 17 keypoints"):
        train_step(cfg, batch)


SWITCHES = (
    [("MODEL.MASK_POINT.FUSION_STRUCTURE", s) for s in "abcd"]  # Table II
    + [("MODEL.MASK_POINT.REDUCTION", r) for r in ("max", "avg")]  # Table III
    + [("MODEL.MASK_POINT.FUSION", f) for f in ("add", "max", "none")]  # Table IV
    + [("MODEL.MASK_POINT.NUM_POINTS", "50")]  # Table V
    + [("MODEL.MASK_POINT.SAMPLING", "corner")]  # Table VI
    + [
        ("MODEL.MASK_POINT.WITH_CENTER", "False"),
        ("MODEL.MASK_POINT.KEYPOINT_LOSS_WEIGHT", "1.0"),
        ("MODEL.MASK_POINT.CENTER", "box"),
    ]  # Table VII
    + [("MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK", "False")]
)


@pytest.mark.parametrize("key,value", SWITCHES, ids=[f"{k.split('.')[-1]}={v}" for k, v in SWITCHES])
def test_every_ablation_switch_builds_and_trains_a_step(key, value):
    cfg = make_cfg(key, value)
    model, losses = train_step(cfg, with_contour_targets(synthetic_batch(2, empty=()), cfg))
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_keypoint"].item() > 0
    fusion, mp = model.roi_heads.fusion, cfg.MODEL.MASK_POINT  # the switch reached the module it shapes
    assert (fusion.structure, fusion.reduction, fusion.fusion) == (mp.FUSION_STRUCTURE, mp.REDUCTION, mp.FUSION)
    if value == "none":
        assert model.roi_heads.fusion.fusion == "none"
    if key.endswith("FUSION_STRUCTURE"):
        # c fuses at 56x56, d predicts 28x28 heatmaps
        assert model.roi_heads.keypoint_head.up_scale == (1.0 if value == "d" else 2.0)
    model.eval()
    with torch.no_grad():
        out = model([{k: v for k, v in d.items() if k != "instances"} for d in synthetic_batch(1, empty=())])
    k = cfg.MODEL.MASK_POINT.NUM_POINTS + int(cfg.MODEL.MASK_POINT.WITH_CENTER)
    inst = out[0]["instances"]
    assert inst.pred_keypoints.shape[1:] == (k, 3) and inst.pred_masks.shape[1:] == (96, 96)


def test_table7_keypoint_only_row():
    """Table VII's "keypoint-only" row: box and contour-point heads, no mask head; its masks are the filled
    polygons of the predicted contour, so COCO segm evaluation still applies."""
    from detectron2.structures import ROIMasks

    cfg = make_cfg("MODEL.MASK_POINT.MASK_HEAD", "False", "MODEL.MASK_POINT.MASK_FROM_CONTOUR", "True")
    model, losses = train_step(cfg, with_contour_targets(synthetic_batch(2, empty=()), cfg))
    full, _ = train_step(make_cfg(), with_contour_targets(synthetic_batch(2, empty=()), make_cfg()))
    assert not model.roi_heads.mask_on and model.roi_heads.fusion is None
    mask_params = sum(
        p.numel() for n, p in full.named_parameters() if n.startswith(("roi_heads.mask_head", "roi_heads.fusion"))
    )
    assert sum(p.numel() for p in full.parameters()) - sum(p.numel() for p in model.parameters()) == mask_params > 0
    assert "loss_mask" not in losses and losses["loss_keypoint"].item() > 0
    assert model.roi_heads.keypoint_head.conv_fcn1.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        inst = model([{k: v for k, v in d.items() if k != "instances"} for d in synthetic_batch(1, empty=())])[0][
            "instances"
        ]
    assert len(inst) > 0 and inst.pred_keypoints.shape[1:] == (17, 3)
    ref = contour_polygon_masks(inst.pred_keypoints, inst.pred_boxes.tensor, 16, 56)
    assert torch.equal(inst.pred_masks, ROIMasks(ref[:, 0]).to_bitmasks(inst.pred_boxes, 96, 96, 0.5).tensor)


IMPLIED = [  # (key, a value contradicting MODEL.MASK_POINT, the value the message must ask for)
    ("MODEL.KEYPOINT_ON", "False", "True"),
    ("MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS", "101", "17"),
    ("MODEL.ROI_KEYPOINT_HEAD.LOSS_WEIGHT", "1.0", "0.5"),
    ("MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE", "1", "0"),
    ("INPUT.DATASET_MAPPER_NAME", "DatasetMapper", "ContourPointDatasetMapper"),
]


@pytest.mark.parametrize("key,bad,fix", IMPLIED, ids=[k.split(".")[-1] for k, _, _ in IMPLIED])
def test_keys_contradicting_mask_point_are_refused_at_build_time(key, bad, fix):
    """No silent override: a user's detectron2 keypoint key that contradicts MODEL.MASK_POINT stops the build with
    one message that names the key and the value to set."""
    with pytest.raises(ValueError, match=f"{key} {fix}"):
        build_model(make_cfg(key, bad, imply=False))


def test_a_table5_switch_alone_names_the_key_to_change():
    with pytest.raises(ValueError, match="MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS 51"):
        build_model(make_cfg("MODEL.MASK_POINT.NUM_POINTS", "50", imply=False))
    heads = build_model(
        make_cfg("MODEL.MASK_POINT.NUM_POINTS", "50", "MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS", "51", imply=False)
    ).roi_heads
    assert heads.keypoint_head.num_keypoints == 51 == heads.fusion.num_keypoints


def test_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match="FUSION_STRUCTURE"):
        build_model(make_cfg("MODEL.MASK_POINT.FUSION_STRUCTURE", "e"))
    with pytest.raises(ValueError, match="MASK_HEAD False"):  # MASK_ON False: points the user to the Table VII row
        build_model(make_cfg("MODEL.MASK_ON", "False"))
    with pytest.raises(ValueError, match="MODEL.MASK_POINT.MASK_FROM_CONTOUR True"):
        build_model(make_cfg("MODEL.MASK_POINT.MASK_HEAD", "False"))
    with pytest.raises(ValueError, match="NUM_POINTS"):
        build_model(make_cfg("MODEL.MASK_POINT.NUM_POINTS", "0"))
    # switches that would be ignored stop the build (Table III's reductions apply to structures a and b only; the
    # keypoint-only row has no fusion); values the data loader would only check later are checked here
    bad = [
        (("MODEL.MASK_POINT.FUSION_STRUCTURE", "c", "MODEL.MASK_POINT.REDUCTION", "max"), "REDUCTION conv"),
        (("MODEL.MASK_POINT.FUSION_STRUCTURE", "d", "MODEL.MASK_POINT.REDUCTION", "avg"), "REDUCTION conv"),
        (
            (
                "MODEL.MASK_POINT.MASK_HEAD",
                "False",
                "MODEL.MASK_POINT.MASK_FROM_CONTOUR",
                "True",
                "MODEL.MASK_POINT.FUSION_STRUCTURE",
                "d",
            ),
            "FUSION_STRUCTURE b",
        ),
        (
            (
                "MODEL.MASK_POINT.MASK_HEAD",
                "False",
                "MODEL.MASK_POINT.MASK_FROM_CONTOUR",
                "True",
                "MODEL.MASK_POINT.FUSION",
                "add",
            ),
            "FUSION mul",
        ),
        (("MODEL.MASK_POINT.SAMPLING", "corners"), "SAMPLING uniform"),
        (("MODEL.MASK_POINT.CENTER", "centroid"), "CENTER mass"),
    ]
    for opts, fix in bad:
        with pytest.raises(ValueError, match=fix):
            build_model(make_cfg(*opts))


def test_sec4e_contour_polygon_masks_fill_the_predicted_polygon():
    # a square's corners (in image coordinates) inside a box twice as large: the inner half is filled
    box = torch.tensor([[10.0, 20.0, 50.0, 60.0]])
    sq = torch.tensor([[[20.0, 30.0, 1], [40.0, 30.0, 1], [40.0, 50.0, 1], [20.0, 50.0, 1], [30.0, 40.0, 1]]])
    m = contour_polygon_masks(sq, box, num_contour=4, side=40)  # the centre (last) is not part of it
    assert m.shape == (1, 1, 40, 40)
    expected = np.zeros((40, 40), np.float32)
    expected[10:30, 10:30] = 1
    # pixels whose centres are strictly inside are filled; the boundary row/col may go either way
    diff = np.abs(m[0, 0].numpy() - expected)
    assert diff[11:29, 11:29].sum() == 0 and diff.sum() <= 4 * 40
    assert m[0, 0, :9].sum() == 0 and m[0, 0, 31:].sum() == 0


def _window_medians(metrics_file, key):
    """detectron2's metrics.json: each line's losses are medians over the last 20 iterations."""
    rows = [json.loads(line) for line in open(metrics_file)]
    return [r[key] for r in rows if key in r]


@pytest.fixture
def one_thread():
    # one torch thread: on a 2-core machine shared with other jobs, 2 threads per process can run 20x slower
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_default_predictor_after_brief_training(tmp_path, datasets_dir, one_thread):
    """train_net.py learns two training images for 60 iterations (AdamW, LR 1e-3; about 20 s on 1 core), through
    the Mask Point mapper and heads, then evaluates and predicts with DefaultPredictor.

    Calibration (seeds 0-3): the median losses of iterations 40-59 over those of iterations 0-19 were total 0.51-0.57,
    keypoint 0.57-0.64, mask 0.42-0.67; the floors below leave a margin. A branch that does not learn (no gradient
    reaching it, a learning rate that never arrives) stays near 1."""
    from detectron2.engine import DefaultPredictor

    import train_net

    out = tmp_path / "out"
    opts = [
        *TINY,
        "MODEL.MASK_POINT.NUM_POINTS",
        "16",
        "MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS",
        "17",
        "DATASETS.SYNTHETIC.NUM_TRAIN",
        "2",
        "SOLVER.MAX_ITER",
        "60",
        "SOLVER.BASE_LR",
        "0.001",
        "OUTPUT_DIR",
        str(out),
    ]
    res = train_net.run(["--config-file", CONFIG, *opts])
    assert set(res) == {"bbox", "segm"}  # COCO has no ground truth for contour points: no "keypoints" task
    for key, factor in (("total_loss", 0.7), ("loss_keypoint", 0.75), ("loss_mask", 0.8)):
        first, *_, last = _window_medians(out / "metrics.json", key)
        assert last < factor * first, (key, first, last)

    # the dumped config is the model that was trained: rebuilt from it, the checkpoint loads with no missing key
    dumped = get_cfg()
    dumped.merge_from_file(str(out / "config.yaml"))
    assert dumped.MODEL.KEYPOINT_ON and dumped.MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS == 17
    assert dumped.MODEL.ROI_KEYPOINT_HEAD.LOSS_WEIGHT == dumped.MODEL.MASK_POINT.KEYPOINT_LOSS_WEIGHT
    model = build_model(dumped)
    assert model.roi_heads.keypoint_head.loss_weight == dumped.MODEL.MASK_POINT.KEYPOINT_LOSS_WEIGHT
    state = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    assert set(state) == set(model.state_dict())

    cfg = make_cfg("MODEL.WEIGHTS", str(out / "model_final.pth"))
    image = synthetic_batch(1, empty=())[0]["image"].permute(1, 2, 0).numpy()
    inst = DefaultPredictor(cfg)(image)["instances"]
    assert len(inst) > 0
    assert inst.pred_keypoints.shape[1:] == (17, 3) and inst.pred_masks.shape[1:] == (96, 96)
    assert inst.pred_masks.dtype == torch.bool
    cfg.MODEL.MASK_POINT.MASK_FROM_CONTOUR = True
    poly = DefaultPredictor(cfg)(image)["instances"]
    # same detections; masks are now the filled polygons of the same predicted contour points, pasted into
    # the image as detectron2 pastes mask predictions (the test image is not resized: coordinates agree)
    from detectron2.structures import ROIMasks

    torch.testing.assert_close(poly.pred_keypoints, inst.pred_keypoints)
    ref = contour_polygon_masks(poly.pred_keypoints, poly.pred_boxes.tensor, 16, 56)
    pasted = ROIMasks(ref[:, 0]).to_bitmasks(poly.pred_boxes, 96, 96, 0.5).tensor
    assert torch.equal(poly.pred_masks, pasted)
