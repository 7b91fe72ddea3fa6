"""RDSNet's detectron2 model (``rdsnet.modeling``) against the paper: Eq. 1 through the op with the head's row order,
the training crops, at most 100 masks per image, representations kept through NMS, the MBRM stage, Tables 3-4 rows,
masks off = RetinaNet."""

import pytest
import torch

from tests.utils import (
    config_from,
    images_only,
    importorskip_detectron2,
    predict_alike,
    seeded_model,
    synthetic_batch,
)

importorskip_detectron2()

from detectron2.structures import Boxes  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from instseg.registry import load_methods  # noqa: E402
from rdsnet.config import TABLE3_ROWS, TABLE4_ROWS, table_opts  # noqa: E402
from rdsnet.layers import expand_boxes  # noqa: E402
from rdsnet.modeling import RDSNet, RDSNetHead  # noqa: E402

load_methods()

SYN = "configs/RDSNet/rdsnet_R_18_FPN_synthetic.yaml"
MBRM_STAGE = "configs/RDSNet/rdsnet_mbrm_R_18_FPN_synthetic.yaml"
RETINANET = "configs/Baselines/retinanet_R_18_FPN_synthetic.yaml"


def _cfg(path=SYN, opts=()):
    return config_from(path, opts)


def _model(path=SYN, opts=(), seed=0):
    return seeded_model(path, opts, seed)


_images = images_only


def test_eq1_mask_logits_are_the_correlation_of_the_heads_rows_cropped_by_the_box():
    """Eq. 1 through the op: the head's 2 x d representation is (background row, foreground row); z = <fg - bg, Psi>
    at each pixel of the stride-4 map whose centre is inside box / 4, -inf elsewhere (hand-built, d = 3)."""
    model = _model(SYN, ["MODEL.RDSNET.REP_DIM", "3"])
    g = torch.Generator().manual_seed(0)
    pixel = torch.randn(2, 3, 5, 6, generator=g)
    reps = torch.randn(2, 6, generator=g)  # object 0 in image 1, object 1 in image 0
    boxes = torch.tensor([[4.0, 0.0, 16.0, 12.0], [0.0, 8.0, 24.0, 20.0]])  # input pixels (stride 4)
    z = model.mask_logits(pixel, reps, torch.tensor([1, 0]), boxes)
    for k, (n, (x1, y1, x2, y2)) in enumerate(zip([1, 0], boxes.tolist())):
        bg, fg = reps[k, :3], reps[k, 3:]
        for i in range(5):
            for j in range(6):
                inside = x1 / 4 <= j + 0.5 <= x2 / 4 and y1 / 4 <= i + 0.5 <= y2 / 4
                want = float(((fg - bg) * pixel[n, :, i, j]).sum()) if inside else float("-inf")
                assert z[k, i, j].item() == pytest.approx(want, rel=1e-5, abs=1e-5), (k, i, j)


def test_the_mask_loss_starts_at_ln2_as_the_authors_init():
    """The authors' code starts the pixel representations Psi(U) near 0 (normal, std 0.01): at initialisation every
    z of Eq. 1 inside the crops is ~0 and the mask loss is ln 2 (softmax over two equal logits). With Psi(U) at unit
    scale (a plain Kaiming init) z starts random, the loss well above ln 2, and training first has to undo it."""
    import math

    model = _model(SYN)
    with EventStorage(0):
        losses = model(synthetic_batch(2, empty=()))
    assert losses["loss_mask"].item() == pytest.approx(math.log(2), abs=0.02)


def test_table3_lc_assembly_is_a_linear_combination_of_prototypes_with_tanh_coefficients():
    """Table 3 row 1 (YOLACT's LC): d foreground-only coefficients through tanh, prototypes through ReLU,
    z = <tanh(c), ReLU(Psi)>."""
    model = _model(SYN, ["MODEL.RDSNET.REP_DIM", "3", *table_opts(3, 1)])
    assert model.head.rep_size == 3
    pixel = torch.randn(1, 3, 4, 4)
    reps = torch.randn(1, 3)
    z = model.mask_logits(pixel, reps, torch.tensor([0]), torch.tensor([[0.0, 0.0, 16.0, 16.0]]))
    torch.testing.assert_close(z[0], torch.einsum("d,dhw->hw", torch.tanh(reps[0]), torch.relu(pixel[0])))


def test_sec34_training_crops_and_targets_are_each_anchors_own_gt_and_at_most_max_masks_per_image(monkeypatch):
    """Sec. 3.4 / 4.1: the positive anchors' masks (at most MAX_MASKS_PER_IMAGE, here 3, per image) are cropped with
    their matched ground-truth box x1.5 (clipped to the image), against that same ground truth's mask pooled to the
    pixel stream's stride: each crop and its target belong to the ground truth of highest IoU with the anchor."""
    from detectron2.structures import pairwise_iou
    from torch.nn import functional as F

    import rdsnet.modeling.meta_arch as meta_arch

    model = _model(SYN, ["MODEL.RDSNET.MAX_MASKS_PER_IMAGE", "3"])
    seen = {}
    original_logits, original_loss, original_sample = (
        model.mask_logits,
        meta_arch.rdsnet_mask_loss,
        model.sample_positives,
    )

    def spy_logits(pixel, reps, batch_idx, crop_boxes):
        seen.update(batch_idx=batch_idx, boxes=crop_boxes)
        return original_logits(pixel, reps, batch_idx, crop_boxes)

    def spy_loss(z, targets, valid, *args):
        seen["targets"] = targets
        return original_loss(z, targets, valid, *args)

    def spy_sample(anchors, gt_labels, gt_instances):
        out = original_sample(anchors, gt_labels, gt_instances)
        seen["anchors"] = [Boxes.cat(anchors).tensor[a] for a, _ in out]
        return out

    model.mask_logits, model.sample_positives = spy_logits, spy_sample
    monkeypatch.setattr(meta_arch, "rdsnet_mask_loss", spy_loss)
    batch = synthetic_batch(2, empty=())
    with EventStorage(0):
        model(batch)
    counts = torch.bincount(seen["batch_idx"], minlength=2).tolist()
    assert counts == [3, 3]  # the synthetic images have far more than 3 positive anchors
    for n in range(2):
        gt = batch[n]["instances"]
        own = pairwise_iou(Boxes(seen["anchors"][n]), gt.gt_boxes).argmax(dim=1)  # each anchor's ground truth
        sel = seen["batch_idx"] == n
        want_boxes = expand_boxes(gt.gt_boxes.tensor[own], 1.5, (96, 96))
        torch.testing.assert_close(seen["boxes"][sel], want_boxes)
        pooled = F.avg_pool2d(gt.gt_masks.tensor[own].float()[:, None], 4, 4)[:, 0] >= 0.5
        assert torch.equal(seen["targets"][sel], pooled)


def test_mask_targets_from_polygons_equal_those_from_bitmasks_and_follow_the_indices():
    """COCO's polygon masks (rasterised once per ground truth) give the same targets as the bitmasks, in the order of
    the anchors' ground-truth indices, zero-padded to the batch's size and pooled to the stride (>= 0.5)."""
    from detectron2.structures import BitMasks, Instances, PolygonMasks

    from rdsnet.modeling.meta_arch import _mask_targets

    polys = [[[2.0, 2.0, 14.0, 2.0, 14.0, 10.0, 2.0, 10.0]], [[8.0, 4.0, 20.0, 4.0, 20.0, 20.0, 8.0, 20.0]]]
    gt = Instances((22, 22))
    gt.gt_masks = PolygonMasks(polys)
    idx = torch.tensor([1, 0, 1])
    t_poly = _mask_targets(gt, idx, (24, 28), 4, torch.device("cpu"))
    gt.gt_masks = BitMasks.from_polygon_masks(PolygonMasks(polys), 22, 22)
    t_bits = _mask_targets(gt, idx, (24, 28), 4, torch.device("cpu"))
    assert t_poly.shape == (3, 6, 7) and torch.equal(t_poly, t_bits)
    # polygon 0 fills pixels x 2-13, y 2-9: of the 4 x 4 cells, columns 0-3 cover 1/2, 1, 1, 1/2 of it in x and rows
    # 0-2 cover 1/2, 1, 1/2 in y; a cell is kept where the product is >= 1/2
    want0 = torch.zeros(6, 7, dtype=torch.bool)
    want0[1, 0:4] = want0[0, 1:3] = want0[2, 1:3] = True
    want1 = torch.zeros(6, 7, dtype=torch.bool)
    want1[1:5, 2:5] = True  # pixels x 8-19, y 4-19: whole cells x 2-4, y 1-4
    assert torch.equal(t_poly[1], want0) and torch.equal(t_poly[0], want1) and torch.equal(t_poly[2], want1)


def test_sec34_detections_keep_their_representation_through_topk_and_nms():
    """Hand-built: two levels, three anchors; anchors 0 and 1 (level 0) overlap, anchor 1 scores higher, so NMS keeps
    1 and drops 0; anchor 2 (level 1) is kept. Each kept detection carries its own anchor's representation."""
    model = _model(SYN, ["MODEL.RDSNET.REP_DIM", "2"])
    anchors = [Boxes(torch.tensor([[0.0, 0, 10, 10], [1.0, 1, 11, 11]])), Boxes(torch.tensor([[50.0, 50, 60, 60]]))]
    scores = [torch.tensor([[0.6, 0.0, 0, 0, 0], [0.9, 0, 0, 0, 0]]), torch.tensor([[0.0, 0.0, 0.7, 0, 0]])]
    deltas = [torch.zeros(2, 4), torch.zeros(1, 4)]
    reps = [torch.tensor([[1.0, 2, 3, 4], [5.0, 6, 7, 8]]), torch.tensor([[9.0, 10, 11, 12]])]
    inst = model.detections_with_reps(anchors, scores, deltas, lambda level, idx: reps[level][idx], (96, 96))
    assert inst.scores.tolist() == pytest.approx([0.9, 0.7])
    assert inst.pred_classes.tolist() == [0, 2]
    assert inst.pred_reps.tolist() == [[5.0, 6, 7, 8], [9.0, 10, 11, 12]]
    torch.testing.assert_close(inst.pred_boxes.tensor, torch.tensor([[1.0, 1, 11, 11], [50.0, 50, 60, 60]]))


def _rows():
    return [("table3", r) for r in TABLE3_ROWS] + [("table4", r) for r in TABLE4_ROWS]


@pytest.mark.parametrize("table,row", _rows(), ids=[f"{t}-{r}" for t, r in _rows()])
def test_tables_3_and_4_every_row_trains_with_empty_images_and_predicts(table, row):
    """Every row of Table 3 (LC / Corr, TE, OHEM, IE) and Table 4 (baseline / direct / MBRM): a training step with an
    image without instances and one with a batch without any, then prediction with masks at the output size."""
    opts = table_opts(3 if table == "table3" else 4, row) + ["MODEL.RETINANET.SCORE_THRESH_TEST", "0.0"]
    if row == "mbrm":  # MBRM trains in its own stage (Sec. 3.4), from a converged model
        opts += ["MODEL.RDSNET.MBRM_STAGE", "True", "MODEL.WEIGHTS", "stage1.pth"]
    model = _model(SYN, opts)
    with EventStorage(0):
        for empty in ((1,), (0, 1)):
            losses = model(synthetic_batch(2, empty=empty))
            assert set(losses) == ({"loss_refine"} if row == "mbrm" else {"loss_cls", "loss_box_reg", "loss_mask"})
            assert all(torch.isfinite(v) for v in losses.values())
            sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        out = model([{**d, "height": 120, "width": 144} for d in _images(synthetic_batch(1, empty=()))])
    inst = out[0]["instances"]
    assert len(inst) > 0 and inst.pred_masks.shape[1:] == (120, 144) and inst.pred_masks.dtype == torch.bool
    assert not any(inst.has(f) for f in ("pred_reps", "pred_mask_logits", "pred_crop_boxes"))


def test_table4_direct_boxes_are_the_masks_enclosing_rectangles():
    """Table 4 "direct": each output box is the enclosing rectangle of its mask (at the input size)."""
    model = _model(SYN, table_opts(4, "direct") + ["MODEL.RETINANET.SCORE_THRESH_TEST", "0.0"]).eval()
    with torch.no_grad():
        inst = model(_images(synthetic_batch(1, empty=())))[0]["instances"]
    for box, mask in zip(inst.pred_boxes.tensor, inst.pred_masks):
        if mask.any():
            ys, xs = mask.nonzero(as_tuple=True)
            assert box.tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


def test_sec34_mbrm_stage_trains_only_mbrm():
    """The MBRM stage: loss_refine only; an optimiser step changes MBRM's kernels and nothing else (parameters and
    normalisation statistics)."""
    model = _model(MBRM_STAGE)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = [p for p in model.parameters() if p.requires_grad]
    mbrm_params = list(model.mbrm.parameters())
    assert params and len(params) == len(mbrm_params) and all(p is q for p, q in zip(params, mbrm_params))
    opt = torch.optim.SGD(params, lr=1.0)
    with EventStorage(0):
        losses = model(synthetic_batch(2, empty=(1,)))
    assert set(losses) == {"loss_refine"} and losses["loss_refine"] > 0
    losses["loss_refine"].backward()
    opt.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("mbrm.") for k in changed), changed


@pytest.mark.parametrize("mask_on", [False, True])
def test_detections_are_retinanets_with_the_same_weights(mask_on):
    """MODEL.MASK_ON False: RDSNet is detectron2's RetinaNet (same parameters, same detections). With masks, RDSNet
    re-implements RetinaNet's inference to carry each detection's representation (``detections_with_reps``): on
    RetinaNet's weights (the representation tower and pixel stream on top), with the per-level top-k (20 here) and the
    detections-per-image cap (15) both binding, its boxes, scores and classes are RetinaNet's."""
    every = ["MODEL.RETINANET.SCORE_THRESH_TEST", "0.0", "MODEL.RETINANET.TOPK_CANDIDATES_TEST", "20"]
    every += ["TEST.DETECTIONS_PER_IMAGE", "15"]
    base = _model(RETINANET, every, seed=1)
    rds = _model(SYN, ["MODEL.MASK_ON", str(mask_on), *table_opts(4, "baseline"), *every], seed=2)
    assert isinstance(rds, RDSNet) and isinstance(rds.head, RDSNetHead) == mask_on
    missing, unexpected = rds.load_state_dict(base.state_dict(), strict=not mask_on)
    assert not unexpected and all(k.startswith(("head.rep_", "pixel_stream.")) for k in missing)
    for x, y in predict_alike(base, rds):
        assert len(x) == 15 and (y.pred_masks.shape[0] == 15 if mask_on else not y.has("pred_masks"))
        torch.testing.assert_close(x.pred_boxes.tensor, y.pred_boxes.tensor, rtol=0, atol=0)
        torch.testing.assert_close(x.scores, y.scores, rtol=0, atol=0)
        assert torch.equal(x.pred_classes, y.pred_classes)


@pytest.mark.parametrize("row,ratio", [(2, 1.0), (3, 1.2), (6, 1.0), (7, 1.2)])
def test_table3_ie_switch_crops_the_inference_masks_with_the_detections_x_1_2_or_x_1(row, ratio):
    """Table 3's IE: inference masks are cropped with the detected boxes x1.2 (rows 3 and 7) or x1 (rows 2 and 6),
    clipped to the image; TE (the training crop) plays no part at inference."""
    model = _model(SYN, table_opts(3, row) + ["MODEL.RETINANET.SCORE_THRESH_TEST", "0.0"]).eval()
    seen = {}
    original = model.crop_logits

    def spy(pixel, reps, batch_idx, crop_boxes):
        seen["crop"] = crop_boxes
        return original(pixel, reps, batch_idx, crop_boxes)

    model.crop_logits = spy
    with torch.no_grad():
        inst = model.forward_inference(*_inference_inputs(model))[0]
    assert len(inst) > 0
    torch.testing.assert_close(seen["crop"], expand_boxes(inst.pred_boxes.tensor, ratio, (96, 96)))
    if ratio > 1:
        assert (
            seen["crop"][:, 2:] - seen["crop"][:, :2] > inst.pred_boxes.tensor[:, 2:] - inst.pred_boxes.tensor[:, :2]
        ).any()


def _inference_inputs(model):
    images = model.preprocess_image(_images(synthetic_batch(1, empty=())))
    features = [model.backbone(images.tensor)[f] for f in model.head_in_features]
    return images, features, model.head(features)


@pytest.mark.parametrize(
    "opts,message",
    [
        (["MODEL.RDSNET.MASK_ASSEMBLY", "dot"], "MASK_ASSEMBLY must be one of"),
        (["MODEL.RDSNET.BOX_REFINEMENT", "box"], "BOX_REFINEMENT must be one of"),
        (["MODEL.MASK_ON", "False"], "which MODEL.MASK_ON=False removes"),  # with BOX_REFINEMENT mbrm below
        (["MODEL.RDSNET.MBRM_STAGE", "True"], "MBRM_STAGE trains MBRM"),
        (["MODEL.RDSNET.BOX_REFINEMENT", "mbrm", "MODEL.RDSNET.MBRM_STAGE", "True"], "set MODEL.WEIGHTS"),
        (["MODEL.RDSNET.OHEM_NEG_POS_RATIO", "0.0"], "OHEM_NEG_POS_RATIO must be > 0"),
        (["MODEL.RDSNET.CROP_EXPAND_TEST", "0.8"], "must be >= 1"),
        (["MODEL.RDSNET.PIXEL_IN_FEATURES", "['p3', 'p7']"], "must be among MODEL.RETINANET.IN_FEATURES"),
    ],
)
def test_settings_that_cannot_work_stop_at_build_time(opts, message):
    if opts == ["MODEL.MASK_ON", "False"]:
        opts = opts + ["MODEL.RDSNET.BOX_REFINEMENT", "mbrm"]
    with pytest.raises(ValueError) as e:
        _model(SYN, opts)
    assert message in str(e.value)


def test_inference_without_detections_gives_empty_instances():
    model = _model(SYN, ["MODEL.RETINANET.SCORE_THRESH_TEST", "1.01", *table_opts(4, "mbrm")]).eval()
    with torch.no_grad():
        inst = model(_images(synthetic_batch(1, empty=())))[0]["instances"]
    assert len(inst) == 0 and inst.pred_masks.shape == (0, 96, 96)


def test_mbrm_outside_its_stage_refuses_to_train_and_to_load_a_checkpoint_without_it():
    """MBRM is trained alone after convergence (Sec. 3.4): training it jointly, or refining with the untrained initial
    kernels of a checkpoint that has none, stops with one message."""
    model = _model(SYN, table_opts(4, "mbrm"))
    with EventStorage(0), pytest.raises(ValueError, match="outside the MBRM stage"):
        model(synthetic_batch(2, empty=(1,)))
    stage1 = {k: v for k, v in model.state_dict().items() if not k.startswith("mbrm.")}
    with pytest.raises(ValueError, match="checkpoint has no trained MBRM"):
        model.load_state_dict(stage1, strict=False)
    model.load_state_dict(model.state_dict())  # a checkpoint with MBRM loads
    # the MBRM stage starts from a stage-1 checkpoint, but evaluating it before training MBRM (--eval-only on the
    # stage config with stage 1's weights) refuses to refine with the untrained kernels
    stage = _model(MBRM_STAGE, ["MODEL.RETINANET.SCORE_THRESH_TEST", "0.0"])
    stage.load_state_dict(stage1, strict=False)
    stage.eval()
    with torch.no_grad(), pytest.raises(ValueError, match="checkpoint has no trained MBRM"):
        stage(_images(synthetic_batch(1, empty=())))
    stage.train()
    with EventStorage(0):
        stage(synthetic_batch(2, empty=()))["loss_refine"].backward()
    stage.eval()
    with torch.no_grad():
        assert len(stage(_images(synthetic_batch(1, empty=())))[0]["instances"]) > 0


def test_sec34_masks_are_upsampled_to_the_input_then_cropped_with_the_expanded_box():
    """Sec. 3.4: M' is the correlation map up-sampled to the input size (bilinear, pixel centres aligned) and then
    cropped with the detection x1.2 at the input resolution; checked against F.interpolate of the whole map, for the
    output masks at the input size and at twice it."""
    from torch.nn import functional as F

    model = _model(SYN)
    g = torch.Generator().manual_seed(3)
    z = torch.randn(2, 24, 24, generator=g) * 3  # the stride-4 logits of a 96 x 96 input, over the whole map
    crops = torch.tensor([[10.3, 20.7, 50.2, 61.9], [0.0, 33.0, 95.0, 96.0]])
    # M (the probabilities of Eq. 1) is what is up-sampled
    up = F.interpolate(torch.sigmoid(z)[:, None], scale_factor=4, mode="bilinear", align_corners=False)[:, 0]
    centres = torch.arange(96) + 0.5
    for k, (x1, y1, x2, y2) in enumerate(crops.tolist()):
        inside = ((centres >= y1) & (centres <= y2))[:, None] & ((centres >= x1) & (centres <= x2))[None, :]
        want = up[k] * inside
        got = torch.zeros(96, 96)
        for kk, y0, x0, region in model.crop_regions(z, crops, (96, 96), (96, 96)):
            if kk == k:
                got[y0 : y0 + region.shape[0], x0 : x0 + region.shape[1]] = region
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        prof_x, prof_y = model.profiles(z, crops, (96, 96))
        torch.testing.assert_close(prof_x[k], want.max(dim=0).values, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(prof_y[k], want.max(dim=1).values, atol=1e-5, rtol=1e-5)
    # at an output twice the input: the same map sampled at the output pixels' centres
    up2 = F.interpolate(torch.sigmoid(z)[:1, None], scale_factor=8, mode="bilinear", align_corners=False)[0, 0]
    c2 = (torch.arange(192) + 0.5) / 2
    x1, y1, x2, y2 = crops[0].tolist()
    inside2 = ((c2 >= y1) & (c2 <= y2))[:, None] & ((c2 >= x1) & (c2 <= x2))[None, :]
    got2 = torch.zeros(192, 192)
    for _k, y0, x0, region in model.crop_regions(z[:1], crops[:1], (96, 96), (192, 192)):
        got2[y0 : y0 + region.shape[0], x0 : x0 + region.shape[1]] = region
    torch.testing.assert_close(got2, up2 * inside2, atol=1e-5, rtol=1e-5)


def test_reps_at_the_kept_anchors_equal_the_dense_representation_conv():
    """Inference evaluates the representation conv only at the detections' anchors: the same numbers as the dense
    conv read at (y, x, a) in detectron2's (H x W x A) order, also at the map's borders."""
    model = _model(SYN, ["MODEL.RDSNET.REP_DIM", "4"])
    head = model.head
    feature = torch.randn(1, head.rep_pred.in_channels, 5, 7)
    dense = head.predict_reps([feature])[0]  # (1, A * rs, 5, 7)
    A, rs = head.rep_pred.out_channels // head.rep_size, head.rep_size
    flat = dense.view(1, A, rs, 5, 7).permute(0, 3, 4, 1, 2).reshape(-1, rs)  # (H * W * A, rs)
    idx = torch.tensor([0, 1, 8, 5 * 7 * A - 1, 3 * 7 * A + 6 * A + 2, 17])
    torch.testing.assert_close(head.reps_at(feature[0], idx), flat[idx], rtol=1e-4, atol=1e-5)


def test_train_net_two_stages_eval_only_and_default_predictor(tmp_path, datasets_dir):
    """RDSNet through detectron2's tools: stage 1 trains and evaluates (COCO evaluator, masks and boxes), the MBRM stage
    loads its checkpoint, trains MBRM alone and evaluates with the refined boxes, --eval-only reproduces it, and
    DefaultPredictor predicts masks from the final checkpoint."""
    import numpy as np
    from detectron2.engine import DefaultPredictor

    import train_net
    from tests.utils import TINY

    one, two = tmp_path / "stage1", tmp_path / "mbrm"
    tiny = [*TINY, "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0"]
    res1 = train_net.run(["--config-file", SYN, *tiny, "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", str(one)])
    assert {"bbox", "segm"} <= set(res1)
    stage1 = torch.load(one / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    opts2 = [*tiny, "SOLVER.MAX_ITER", "2", "MODEL.WEIGHTS", str(one / "model_final.pth"), "OUTPUT_DIR", str(two)]
    res2 = train_net.run(["--config-file", MBRM_STAGE, *opts2])
    final = torch.load(two / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    for k, v in stage1.items():  # everything but MBRM is stage 1's
        assert torch.equal(final[k], v), k
    assert any(k.startswith("mbrm.") for k in final)
    opts3 = [*opts2[:-4], "MODEL.WEIGHTS", str(two / "model_final.pth"), "OUTPUT_DIR", str(two)]
    res3 = train_net.run(["--config-file", MBRM_STAGE, "--eval-only", *opts3])
    assert res3["bbox"]["AP"] == pytest.approx(res2["bbox"]["AP"])
    cfg = _cfg(SYN, [*tiny, *table_opts(4, "mbrm"), "MODEL.WEIGHTS", str(two / "model_final.pth")])
    image = synthetic_batch(1, empty=())[0]["image"].permute(1, 2, 0).numpy()
    inst = DefaultPredictor(cfg)(np.ascontiguousarray(image))["instances"]
    assert len(inst) > 0 and inst.pred_masks.shape[1:] == (96, 96)


def test_sec34_crop_widened_by_one_stride_pixel_is_enough_on_a_non_square_map():
    """The correlation is computed only over the crop widened by one pixel-stream pixel (``crop_logits``): M' inside
    the crop then equals the up-sampled full map, on a non-square input (80 x 112, map 20 x 28)."""
    from torch.nn import functional as F

    model = _model(SYN)
    g = torch.Generator().manual_seed(4)
    z = torch.randn(3, 20, 28, generator=g) * 3
    crops = torch.tensor([[13.3, 5.2, 61.7, 40.9], [70.1, 30.6, 111.0, 79.5], [0.0, 0.0, 9.9, 7.1]])
    widened = crops + torch.tensor([-4.0, -4.0, 4.0, 4.0])
    cy, cx = (torch.arange(20) + 0.5) * 4, (torch.arange(28) + 0.5) * 4
    keep = ((cy[None, :] >= widened[:, 1:2]) & (cy[None, :] <= widened[:, 3:4]))[:, :, None] & (
        (cx[None, :] >= widened[:, 0:1]) & (cx[None, :] <= widened[:, 2:3])
    )[:, None, :]
    z_cropped = torch.where(keep, z, torch.full_like(z, float("-inf")))  # what the op returns for the widened box
    up = F.interpolate(torch.sigmoid(z)[:, None], scale_factor=4, mode="bilinear", align_corners=False)[:, 0]
    ys, xs = torch.arange(80) + 0.5, torch.arange(112) + 0.5
    for k, y0, x0, region in model.crop_regions(z_cropped, crops, (80, 112), (80, 112)):
        x1, y1, x2, y2 = crops[k].tolist()
        inside = ((ys >= y1) & (ys <= y2))[:, None] & ((xs >= x1) & (xs <= x2))[None, :]
        got = torch.zeros(80, 112)
        got[y0 : y0 + region.shape[0], x0 : x0 + region.shape[1]] = region
        torch.testing.assert_close(got, up[k] * inside, atol=1e-5, rtol=1e-5)
