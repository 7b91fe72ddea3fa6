"""Mask Point R-CNN's ROI heads in detectron2: contour targets, every Table II-VII switch trains a step,
inference outputs, MASK_FROM_CONTOUR (Sec. IV-E), and a briefly trained model through DefaultPredictor."""
import os

import numpy as np
import pytest
import torch

from tests.utils import TINY, importorskip_detectron2, synthetic_batch

importorskip_detectron2()

from detectron2.modeling import build_model  # noqa: E402
from detectron2.structures import BitMasks, PolygonMasks  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from instseg.config import get_cfg  # noqa: E402
from maskpoint import sample_contour_points  # noqa: E402
from maskpoint.modeling import MaskPointROIHeads, contour_keypoints, contour_polygon_masks  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "configs", "MaskPoint", "mask_point_rcnn_R_18_FPN_synthetic.yaml")


def make_cfg(*opts):
    cfg = get_cfg()
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list(TINY + ["MODEL.MASK_POINT.NUM_POINTS", "16", *opts])
    return cfg


def train_step(cfg, batch):
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    with EventStorage(0):
        losses = model(batch)
    sum(losses.values()).backward()
    return model, losses


def test_defaults_are_the_papers():
    mp = get_cfg().MODEL.MASK_POINT
    assert (mp.NUM_POINTS, mp.WITH_CENTER, mp.CENTER, mp.SAMPLING) == (100, True, "mass", "uniform")
    assert (mp.FUSION_STRUCTURE, mp.REDUCTION, mp.FUSION) == ("b", "conv", "mul")
    assert mp.KEYPOINT_LOSS_WEIGHT == 0.5 and mp.MASK_FROM_CONTOUR is False


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
    batch = synthetic_batch(2, empty=(1,))
    assert len(batch[1]["instances"]) == 0 and len(batch[0]["instances"]) > 0
    model, losses = train_step(cfg, batch)
    assert isinstance(model.roi_heads, MaskPointROIHeads)
    assert {"loss_mask", "loss_keypoint", "loss_cls", "loss_box_reg"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    # Eq. 3: alpha = 0.5 times detectron2's keypoint loss
    assert model.roi_heads.keypoint_head.loss_weight == 0.5
    assert model.roi_heads.keypoint_head.num_keypoints == 17
    head = model.roi_heads.keypoint_head
    assert head.conv_fcn1.weight.grad.abs().sum() > 0
    # the mask loss reaches the fusion conv (Eq. 1) through Eq. 2
    assert model.roi_heads.fusion.reduce_conv.weight.grad.abs().sum() > 0


def test_a_batch_with_no_instance_at_all_trains():
    _, losses = train_step(make_cfg(), synthetic_batch(2, empty=(0, 1)))
    assert losses["loss_mask"].item() == 0 and losses["loss_keypoint"].item() == 0


SWITCHES = (
    [("MODEL.MASK_POINT.FUSION_STRUCTURE", s) for s in "abcd"]  # Table II
    + [("MODEL.MASK_POINT.REDUCTION", r) for r in ("max", "avg")]  # Table III
    + [("MODEL.MASK_POINT.FUSION", f) for f in ("add", "max", "none")]  # Table IV
    + [("MODEL.MASK_POINT.NUM_POINTS", "50")]  # Table V
    + [("MODEL.MASK_POINT.SAMPLING", "corner")]  # Table VI
    + [("MODEL.MASK_POINT.WITH_CENTER", "False"), ("MODEL.MASK_POINT.KEYPOINT_LOSS_WEIGHT", "1.0"),
       ("MODEL.MASK_POINT.CENTER", "box")]  # Table VII
    + [("MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK", "False")]
)


@pytest.mark.parametrize("key,value", SWITCHES, ids=[f"{k.split('.')[-1]}={v}" for k, v in SWITCHES])
def test_every_ablation_switch_builds_and_trains_a_step(key, value):
    cfg = make_cfg(key, value)
    model, losses = train_step(cfg, synthetic_batch(2, empty=()))
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_keypoint"].item() > 0
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


def test_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match="FUSION_STRUCTURE"):
        build_model(make_cfg("MODEL.MASK_POINT.FUSION_STRUCTURE", "e"))
    with pytest.raises(ValueError, match="MASK_ON"):
        build_model(make_cfg("MODEL.MASK_ON", "False"))
    with pytest.raises(ValueError, match="NUM_POINTS"):
        build_model(make_cfg("MODEL.MASK_POINT.NUM_POINTS", "0"))


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


def test_default_predictor_after_brief_training(tmp_path, datasets_dir):
    import train_net
    from detectron2.engine import DefaultPredictor

    out = tmp_path / "out"
    opts = [*TINY, "MODEL.MASK_POINT.NUM_POINTS", "16", "SOLVER.MAX_ITER", "3", "OUTPUT_DIR", str(out)]
    res = train_net.run(["--config-file", CONFIG, *opts])
    assert 0.0 <= res["segm"]["AP"] <= 100.0 and 0.0 <= res["bbox"]["AP"] <= 100.0
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
