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

from dsg.modeling import (  # noqa: E402
    BinApproxShapeGuidedPooler,
    CascadeDSGROIHeads,
    DSGROIHeads,
    mpn_training_rois,
    proposal_indices,
)
from dsg.config import TABLE1_ROWS, TABLE1_SWITCHES, table1_opts  # noqa: E402
from instseg.config import get_cfg  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "configs", "DSG", "dsg_R_18_FPN_synthetic.yaml")
CASCADE = ["MODEL.ROI_HEADS.NAME", "CascadeDSGROIHeads", "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", "True"]

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


def test_table1_rows_add_one_component_each():
    assert TABLE1_ROWS == (
        (False, False, False, False, False),
        (True, False, False, False, False),
        (True, True, False, False, False),
        (True, True, True, False, False),
        (True, True, True, True, False),
        (True, True, True, True, True),
    )
    assert table1_opts(2) == ["MODEL.DSG.MRPN_ON", "True", "MODEL.DSG.FUSE_MASK", "True",
                              "MODEL.DSG.SG_ROI_ALIGN_BOX", "False", "MODEL.DSG.FUSE_BOX", "False",
                              "MODEL.DSG.SG_ROI_ALIGN_MASK", "False"]


def test_defaults_are_the_papers_final_choice():
    dsg = get_cfg().MODEL.DSG
    assert [dsg[k] for k in TABLE1_SWITCHES] == list(TABLE1_ROWS[4])
    assert (dsg.SG_MODE, dsg.DETACH_PROBS, dsg.MPN_IOU_THRESHOLD) == ("exact", False, 0.5)
    assert (dsg.MPN_NUM_CONV, dsg.MPN_CONV_DIM, dsg.MPN_POOLER_RESOLUTION) == (4, 256, 14)


@pytest.mark.parametrize("index", range(len(TABLE1_ROWS)), ids=[f"row{i}" for i in range(len(TABLE1_ROWS))])
def test_dsg_table1_rows_build_and_train_a_step(index):
    row = TABLE1_ROWS[index]
    cfg = make_cfg(*table1_opts(index))
    model, losses = train_step(cfg, synthetic_batch(2, empty=(1,)))
    assert isinstance(model.roi_heads, DSGROIHeads)
    assert ("loss_mpn" in losses) == row[0]
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    rh = model.roi_heads
    assert (rh.box_fusion is not None) == row[3] and (rh.mask_fusion is not None) == row[1]
    assert rh.sg_box == row[2] and rh.sg_mask == row[4]
    if row[0]:
        assert rh.mpn.predictor.weight.grad.abs().sum() > 0
    # and it predicts standard Instances
    model.eval()
    with torch.no_grad():
        out = model([{k: v for k, v in d.items() if k != "instances"} for d in synthetic_batch(1, empty=())])
    assert set(out[0]["instances"].get_fields()) == {"pred_boxes", "scores", "pred_classes", "pred_masks"}


@pytest.mark.parametrize("sg_mask", [False, True])
def test_light_mpn_7x7_rois_trains_and_predicts(sg_mask):
    """configs/DSG/dsg_light_*: the MPN on 7x7 RoIs gives P 14x14 (guiding the 7x7 box pooling and, with
    SgRA_M, the 14x14 mask pooling) and F_- 7x7, which F_M brings to the mask head's 14x14 features."""
    light = os.path.join(ROOT, "configs", "DSG", "dsg_light_R_18_FPN_synthetic.yaml")
    cfg = get_cfg()
    cfg.merge_from_file(light)
    cfg.merge_from_list(TINY + ["MODEL.DSG.SG_ROI_ALIGN_MASK", str(sg_mask)])
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


def test_dsg_row0_is_mask_rcnn():
    cfg = make_cfg(*table1_opts(0))
    model = build_model(cfg)
    base = get_cfg()
    base.merge_from_file(os.path.join(ROOT, "configs", "Baselines", "mask_rcnn_R_18_FPN_synthetic.yaml"))
    base.merge_from_list(TINY)
    ref = build_model(base)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in ref.parameters())


def test_switches_need_mrpn():
    with pytest.raises(ValueError, match="MRPN_ON"):
        build_model(make_cfg("MODEL.DSG.MRPN_ON", "False"))  # the other defaults are on
    with pytest.raises(ValueError, match="SG_MODE"):
        build_model(make_cfg("MODEL.DSG.SG_MODE", "approx"))


@pytest.mark.parametrize("detach", [False, True])
def test_dsg_sec34_box_loss_reaches_the_mpn_through_sgroialign_unless_detached(detach):
    # SgRA_B only (no fusion), so the box losses can reach the MPN through P alone
    cfg = make_cfg(*table1_opts(3), "MODEL.DSG.FUSE_MASK", "False", "MODEL.DSG.DETACH_PROBS", str(detach))
    model, losses = train_step(cfg, synthetic_batch(2, empty=()))
    (losses["loss_cls"] + losses["loss_box_reg"]).backward()
    grad = model.roi_heads.mpn.predictor.weight.grad
    if detach:
        assert grad is None or grad.abs().sum() == 0
    else:
        assert grad.abs().sum() > 0


def test_dsg_sg_mode_bin_approx_is_roialign_times_one_plus_bin_mean():
    scales = (1 / 4, 1 / 8)
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(1, 3, 40, 40, generator=g), torch.randn(1, 3, 20, 20, generator=g)]
    boxes = [Boxes(torch.tensor([[4.0, 6.0, 60.0, 50.0], [10.0, 10.0, 150.0, 140.0]]))]
    probs = torch.rand(2, 28, 28, generator=g)
    approx = BinApproxShapeGuidedPooler(7, scales, 0, "ROIAlignV2")(feats, boxes, probs)
    plain = ROIPooler(7, scales, 0, "ROIAlignV2")(feats, boxes)
    torch.testing.assert_close(approx, plain * (1 + probs.reshape(2, 1, 7, 4, 7, 4).mean((3, 5))))
    cfg = make_cfg("MODEL.DSG.SG_MODE", "bin_approx")
    _, losses = train_step(cfg, synthetic_batch(2, empty=()))
    assert torch.isfinite(losses["loss_cls"])


def _proposals_with_gt():
    m0 = torch.zeros(40, 40, dtype=torch.bool)
    m0[5:25, 5:15] = True
    m1 = torch.zeros(40, 40, dtype=torch.bool)
    m1[20:35, 20:38] = True
    p = Instances((40, 40))
    p.proposal_boxes = Boxes(torch.tensor([
        [5.0, 5.0, 15.0, 25.0],    # = gt 0 (IoU 1)
        [5.0, 5.0, 15.0, 15.0],    # half of gt 0 (IoU 0.5)
        [5.0, 5.0, 15.0, 12.0],    # IoU 0.35 with gt 0
        [20.0, 20.0, 38.0, 35.0],  # = gt 1
        [0.0, 0.0, 3.0, 3.0],      # background
    ]))
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


def test_dsg_mask_branch_gets_the_features_of_its_proposal():
    torch.manual_seed(0)
    cfg = make_cfg("MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0")
    model = build_model(cfg).eval()
    batch = [{k: v for k, v in d.items() if k != "instances"} for d in synthetic_batch(1, empty=())]
    captured = {}
    heads = model.roi_heads
    orig_fwd_box, orig_fwd_mask = heads._forward_box, heads._forward_mask

    def fwd_box(features, proposals):
        captured["proposals"] = proposals
        captured["features"] = features
        return orig_fwd_box(features, proposals)

    def fwd_mask(features, instances):
        captured["carried"] = instances[0].get("mpn_features").clone()
        captured["boxes"] = instances[0].pred_boxes.tensor.clone()
        return orig_fwd_mask(features, instances)

    heads._forward_box, heads._forward_mask = fwd_box, fwd_mask
    with torch.no_grad():
        out = model(batch)[0]["instances"]
        props = captured["proposals"][0]
        _, feats = heads.run_mpn(captured["features"], [props.proposal_boxes])
    assert len(out) > 0 and not out.has("mpn_features")
    # each detection's carried F_- is the F_- of one proposal, and that proposal regressed to its box
    carried = captured["carried"]
    dist = (carried.flatten(1)[:, None] - feats.flatten(1)[None]).abs().amax(-1)
    assert torch.all(dist.min(dim=1).values < 1e-5)


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


def test_cascade_dsg_eq3_trains_a_step_and_predicts():
    cfg = make_cfg(*CASCADE)
    model, losses = train_step(cfg, synthetic_batch(2, empty=(1,)))
    assert isinstance(model.roi_heads, CascadeDSGROIHeads)
    assert {"loss_mpn", "loss_mask_stage0", "loss_mask_stage1", "loss_mask_stage2", "loss_cls_stage2"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    rh = model.roi_heads
    assert len(rh.stage_mask_heads) == 2 and len(rh.box_fusions) == 3 and len(rh.mask_fusions) == 3
    for head in list(rh.stage_mask_heads) + [rh.mask_head, rh.mpn]:
        assert head.predictor.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        out = model([{k: v for k, v in d.items() if k != "instances"} for d in synthetic_batch(2, empty=())])
    for o in out:
        assert set(o["instances"].get_fields()) == {"pred_boxes", "scores", "pred_classes", "pred_masks"}


def test_cascade_dsg_box_head_t_uses_the_rois_of_mask_head_t_minus_1():
    cfg = make_cfg(*CASCADE)
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


def test_images_without_instances_train():
    for opts in ([], CASCADE):
        _, losses = train_step(make_cfg(*opts), synthetic_batch(2, empty=(0, 1)))
        assert all(torch.isfinite(v) for v in losses.values())
        assert losses["loss_mpn"].item() == 0


def test_default_predictor_after_brief_training(tmp_path, datasets_dir):
    import train_net
    from detectron2.engine import DefaultPredictor

    out = tmp_path / "out"
    res = train_net.run(["--config-file", CONFIG, *TINY, "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", str(out)])
    assert 0.0 <= res["segm"]["AP"] <= 100.0
    cfg = make_cfg("MODEL.WEIGHTS", str(out / "model_final.pth"))
    image = synthetic_batch(1, empty=())[0]["image"].permute(1, 2, 0).numpy()
    inst = DefaultPredictor(cfg)(image)["instances"]
    assert len(inst) > 0 and inst.pred_masks.shape[1:] == (96, 96) and inst.pred_masks.dtype == torch.bool
    assert set(inst.get_fields()) == {"pred_boxes", "scores", "pred_classes", "pred_masks"}
