"""MaskPlus's detectron2 heads (``maskplus.modeling``) against the paper: contextual fusion (Sec. 3.1), the techniques
in the mask head (Sec. 3.2-3.4), biased training (Sec. 3.5), MaskPlus+ (Sec. 4.9) and every table row."""

import pytest
import torch
from torch.nn import functional as F

from tests.utils import (
    TINY,
    config_from,
    images_only,
    importorskip_detectron2,
    predict_alike,
    seeded_model,
    synthetic_batch,
)

importorskip_detectron2()

from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402
from torchvision.ops import roi_align  # noqa: E402

from instseg.registry import load_methods  # noqa: E402
from maskplus.config import TABLE_ROWS, table_opts  # noqa: E402
from maskplus.layers import ImprovedBoundaryRefinement, OriginalBoundaryRefinement  # noqa: E402
from maskplus.modeling import (  # noqa: E402
    QUASI_LOSS,
    MaskPlusCascadeROIHeads,
    MaskPlusROIHeads,
    biased_alpha,
    switch_iteration,
)

load_methods()

SYN = "configs/MaskPlus/maskplus_R_18_FPN_synthetic.yaml"
SYN_PLUS = "configs/MaskPlus/maskplus_plus_cascade_R_18_FPN_synthetic.yaml"
BASELINE = "configs/Baselines/mask_rcnn_R_18_FPN_synthetic.yaml"
# the Table 1 rows state the paper's widths, which end in the paper's 256 FPN channels
WIDE_FPN = ["MODEL.FPN.OUT_CHANNELS", "256"]


def _cfg(path=SYN, opts=()):
    return config_from(path, opts)


def _model(path=SYN, opts=(), seed=0):
    return seeded_model(path, opts, seed)


_images = images_only


def _row_opts(row):
    return table_opts(row) + (WIDE_FPN if "CONTEXT_CONV_DIMS" in TABLE_ROWS[row] else [])


@pytest.mark.parametrize("row", [*TABLE_ROWS, "maskplus_plus"])
def test_tables_1_to_6_every_row_trains_with_empty_images_and_predicts(row):
    """Every row of Tables 1-6 (each technique alone, Mask R-CNN, MaskPlus) and MaskPlus+ (Sec. 4.9): a training step
    with an image without instances, one with a batch without any instance, then prediction."""
    path, opts = (SYN_PLUS, []) if row == "maskplus_plus" else (SYN, _row_opts(row))
    model = _model(path, opts)
    values = {**_cfg(path, opts).MODEL.MASKPLUS}
    heads, head = model.roi_heads, model.roi_heads.mask_head
    # the row's switches reach the modules they build
    assert isinstance(heads, MaskPlusCascadeROIHeads if row == "maskplus_plus" else MaskPlusROIHeads)
    assert (heads.context_fusion is not None) == values["CONTEXT_FUSION_ON"]
    if values["CONTEXT_FUSION_ON"]:
        convs = [m for m in heads.context_fusion.convs if isinstance(m, torch.nn.Conv2d)]
        assert [c.out_channels for c in convs] == list(values["CONTEXT_CONV_DIMS"])
    assert (head.pyramid is not None) == values["DECONV_PYRAMID_ON"]
    refinement = {"none": type(None), "original": OriginalBoundaryRefinement, "improved": ImprovedBoundaryRefinement}
    assert type(head.refinement) is refinement[values["BOUNDARY_REFINEMENT"]]
    assert (head.quasi is not None) == (values["QUASI_MULTITASK"] != "none")
    assert heads.biased_alpha == values["BIASED_ALPHA"]
    with EventStorage(0):
        for empty in ((1,), (0, 1)):
            model.zero_grad()
            losses = model(synthetic_batch(2, empty=empty))
            assert all(torch.isfinite(v) for v in losses.values()), losses
            sum(losses.values()).backward()
            if empty == (1,):  # every technique's parameters learn from the step with instances
                for module in (heads.context_fusion, head.pyramid, head.refinement, head.quasi):
                    if module is not None:
                        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    assert (QUASI_LOSS in losses) == (values["QUASI_MULTITASK"] != "none")
    model.eval()
    with torch.no_grad():
        out = model(_images(synthetic_batch(2, empty=())))
    for o in out:
        inst = o["instances"]
        assert len(inst) > 0 and inst.pred_masks.shape[1:] == (96, 96)


def _two_sizes_batch():
    """Two images of different sizes (96 x 80 and 64 x 96), with instances, for the context tests."""
    batch = synthetic_batch(2, empty=())
    out = []
    for d, (h, w) in zip(batch, [(96, 80), (64, 96)]):
        inst = d["instances"]
        keep = (inst.gt_boxes.tensor[:, 2] <= w) & (inst.gt_boxes.tensor[:, 3] <= h)
        new = Instances((h, w))
        new.gt_boxes = Boxes(inst.gt_boxes.tensor[keep])
        new.gt_classes = inst.gt_classes[keep]
        new.gt_masks = type(inst.gt_masks)(inst.gt_masks.tensor[keep][:, :h, :w])
        out.append({"image": d["image"][:, :h, :w].contiguous(), "height": h, "width": w, "instances": new})
    return out


@pytest.mark.parametrize("training", [True, False], ids=["train", "test"])
def test_sec31_contextual_fusion_pools_one_full_image_box_per_image_and_adds_it_to_each_roi(training):
    """Sec. 3.1: one full-image-size proposal per image on the FPN level, RoIAligned like the mask RoIs (14x14),
    3x3 convs, and the result added to every RoI feature of that image (hand-checked on two images of different
    sizes: the box is each image's own size, not the padded batch's)."""
    model = _model(SYN, table_opts("context_fusion") + ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"])
    heads = model.roi_heads
    seen = {}
    heads.context_pooler.register_forward_hook(lambda m, i, o: seen.update(ctx_in=i, ctx=o))
    heads.mask_pooler.register_forward_hook(lambda m, i, o: seen.update(pooled=o))
    heads.mask_head.register_forward_pre_hook(lambda m, i: seen.update(head_in=i[0], inst=i[1]))
    batch = _two_sizes_batch()
    model.train(training)
    with EventStorage(0), torch.no_grad():
        model(batch if training else _images(batch))
    feats, boxes = seen["ctx_in"]
    assert [b.tensor.tolist() for b in boxes] == [[[0.0, 0.0, 80.0, 96.0]], [[0.0, 0.0, 96.0, 64.0]]]
    # the context is RoIAlign (ROIAlignV2: aligned, sampling ratio 0) of P2 (stride 4) over each whole image
    p2 = feats[0]
    assert p2.shape[-2:] == (96 // 4, 96 // 4)  # the padded batch's P2
    rois = torch.tensor([[0, 0, 0, 80, 96], [1, 0, 0, 96, 64]], dtype=p2.dtype)
    torch.testing.assert_close(seen["ctx"], roi_align(p2, rois, 14, 0.25, 0, aligned=True))
    # every RoI of image i gets the same added map: the conv stack's output on image i's context
    added = heads.context_fusion.convs(seen["ctx"])
    counts = [len(x) for x in seen["inst"]]
    assert min(counts) > 0
    diff = seen["head_in"] - seen["pooled"]
    for i, rows in enumerate(torch.split(diff, counts)):
        torch.testing.assert_close(rows, added[i].expand_as(rows), rtol=1e-4, atol=1e-4)  # (a + c) - a
    assert not torch.allclose(added[0], added[1])


def test_sec31_context_from_p5_pools_p5():
    """CONTEXT_IN_FEATURE p5 ("FPN last-layer features" read as the coarsest level): the full-image box on P5."""
    model = _model(SYN, table_opts("context_p5")).eval()
    seen = {}
    model.roi_heads.context_pooler.register_forward_hook(lambda m, i, o: seen.update(ctx_in=i, ctx=o))
    with torch.no_grad():
        model(_images(synthetic_batch(1, empty=())))
    p5 = seen["ctx_in"][0][0]
    assert p5.shape[-2:] == (3, 3)  # 96 / 32
    torch.testing.assert_close(seen["ctx"], roi_align(p5, torch.tensor([[0.0, 0, 0, 96, 96]]), 14, 1 / 32, 0, True))


def test_all_techniques_off_is_mask_rcnn_with_the_same_weights():
    """Every table's first row: with the five techniques off, MaskPlus's heads are Mask R-CNN's: the same parameter
    names (Mask R-CNN's weights load strictly), the same predictions and the same training losses."""
    base = _model(BASELINE, seed=1)
    mp = _model(SYN, table_opts("mask_rcnn"), seed=2)
    assert set(mp.state_dict()) == set(base.state_dict())
    mp.load_state_dict(base.state_dict(), strict=True)
    for x, y in predict_alike(base, mp):
        assert len(x) > 0
        torch.testing.assert_close(x.pred_boxes.tensor, y.pred_boxes.tensor, rtol=0, atol=0)
        assert torch.equal(x.pred_masks, y.pred_masks)
    losses = []
    for m in (base, mp):
        m.train()
        torch.manual_seed(5)
        with EventStorage(0):
            losses.append(m(synthetic_batch(2, empty=(1,))))
    assert losses[0].keys() == losses[1].keys()
    for k in losses[0]:
        torch.testing.assert_close(losses[0][k], losses[1][k], rtol=0, atol=0)


@pytest.mark.parametrize("scale,side", [("0.5x", 14), ("2x", 56)])
def test_sec34_quasi_multitask_branch_trains_at_its_scale_and_never_runs_at_inference(scale, side):
    """Sec. 3.4 / 4.7, Table 4: the branch parallel to the mask head (own convs, one deconv less or more) is trained
    with a mask loss against targets of its own size (14x14 or 56x56); at inference it is never called and the
    predictions are those of the same model without it."""
    row = "table4_quasi_half" if scale == "0.5x" else "table4_quasi_double"
    weight = 1.0 if scale == "0.5x" else 0.25  # QUASI_LOSS_WEIGHT (the paper gives none: 1 by default)
    model = _model(SYN, table_opts(row) + ["MODEL.MASKPLUS.QUASI_LOSS_WEIGHT", str(weight)])
    head = model.roi_heads.mask_head
    seen = {}
    calls = []

    def hook(module, inputs, output):
        calls.append(1)
        seen["logits"] = output

    head.quasi.register_forward_hook(hook)
    head.register_forward_pre_hook(lambda m, i: seen.update(inst=i[1]))
    with EventStorage(0):
        losses = model(synthetic_batch(2, empty=(1,)))
    assert seen["logits"].shape[-2:] == (side, side)
    # the loss by hand: BCE of the (class-agnostic) logits with the matched masks cropped to each RoI at side x side
    targets = torch.cat(
        [x.gt_masks.crop_and_resize(x.proposal_boxes.tensor, side) for x in seen["inst"] if len(x)]
    ).float()
    expected = weight * F.binary_cross_entropy_with_logits(seen["logits"][:, 0], targets)
    torch.testing.assert_close(losses[QUASI_LOSS], expected)

    calls.clear()
    plain = _model(SYN, table_opts("mask_rcnn"))
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if ".quasi." not in k}, strict=True)
    images = _images(synthetic_batch(2, empty=()))
    model.eval()
    plain.eval()
    with torch.no_grad():
        a, b = model(images), plain(images)
    assert not calls
    for x, y in zip(a, b):
        assert torch.equal(x["instances"].pred_masks, y["instances"].pred_masks)


def test_sec34_checkpoint_without_the_branch_loads_without_missing_keys():
    """The branch is a scaffold removed after training: weights without it load (for --eval-only, whose model is
    loaded before it is put in eval mode, as for DefaultPredictor) with no missing-key warning."""
    model = _model(SYN, table_opts("table4_quasi_half"))
    state = {k: v for k, v in model.state_dict().items() if ".quasi." not in k}
    for training in (True, False):
        model.train(training)
        incompatible = DetectionCheckpointer(model)._load_model({"model": dict(state)})
        assert incompatible.missing_keys == []
    del state["roi_heads.mask_head.predictor.weight"]  # other missing keys are still reported
    incompatible = DetectionCheckpointer(model)._load_model({"model": dict(state)})
    assert incompatible.missing_keys == ["roi_heads.mask_head.predictor.weight"]


def test_table4_half_mask_row_is_the_main_head_at_14x14():
    """Table 4's "0.5x mask" row: the main head without its deconvolution predicts 14x14 logits."""
    model = _model(SYN, table_opts("table4_half_mask"))
    head = model.roi_heads.mask_head
    assert head.deconv is None and not any(k.startswith("roi_heads.mask_head.deconv") for k in model.state_dict())
    seen = {}
    head.predictor.register_forward_hook(lambda m, i, o: seen.update(logits=o))
    with EventStorage(0):
        model(synthetic_batch(2, empty=(1,)))
    assert seen["logits"].shape[-2:] == (14, 14)


def test_sec35_biased_alpha_schedule():
    """Sec. 3.5: alpha = 1.5 before the switch point, 1 from it on; BIASED_UNTIL is a fraction of MAX_ITER."""
    assert switch_iteration(0.5, 1500) == 750 and switch_iteration(0.6, 5) == 3 and switch_iteration(1.0, 9) == 9
    assert [biased_alpha(i, 1.5, 3) for i in range(5)] == [1.5, 1.5, 1.5, 1.0, 1.0]
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="BIASED_UNTIL"):
            switch_iteration(bad, 10)


def test_sec35_biased_training_scales_every_mask_loss_by_alpha_until_the_switch():
    """L = Lcls + Lbox + alpha * Lmask: at the iteration before the switch the mask losses (main and quasi) are 1.5x
    those at the switch, the detection losses unchanged."""
    model = _model(SYN, table_opts("maskplus") + ["SOLVER.MAX_ITER", "10"])  # switch at 5
    out = {}
    for it in (4, 5):
        torch.manual_seed(3)
        with EventStorage(it) as storage:
            out[it] = model(synthetic_batch(2, empty=(1,)))
            assert storage.history("maskplus/alpha").latest() == (1.5 if it == 4 else 1.0)
    for k in out[4]:
        factor = 1.5 if k.startswith("loss_mask") else 1.0
        torch.testing.assert_close(out[4][k], factor * out[5][k])
    assert {"loss_mask", QUASI_LOSS} <= set(out[4])


def test_sec35_alpha_follows_the_trainers_iteration_after_resume(tmp_path, datasets_dir):
    """--resume after a checkpoint continues alpha's schedule from the checkpoint's iteration (not from 0)."""
    from instseg.engine import Trainer

    opts = [
        *TINY,
        "SOLVER.MAX_ITER",
        "5",
        "SOLVER.CHECKPOINT_PERIOD",
        "2",
        "MODEL.MASKPLUS.BIASED_UNTIL",
        "0.6",  # switch at iteration 3 of 5
        "TEST.EVAL_PERIOD",
        "0",
        "DATASETS.TEST",
        "()",
        "OUTPUT_DIR",
        str(tmp_path),
    ]
    cfg = _cfg(SYN, opts)

    def alphas(resume):
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=resume)
        trainer.train()
        return {it: a for a, it in trainer.storage.history("maskplus/alpha").values()}

    assert alphas(False) == {0: 1.5, 1: 1.5, 2: 1.5, 3: 1.0, 4: 1.0}
    (tmp_path / "last_checkpoint").write_text("model_0000001.pth")  # as if killed after iteration 1's checkpoint
    assert alphas(True) == {2: 1.5, 3: 1.0, 4: 1.0}


@pytest.mark.parametrize(
    "opts,message",
    [
        (["MODEL.MASKPLUS.BOUNDARY_REFINEMENT", "dense"], "BOUNDARY_REFINEMENT must be one of"),
        (["MODEL.MASKPLUS.QUASI_MULTITASK", "4x"], "QUASI_MULTITASK must be one of"),
        (["MODEL.MASKPLUS.MASK_SCALE", "2x"], "MASK_SCALE must be one of"),
        (["MODEL.MASKPLUS.BIASED_ALPHA", "0.0"], "BIASED_ALPHA must be > 0"),
        (["MODEL.MASKPLUS.BIASED_UNTIL", "-0.5"], "BIASED_UNTIL must be a fraction"),
        (["MODEL.MASKPLUS.BIASED_UNTIL", "1.5"], "BIASED_UNTIL must be a fraction"),
        (["MODEL.MASKPLUS.MASK_SCALE", "0.5x"], "would add nothing"),  # with the default 0.5x branch
        (["MODEL.MASKPLUS.CONTEXT_CONV_DIMS", "[180, 128]"], "the last conv must have their 64 channels"),
        (["MODEL.MASKPLUS.CONTEXT_IN_FEATURE", "res5"], "is not a backbone output"),
        (["MODEL.ROI_MASK_HEAD.NAME", "MaskRCNNConvUpsampleHead"], "need(s) MODEL.ROI_MASK_HEAD.NAME=MaskPlusMaskHead"),
        (["MODEL.ROI_HEADS.NAME", "StandardROIHeads"], "CONTEXT_FUSION_ON, BIASED_ALPHA need(s) ROI heads"),
        (["MODEL.MASK_ON", "False"], "which MODEL.MASK_ON=False removes"),
    ],
)
def test_settings_that_cannot_work_stop_at_build_time(opts, message):
    with pytest.raises(ValueError) as e:
        _model(SYN, opts)
    assert message in str(e.value)


def test_without_masks_and_every_technique_off_is_faster_rcnn():
    model = _model(SYN, table_opts("mask_rcnn") + ["MODEL.MASK_ON", "False"]).eval()
    with torch.no_grad():
        out = model(_images(synthetic_batch(1, empty=())))
    assert not out[0]["instances"].has("pred_masks")


def test_inference_with_no_detection_returns_empty_instances():
    """No RoI survives the score threshold: MaskPlus predicts empty Instances (context computed, nothing added)."""
    model = _model(SYN, ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "1.01"]).eval()
    with torch.no_grad():
        out = model(_images(synthetic_batch(1, empty=())))
    assert len(out[0]["instances"]) == 0 and out[0]["instances"].pred_masks.shape[0] == 0


def test_train_net_trains_then_eval_only_and_default_predictor(tmp_path, datasets_dir):
    """MaskPlus through detectron2's tools: train_net.py trains (all five techniques), --eval-only evaluates the
    checkpoint with the COCO evaluator, and DefaultPredictor predicts masks from it."""
    import numpy as np
    from detectron2.engine import DefaultPredictor

    import train_net

    out = tmp_path / "out"
    opts = [*TINY, "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", str(out)]
    res = train_net.run(["--config-file", SYN, *opts])
    assert {"bbox", "segm"} <= set(res)
    weights = str(out / "model_final.pth")
    res2 = train_net.run(["--config-file", SYN, "--eval-only", *opts, "MODEL.WEIGHTS", weights])
    assert res2["segm"]["AP"] == pytest.approx(res["segm"]["AP"])
    cfg = _cfg(SYN, [*TINY, "MODEL.WEIGHTS", weights])
    image = synthetic_batch(1, empty=())[0]["image"].permute(1, 2, 0).numpy()[:, :, ::-1]  # BGR, HWC
    inst = DefaultPredictor(cfg)(np.ascontiguousarray(image))["instances"]
    assert len(inst) > 0 and inst.pred_masks.shape[1:] == (96, 96)


@pytest.mark.parametrize("row", ["table3_original_refinement", "table3_improved_refinement"])
def test_table3_refinement_refines_the_predictors_logits(row):
    """Sec. 3.3: the refinement runs on the mask logits: its input is the predictor's output and the head's output is
    its output (the improved block starts as the identity, so predictions alone could not tell)."""
    model = _model(SYN, table_opts(row)).eval()
    head = model.roi_heads.mask_head
    seen = {}
    head.predictor.register_forward_hook(lambda m, i, o: seen.update(logits=o))
    head.refinement.register_forward_hook(lambda m, i, o: seen.update(ref_in=i[0], ref_out=o))
    x = torch.randn(3, 64, 14, 14)
    with torch.no_grad():
        out = head.layers(x)
    assert seen["ref_in"] is seen["logits"] and out is seen["ref_out"]
