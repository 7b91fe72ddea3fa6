"""DSG in detectron2 (Sec. 3-4): MPN targets, every Table 1 row trains a step, gradients through
SgRoIAlign into the MPN, Cascade DSG (Eq. 3), proposal indices through inference, DefaultPredictor."""

import os

import pytest
import torch

from tests.utils import TINY, importorskip_detectron2, synthetic_batch

importorskip_detectron2()

from detectron2.modeling import build_model  # noqa: E402
from detectron2.modeling.poolers import ROIPooler  # noqa: E402
from detectron2.structures import BitMasks, Boxes, Instances  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from dsg.config import TABLE1_ROWS, TABLE1_SWITCHES, table1_opts  # noqa: E402
from dsg.modeling import (  # noqa: E402
    BinApproxShapeGuidedPooler,
    CascadeDSGROIHeads,
    DSGROIHeads,
    ShapeGuidedROIPooler,  # noqa: E402
    mpn_training_rois,
    proposal_indices,
)
from dsg.modeling.roi_heads import MATCHED_CLASSES, reframe_probs  # noqa: E402
from instseg.config import get_cfg  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "configs", "DSG", "dsg_R_18_FPN_synthetic.yaml")
CASCADE = ["MODEL.ROI_HEADS.NAME", "CascadeDSGROIHeads", "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", "True"]


@pytest.fixture(params=[True, False], ids=["agnostic_mask", "class_mask"])
def mask_opts(request):
    """Every test that runs a step runs with class-agnostic and with class-specific mask heads (the COCO configs
    use class-specific ones)."""
    return ["MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK", str(request.param)]


def make_cfg(*opts):
    cfg = get_cfg()
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list(TINY + list(opts))
    return cfg


def train_step(cfg, batch, seed=0):
    torch.manual_seed(seed)
    model = build_model(cfg)
    model.train()
    with EventStorage(0):
        losses = model(batch)
    return model, losses


def _built_components(model):
    """Which of Table 1's components a built model has, read off the modules and what they compute."""
    rh = model.roi_heads
    if not isinstance(rh, DSGROIHeads) or rh.mpn is None:
        return (False,) * 5
    guided = (ShapeGuidedROIPooler, BinApproxShapeGuidedPooler)
    return (
        True,
        rh.mask_fusion is not None,
        isinstance(rh.box_pooler, guided) and rh.sg_box,
        rh.box_fusion is not None,
        isinstance(rh.mask_pooler, guided) and rh.sg_mask,
    )


def test_table1_rows_add_one_component_each():
    """Row 0 builds no DSG component, each row one more (in the table's column order), row 5 all five."""
    built = [_built_components(build_model(make_cfg(*table1_opts(i)))) for i in range(len(TABLE1_ROWS))]
    assert built[0] == (False,) * 5 and built[-1] == (True,) * 5
    for prev, row in zip(built, built[1:]):
        added = [i for i, (a, b) in enumerate(zip(prev, row)) if a != b]
        assert len(added) == 1 and row[added[0]] and added[0] == sum(prev)
    # the switches table1_opts sets are the ones the config reads
    cfg = make_cfg(*table1_opts(3))
    assert [cfg.MODEL.DSG[k] for k in TABLE1_SWITCHES] == [True, True, True, False, False]


def test_defaults_build_the_papers_final_dsg():
    """What the default MODEL.DSG builds on the COCO config: Table 1 row 4 (mRPN, F_M, SgRA_B with exact Eq. 2,
    F_B; plain RoIAlign for the mask head), an MPN of 4 3x3 convs of 256 channels on 14x14 RoIs giving a 28x28
    class-agnostic P (Fig. 3), 1x1 fusion convs (Sec. 3.3), and test-time score threshold 0.001 and NMS 0.5 at the
    last box head (Sec. 4.1)."""
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(ROOT, "configs", "DSG", "dsg_R_50_FPN_1x.yaml"))
    cfg.merge_from_list(["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"])
    model = build_model(cfg)
    rh = model.roi_heads
    assert _built_components(model) == (True, True, True, True, False)
    assert isinstance(rh.box_pooler, ShapeGuidedROIPooler) and type(rh.mask_pooler) is ROIPooler
    convs = rh.mpn.conv_norm_relus
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(256, 256, (3, 3))] * 4
    logits, feats = rh.mpn.layers_with_features(torch.randn(2, 256, 14, 14))
    assert logits.shape == (2, 1, 28, 28) and feats.shape == (2, 256, 14, 14)
    assert rh.box_fusion.conv.kernel_size == (1, 1) and rh.mask_fusion.conv.kernel_size == (1, 1)
    assert rh.box_fusion(feats).shape == (2, 256, 7, 7) and rh.mask_fusion(feats).shape == (2, 256, 14, 14)
    assert not rh.detach_probs and rh.mpn_iou_threshold == 0.5
    assert (rh.box_predictor.test_score_thresh, rh.box_predictor.test_nms_thresh) == (0.001, 0.5)


@pytest.mark.parametrize("index", range(len(TABLE1_ROWS)), ids=[f"row{i}" for i in range(len(TABLE1_ROWS))])
def test_dsg_table1_rows_build_and_train_a_step(index, mask_opts):
    row = TABLE1_ROWS[index]
    cfg = make_cfg(*table1_opts(index), *mask_opts)
    model, losses = train_step(cfg, synthetic_batch(2, empty=(1,)))
    assert isinstance(model.roi_heads, DSGROIHeads)
    assert ("loss_mpn" in losses) == row[0]
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    rh = model.roi_heads
    assert _built_components(model) == row
    if row[0]:
        assert rh.mpn.predictor.weight.grad.abs().sum() > 0
    # the fusion convs start at zero, so only their gradient shows that F_- is added to the head's features
    for fusion in (rh.box_fusion, rh.mask_fusion):
        if fusion is not None:
            assert fusion.conv.weight.grad.abs().sum() > 0
    # and it predicts standard Instances
    model.eval()
    with torch.no_grad():
        out = model([{k: v for k, v in d.items() if k != "instances"} for d in synthetic_batch(1, empty=())])
    assert set(out[0]["instances"].get_fields()) == {"pred_boxes", "scores", "pred_classes", "pred_masks"}


@pytest.mark.parametrize("sg_mask", [False, True])
def test_light_mpn_7x7_rois_trains_and_predicts(sg_mask, mask_opts):
    """configs/DSG/dsg_light_*: the MPN on 7x7 RoIs gives P 14x14 (guiding the 7x7 box pooling and, with
    SgRA_M, the 14x14 mask pooling) and F_- 7x7, which F_M brings to the mask head's 14x14 features."""
    light = os.path.join(ROOT, "configs", "DSG", "dsg_light_R_18_FPN_synthetic.yaml")
    cfg = get_cfg()
    cfg.merge_from_file(light)
    cfg.merge_from_list(TINY + ["MODEL.DSG.SG_ROI_ALIGN_MASK", str(sg_mask), *mask_opts])
    assert (cfg.MODEL.DSG.MPN_POOLER_RESOLUTION, cfg.MODEL.DSG.MPN_NUM_CONV) == (7, 1)
    model, losses = train_step(cfg, synthetic_batch(2, empty=(1,)))
    assert all(torch.isfinite(v) for v in losses.values()) and "loss_mpn" in losses
    sum(losses.values()).backward()
    rh = model.roi_heads
    assert rh.mpn.predictor.weight.grad.abs().sum() > 0
    x = torch.randn(3, cfg.MODEL.FPN.OUT_CHANNELS, 7, 7)
    logits, feat = rh.mpn.layers_with_features(x)
    assert logits.shape == (3, 1, 14, 14) and feat.shape == (3, cfg.MODEL.DSG.MPN_CONV_DIM, 7, 7)
    assert rh.mask_fusion(feat).shape[-2:] == (14, 14)
    model.eval()
    with torch.no_grad():
        out = model([{k: v for k, v in d.items() if k != "instances"} for d in synthetic_batch(1, empty=())])
    inst = out[0]["instances"]
    assert len(inst) > 0 and inst.pred_masks.shape[-2:] == (96, 96)


@pytest.mark.parametrize("cls_agnostic", [True, False], ids=["agnostic_mask", "class_mask"])
def test_dsg_row0_is_mask_rcnn(cls_agnostic):
    """Table 1 row 0: with the same weights, DSGROIHeads give StandardROIHeads' losses and predictions."""
    opts = ["MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK", str(cls_agnostic)]
    model = build_model(make_cfg(*table1_opts(0), *opts))
    base = get_cfg()
    base.merge_from_file(os.path.join(ROOT, "configs", "Baselines", "mask_rcnn_R_18_FPN_synthetic.yaml"))
    base.merge_from_list(TINY + opts)
    ref = build_model(base)
    assert type(ref.roi_heads).__name__ == "StandardROIHeads" and isinstance(model.roi_heads, DSGROIHeads)
    torch.manual_seed(3)
    with torch.no_grad():  # biases and BN statistics off their initial 0 / 1, so that no term vanishes
        for t in list(ref.parameters()) + list(ref.buffers()):
            if t.dim() == 1 and t.is_floating_point():
                t.add_(torch.rand_like(t) * 0.05)
    model.load_state_dict(ref.state_dict(), strict=True)  # the same parameters, nothing more
    batch = synthetic_batch(2, empty=(1,))
    for m in (model, ref):
        m.train()
    with EventStorage(0):
        torch.manual_seed(0)
        losses = model(batch)
        torch.manual_seed(0)
        ref_losses = ref(batch)
    assert set(losses) == set(ref_losses)
    for k in ref_losses:
        torch.testing.assert_close(losses[k], ref_losses[k])
    images = [{k: v for k, v in d.items() if k != "instances"} for d in synthetic_batch(2, empty=())]
    with torch.no_grad():
        out, ref_out = model.eval()(images), ref.eval()(images)
    assert sum(len(o["instances"]) for o in ref_out) > 0
    for o, r in zip(out, ref_out):
        o, r = o["instances"], r["instances"]
        assert set(o.get_fields()) == set(r.get_fields())
        for name in r.get_fields():
            a, b = o.get(name), r.get(name)
            a, b = (a.tensor, b.tensor) if hasattr(a, "tensor") else (a, b)
            torch.testing.assert_close(a, b)


def test_switches_need_mrpn():
    with pytest.raises(ValueError, match="MRPN_ON"):
        build_model(make_cfg("MODEL.DSG.MRPN_ON", "False"))  # the other defaults are on
    with pytest.raises(ValueError, match="SG_MODE"):
        build_model(make_cfg("MODEL.DSG.SG_MODE", "approx"))


@pytest.mark.parametrize(
    "opts,match",
    [
        # the MPN is trained on masks: without MASK_ON it never trains (the loader drops the masks) and SgRoIAlign
        # runs on an untrained P; F_M / SgRA_M would be dropped
        (["MODEL.MASK_ON", "False"], "MASK_ON"),
        (["MODEL.MASK_ON", "False", *table1_opts(1)], "MASK_ON"),
        (["MODEL.MASK_ON", "False", *CASCADE], "MASK_ON"),
        # MASK_MPN_SOURCE changes what F_M / SgRA_M get: without them it does nothing
        (["MODEL.DSG.MASK_MPN_SOURCE", "detection", *table1_opts(1)], "MASK_MPN_SOURCE"),
        # DETACH_PROBS stops the gradient through P, which only SgRoIAlign uses
        (["MODEL.DSG.DETACH_PROBS", "True", *table1_opts(2)], "DETACH_PROBS"),
    ],
    ids=["no_masks", "no_masks_mrpn_only", "no_masks_cascade", "mpn_source_unused", "detach_unused"],
)
def test_switches_that_cannot_work_stop_at_build_time(opts, match):
    with pytest.raises(ValueError, match=match) as err:
        build_model(make_cfg(*opts))
    assert str(err.value).count("MODEL.") >= 2  # says which keys to change


@pytest.mark.parametrize(
    "opts,match",
    [
        # values that only the module using them would check: refused even when that module is not built
        (["MODEL.DSG.SG_MODE", "approx", *table1_opts(2)], "SG_MODE"),
        (["MODEL.DSG.FUSION_KERNEL_SIZE", "2", *table1_opts(1)], "FUSION_KERNEL_SIZE"),
        # Cascade DSG builds its own mask heads: another ROI_MASK_HEAD.NAME would be ignored
        (["MODEL.ROI_MASK_HEAD.NAME", "MyMaskHead", *CASCADE], "ROI_MASK_HEAD.NAME"),
    ],
    ids=["sg_mode", "kernel_size", "cascade_mask_head"],
)
def test_bad_values_stop_at_build_time_even_when_unused(opts, match):
    with pytest.raises(ValueError, match=match):
        build_model(make_cfg(*opts))


def test_row0_without_masks_is_faster_rcnn():
    model = build_model(make_cfg("MODEL.MASK_ON", "False", *table1_opts(0)))
    model.train()
    with EventStorage(0):
        losses = model(synthetic_batch(2, empty=()))
    assert "loss_mask" not in losses and "loss_mpn" not in losses and "loss_cls" in losses


@pytest.mark.parametrize("detach", [False, True])
def test_dsg_sec34_box_loss_reaches_the_mpn_through_sgroialign_unless_detached(detach, mask_opts):
    # SgRA_B only (no fusion), so the box losses can reach the MPN through P alone
    cfg = make_cfg(*table1_opts(3), "MODEL.DSG.FUSE_MASK", "False", "MODEL.DSG.DETACH_PROBS", str(detach), *mask_opts)
    model, losses = train_step(cfg, synthetic_batch(2, empty=()))
    (losses["loss_cls"] + losses["loss_box_reg"]).backward()
    grad = model.roi_heads.mpn.predictor.weight.grad
    if detach:
        assert grad is None or grad.abs().sum() == 0
    else:
        assert grad.abs().sum() > 0


def test_dsg_sg_mode_bin_approx_is_roialign_times_one_plus_bin_mean(mask_opts):
    scales = (1 / 4, 1 / 8)
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(1, 3, 40, 40, generator=g), torch.randn(1, 3, 20, 20, generator=g)]
    boxes = [Boxes(torch.tensor([[4.0, 6.0, 60.0, 50.0], [10.0, 10.0, 150.0, 140.0]]))]
    probs = torch.rand(2, 28, 28, generator=g)
    approx = BinApproxShapeGuidedPooler(7, scales, 0, "ROIAlignV2")(feats, boxes, probs)
    plain = ROIPooler(7, scales, 0, "ROIAlignV2")(feats, boxes)
    torch.testing.assert_close(approx, plain * (1 + probs.reshape(2, 1, 7, 4, 7, 4).mean((3, 5))))
    cfg = make_cfg("MODEL.DSG.SG_MODE", "bin_approx", "MODEL.DSG.SG_ROI_ALIGN_MASK", "True", *mask_opts)
    model, losses = train_step(cfg, synthetic_batch(2, empty=()))
    assert type(model.roi_heads.box_pooler) is BinApproxShapeGuidedPooler
    assert type(model.roi_heads.mask_pooler) is BinApproxShapeGuidedPooler
    assert torch.isfinite(losses["loss_cls"])


def _proposals_with_gt():
    m0 = torch.zeros(40, 40, dtype=torch.bool)
    m0[5:25, 5:15] = True
    m1 = torch.zeros(40, 40, dtype=torch.bool)
    m1[20:35, 20:38] = True
    p = Instances((40, 40))
    p.proposal_boxes = Boxes(
        torch.tensor(
            [
                [5.0, 5.0, 15.0, 25.0],  # = gt 0 (IoU 1)
                [5.0, 5.0, 15.0, 15.0],  # half of gt 0 (IoU 0.5)
                [5.0, 5.0, 15.0, 12.0],  # IoU 0.35 with gt 0
                [20.0, 20.0, 38.0, 35.0],  # = gt 1
                [0.0, 0.0, 3.0, 3.0],  # background
            ]
        )
    )
    gt_boxes = Boxes(torch.tensor([[5.0, 5.0, 15.0, 25.0], [20.0, 20.0, 38.0, 35.0]]))
    idx = torch.tensor([0, 0, 0, 1, 0])
    p.gt_boxes = gt_boxes[idx]
    p.gt_classes = torch.tensor([3, 3, 5, 1, 5])  # 5 = background
    p.gt_masks = BitMasks(torch.stack([m0, m1]))[idx]
    return p


def test_dsg_sec41_mpn_targets_are_class_agnostic_masks_of_iou_ge_half_rois():
    p = _proposals_with_gt()
    keep = mpn_training_rois([p], 0.5)[0]
    assert keep.tolist() == [True, True, False, True, False]
    # the MPN loss is the binary mask loss against the matched instance's mask cropped to each kept RoI,
    # whatever the class: check it on a class-agnostic logit map
    cfg = make_cfg()
    heads = build_model(cfg).roi_heads
    logits = torch.randn(5, 1, 28, 28)
    with EventStorage(0):  # detectron2's mask loss logs its accuracy
        loss = heads.mask_loss_on_matched(heads.mpn, logits, [p])
    kept = p[keep]
    targets = kept.gt_masks.crop_and_resize(kept.proposal_boxes.tensor, 28).float()
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[keep][:, 0], targets)
    torch.testing.assert_close(loss, expected)


def test_dsg_inference_carries_proposal_indices_through_regression_and_nms():
    cfg = make_cfg("MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.5")
    predictor = build_model(cfg).roi_heads.box_predictor
    p = Instances((100, 100))
    p.proposal_boxes = Boxes(torch.tensor([[0.0, 0, 20, 20], [50, 50, 90, 90], [10, 60, 30, 95], [60, 5, 95, 30]]))
    k1 = cfg.MODEL.ROI_HEADS.NUM_CLASSES + 1
    logits = torch.full((4, k1), -10.0)
    logits[:, -1] = 0.0  # background
    logits[1, 2] = 10.0  # proposal 1 -> class 2
    logits[3, 0] = 10.0  # proposal 3 -> class 0
    deltas = torch.zeros(4, 4)
    deltas[0] = float("nan")  # proposal 0 is dropped by detectron2 before filtering: indices shift
    pred, kept = predictor.inference((logits, deltas), [p])
    mapped = proposal_indices(predictor, (logits, deltas), [p], kept)[0]
    assert sorted(mapped.tolist()) == [1, 3]
    for box, cls, i in zip(pred[0].pred_boxes.tensor, pred[0].pred_classes, mapped):
        torch.testing.assert_close(box, p.proposal_boxes.tensor[i])  # zero deltas: the proposal itself
        assert int(cls) == {1: 2, 3: 0}[int(i)]
    assert kept[0].tolist() != mapped.tolist()  # detectron2's own indices would point at the wrong RoIs


@pytest.mark.parametrize("sg_mask", [False, True], ids=["F_M", "F_M+SgRA_M"])
def test_dsg_mask_branch_gets_the_features_of_its_proposal(sg_mask, monkeypatch):
    """Sec. 3.3 at test time: each detection's mask head gets the F_- of the very proposal it was regressed from,
    and SgRA_M the P of that proposal re-expressed over the detection's box."""
    import dsg.modeling.roi_heads as rh_module

    torch.manual_seed(0)
    cfg = make_cfg("MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "MODEL.DSG.SG_ROI_ALIGN_MASK", str(sg_mask))
    model = build_model(cfg).eval()
    batch = [{k: v for k, v in d.items() if k != "instances"} for d in synthetic_batch(1, empty=())]
    captured = {}
    heads = model.roi_heads
    orig_fwd_box, orig_pool = heads._forward_box, heads.pool_guided
    orig_indices = rh_module.proposal_indices

    def fwd_box(features, proposals):
        captured["proposals"], captured["features"] = proposals, features
        return orig_fwd_box(features, proposals)

    def indices(*args):
        captured["indices"] = orig_indices(*args)[0]
        return [captured["indices"]]

    def pool(pooler, x, boxes, probs, guided, fusion, mpn_features):
        if pooler is heads.mask_pooler:
            captured["mask"] = (torch.cat([b.tensor for b in boxes]), probs, mpn_features)
        return orig_pool(pooler, x, boxes, probs, guided, fusion, mpn_features)

    heads._forward_box, heads.pool_guided = fwd_box, pool
    monkeypatch.setattr(rh_module, "proposal_indices", indices)
    with torch.no_grad():
        out = model(batch)[0]["instances"]
        props = captured["proposals"][0].proposal_boxes
        logits, feats = heads.run_mpn(captured["features"], [props])
    assert len(out) > 1 and not out.has("mpn_features") and not out.has("mpn_boxes")
    idx = captured["indices"]
    assert len(idx.unique()) > 1
    boxes, probs, carried = captured["mask"]
    torch.testing.assert_close(boxes, out.pred_boxes.tensor)
    torch.testing.assert_close(carried, feats[idx])
    src = props.tensor[idx]
    assert not torch.allclose(src, boxes)  # the box regression moved the boxes
    expected = reframe_probs(logits[idx, 0].sigmoid(), src, boxes) if sg_mask else logits[idx, 0].sigmoid()
    torch.testing.assert_close(probs, expected)


def test_dsg_sgra_m_reframe_probs_over_the_detection_box():
    """P over a proposal, re-expressed over another box: the same box gives P; a box shifted right by half the
    proposal's width sees P's right half in its left half (and 0 beyond P); a box twice as large sees P shrunk."""
    g = torch.Generator().manual_seed(0)
    p = torch.rand(2, 4, 6, generator=g)
    src = torch.tensor([[10.0, 20.0, 40.0, 36.0], [0.0, 0.0, 12.0, 8.0]])
    torch.testing.assert_close(reframe_probs(p, src, src), p)
    shifted = src.clone()
    shifted[:, [0, 2]] += (src[:, 2:3] - src[:, 0:1]) / 2
    r = reframe_probs(p, src, shifted)
    torch.testing.assert_close(r[:, :, :3], p[:, :, 3:])
    assert r[:, :, 4:].abs().max() == 0  # more than a pixel of P's grid outside the proposal
    big = torch.tensor([[10.0, 20.0, 70.0, 52.0]])  # the proposal is its top-left quarter
    r = reframe_probs(p[:1], src[:1], big)[0]
    # centre of the big box's bin (i, j) = P's continuous point (2j + 1, 2i + 1): the mean of a 2x2 block of P
    torch.testing.assert_close(r[:2, :3], p[0].reshape(2, 2, 3, 2).mean((1, 3)))
    assert reframe_probs(p[:0], src[:0], src[:0]).shape == (0, 4, 6)


def test_dsg_mask_mpn_source_detection_runs_the_mpn_on_the_detections():
    """MASK_MPN_SOURCE=detection: the mask head fuses the F_- the MPN computes on each final box instead of
    the F_- of the proposal the box was regressed from; the boxes stay the same."""
    torch.manual_seed(0)
    cfg = make_cfg("MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0")
    model = build_model(cfg).eval()
    batch = [{k: v for k, v in d.items() if k != "instances"} for d in synthetic_batch(1, empty=())]
    heads = model.roi_heads
    captured = {"mpn_boxes": [], "fused": []}
    orig_mpn, orig_fusion = heads.run_mpn, heads.mask_fusion.forward

    def run_mpn(features, boxes):
        captured["mpn_boxes"].append(torch.cat([b.tensor for b in boxes]).clone())
        return orig_mpn(features, boxes)

    def fusion(x):
        captured["fused"].append(x.clone())
        return orig_fusion(x)

    heads.run_mpn, heads.mask_fusion.forward = run_mpn, fusion
    with torch.no_grad():
        ref = model(batch)[0]["instances"]  # "proposal", the paper's
        assert len(captured["mpn_boxes"]) == 1  # the MPN ran on the proposals only
        heads.mask_mpn_source = "detection"
        out = model(batch)[0]["instances"]
        _, own = orig_mpn(model.backbone(model.preprocess_image(batch).tensor), [out.pred_boxes])
    assert len(out) > 0 and not out.has("mpn_features")
    torch.testing.assert_close(out.pred_boxes.tensor, ref.pred_boxes.tensor)
    # the proposals (box branch), then the detections (mask branch)
    assert len(captured["mpn_boxes"]) == 3
    torch.testing.assert_close(captured["mpn_boxes"][2], out.pred_boxes.tensor)
    torch.testing.assert_close(captured["fused"][1], own)
    assert not torch.allclose(captured["fused"][0], own)  # the proposals' F_- differ from the detections'
    with pytest.raises(ValueError, match="MASK_MPN_SOURCE"):
        build_model(make_cfg("MODEL.DSG.MASK_MPN_SOURCE", "box"))
    with pytest.raises(ValueError, match="MASK_MPN_SOURCE"):
        build_model(make_cfg(*CASCADE, "MODEL.DSG.MASK_MPN_SOURCE", "detection"))


def test_cascade_dsg_eq3_trains_a_step_and_predicts(mask_opts):
    cfg = make_cfg(*CASCADE, *mask_opts)
    model, losses = train_step(cfg, synthetic_batch(2, empty=(1,)))
    assert isinstance(model.roi_heads, CascadeDSGROIHeads)
    assert {"loss_mpn", "loss_mask_stage0", "loss_mask_stage1", "loss_mask_stage2", "loss_cls_stage2"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    rh = model.roi_heads
    assert len(rh.stage_mask_heads) == 2 and len(rh.box_fusions) == 3 and len(rh.mask_fusions) == 3
    for head in list(rh.stage_mask_heads) + [rh.mask_head, rh.mpn]:
        assert head.predictor.weight.grad.abs().sum() > 0
    for fusion in list(rh.box_fusions) + list(rh.mask_fusions):  # Eq. 3: w_b^t, w_m^t on F_-^{t-1}
        assert fusion.conv.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        out = model([{k: v for k, v in d.items() if k != "instances"} for d in synthetic_batch(2, empty=())])
    for o in out:
        assert set(o["instances"].get_fields()) == {"pred_boxes", "scores", "pred_classes", "pred_masks"}


def test_cascade_dsg_box_head_t_uses_the_rois_of_mask_head_t_minus_1(mask_opts):
    cfg = make_cfg(*CASCADE, *mask_opts)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    rh = model.roi_heads
    seen = {"mask": [], "box": []}
    orig_stage, orig_mask = rh._run_stage, rh._run_mask_head

    def run_stage(features, proposals, stage, probs=None, prev_features=None):
        seen["box"].append(torch.cat([p.proposal_boxes.tensor for p in proposals]).clone())
        return orig_stage(features, proposals, stage, probs, prev_features)

    def run_mask(features, head, stage, boxes, prev):
        seen["mask"].append(torch.cat([b.tensor for b in boxes]).clone())
        return orig_mask(features, head, stage, boxes, prev)

    rh._run_stage, rh._run_mask_head = run_stage, run_mask
    with EventStorage(0):
        model(synthetic_batch(2, empty=()))
    assert len(seen["box"]) == 3 and len(seen["mask"]) == 3
    for t in (1, 2):
        torch.testing.assert_close(seen["box"][t], seen["mask"][t - 1])


def test_cascade_dsg_class_specific_mask_loss_uses_the_matched_class():
    """A stage labels RoIs with IoU in [0.5, its threshold) background (class = num_classes), but its mask head is
    trained on every RoI with IoU >= 0.5 (Sec. 4.1): with class-specific masks, on its matched ground truth's class
    channel (indexing the background class crashed: IndexError, index 5 out of bounds for 5 channels)."""
    heads = build_model(make_cfg(*CASCADE, "MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK", "False")).roi_heads
    p = _proposals_with_gt()
    p.set(MATCHED_CLASSES, torch.tensor([3, 3, 3, 1, 3]))
    p.gt_classes = torch.tensor([3, 5, 5, 1, 5])  # RoI 1 (IoU 0.5) is background under a 0.6 threshold
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 5, 28, 28, generator=g)
    with EventStorage(0):
        loss = heads.mask_loss_on_matched(heads.mask_head, logits, [p])
    keep = torch.tensor([0, 1, 3])  # IoU >= 0.5
    targets = p[keep].gt_masks.crop_and_resize(p[keep].proposal_boxes.tensor, 28).float()
    chosen = logits[keep, torch.tensor([3, 3, 1])]
    torch.testing.assert_close(loss, torch.nn.functional.binary_cross_entropy_with_logits(chosen, targets))


@pytest.mark.parametrize("training", [True, False], ids=["train", "test"])
def test_cascade_dsg_eq3_class_specific_guide_is_the_mask_of_the_rois_class(training):
    """Eq. 3: M^{t-1} guides box head t. With class-specific mask heads it is the map of each RoI's class: its
    matched ground truth's class in training, the class the box head that regressed it predicts at test time."""
    torch.manual_seed(0)
    cfg = make_cfg(*CASCADE, "MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK", "False")
    model = build_model(cfg).train(training)
    rh = model.roi_heads
    seen = {"probs": [], "logits": [], "rois": [], "pred": []}
    orig_stage, orig_mask, orig_label = rh._run_stage, rh._run_mask_head, rh._match_and_label_boxes

    def run_stage(features, proposals, stage, probs=None, prev_features=None):
        seen["probs"].append(probs)
        out = orig_stage(features, proposals, stage, probs, prev_features)
        seen["pred"].append(torch.cat(rh.box_predictor[stage].predict_probs(out, proposals)))
        return out

    def run_mask(features, head, stage, boxes, prev):
        out = orig_mask(features, head, stage, boxes, prev)
        seen["logits"].append(out[0])
        return out

    def label(proposals, stage, targets):
        out = orig_label(proposals, stage, targets)
        seen["rois"].append(out)
        return out

    rh._run_stage, rh._run_mask_head, rh._match_and_label_boxes = run_stage, run_mask, label
    batch = synthetic_batch(2, empty=())
    with EventStorage(0), torch.set_grad_enabled(training):
        model(batch if training else [{k: v for k, v in d.items() if k != "instances"} for d in batch])
    for t in (1, 2):
        logits = seen["logits"][t - 1]
        if training:
            classes = torch.cat([r.get(MATCHED_CLASSES) for r in seen["rois"][t - 1]])
        else:  # all RoIs go on at test time: the box head's best foreground class for each
            classes = seen["pred"][t - 1][:, :-1].argmax(dim=1)
        assert len(classes.unique()) > 1  # so channel 0 (or any single channel) would not match
        expected = logits[torch.arange(len(logits)), classes].sigmoid()
        torch.testing.assert_close(seen["probs"][t], expected)


def test_images_without_instances_train(mask_opts):
    for opts in ([], CASCADE):
        _, losses = train_step(make_cfg(*opts, *mask_opts), synthetic_batch(2, empty=(0, 1)))
        assert all(torch.isfinite(v) for v in losses.values())
        assert losses["loss_mpn"].item() == 0


def test_default_predictor_after_brief_training(tmp_path, datasets_dir):
    """80 iterations on two training images learn them: evaluated on those images, bbox AP >= 25 and segm AP >= 12
    (this machine, seed 0: 54.8 / 30.6; an untrained model scores about 0), and the median total loss of the last
    20 iterations is at most 0.75 of the first 20's (measured 1.41 / 2.48 = 0.57). Then DefaultPredictor runs the
    checkpoint."""
    import json

    from detectron2.engine import DefaultPredictor

    import train_net

    out = tmp_path / "out"
    opts = [
        "DATASETS.SYNTHETIC.NUM_TRAIN",
        "2",
        "DATASETS.TEST",
        "('synthetic_instances_train',)",
        "SOLVER.BASE_LR",
        "0.003",
        "SOLVER.MAX_ITER",
        "80",
        "OUTPUT_DIR",
        str(out),
    ]
    res = train_net.run(["--config-file", CONFIG, *TINY, *opts])
    assert res["bbox"]["AP"] >= 25 and res["segm"]["AP"] >= 12, res
    losses = [json.loads(line) for line in open(out / "metrics.json")]
    losses = {x["iteration"]: x["total_loss"] for x in losses if "total_loss" in x}
    assert losses[79] <= 0.75 * losses[19], losses  # 20-iteration medians (detectron2's JSONWriter)
    cfg = make_cfg("MODEL.WEIGHTS", str(out / "model_final.pth"))
    image = synthetic_batch(1, empty=())[0]["image"].permute(1, 2, 0).numpy()
    inst = DefaultPredictor(cfg)(image)["instances"]
    assert len(inst) > 0 and inst.pred_masks.shape[1:] == (96, 96) and inst.pred_masks.dtype == torch.bool
    assert set(inst.get_fields()) == {"pred_boxes", "scores", "pred_classes", "pred_masks"}
