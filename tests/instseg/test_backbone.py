"""instseg.modeling.build_basic_resnet_fpn_backbone: ResNet-18/34 of any width with FPN."""

import os

import pytest
import torch

from tests.utils import importorskip_detectron2

importorskip_detectron2()

from detectron2.layers import ShapeSpec  # noqa: E402
from detectron2.modeling import build_backbone  # noqa: E402

from instseg.config import get_cfg  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cfg(name, depth=18, width=64):
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(ROOT, "configs", "Baselines", "mask_rcnn_R_18_FPN_synthetic.yaml"))
    cfg.MODEL.BACKBONE.NAME = name
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = width
    return cfg


@pytest.mark.parametrize("depth", [18, 34])
def test_width_64_is_detectron2s_resnet_fpn(depth):
    ours = build_backbone(_cfg("build_basic_resnet_fpn_backbone", depth))
    theirs = build_backbone(_cfg("build_resnet_fpn_backbone", depth))
    assert ours.output_shape() == theirs.output_shape()
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [(n, p.shape) for n, p in theirs.named_parameters()]
    # same parameters -> same features
    ours.load_state_dict(theirs.state_dict())
    ours.eval(), theirs.eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_half_width_has_a_quarter_of_the_backbone():
    full = build_backbone(_cfg("build_basic_resnet_fpn_backbone", width=64)).bottom_up
    half = build_backbone(_cfg("build_basic_resnet_fpn_backbone", width=32))
    stages = {n: p.numel() for n, p in half.bottom_up.named_parameters() if not n.startswith("stem")}
    stages_full = {n: p.numel() for n, p in full.named_parameters() if not n.startswith("stem")}
    assert sum(stages.values()) / sum(stages_full.values()) == pytest.approx(0.25, rel=0.02)
    shapes = half.output_shape()
    assert {k: v.stride for k, v in shapes.items()} == {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}
    assert {v.channels for v in shapes.values()} == {64}  # the FPN keeps its width
    out = half(torch.randn(2, 3, 64, 64))
    assert out["p2"].shape == (2, 64, 16, 16) and out["p6"].shape == (2, 64, 1, 1)
    assert half.bottom_up.res5[0].conv1.out_channels == 256


@pytest.mark.parametrize("depth,width,match", [(50, 64, "DEPTH 18 or 34"), (18, 0, "RES2_OUT_CHANNELS")])
def test_bad_config(depth, width, match):
    with pytest.raises(ValueError, match=match):
        build_backbone(_cfg("build_basic_resnet_fpn_backbone", depth, width), ShapeSpec(channels=3))


def test_timm_hrnet_backbone_returns_the_raw_branches_with_their_shapes():
    """CASNet's backbone (Sec. III-A): timm's HRNet wrapped, outputs at 1/2 (the stem), 1/4 and 1/8 by default; every
    output's channels and stride as output_shape says, and the same tensors as timm's own model on the same weights."""
    pytest.importorskip("timm", reason="timm is in requirements.txt (make venv installs it)")
    import timm

    cfg = get_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_timm_hrnet_backbone"
    cfg.MODEL.HRNET.NAME = "hrnet_w18_small"
    backbone = build_backbone(cfg, ShapeSpec(channels=3))
    shapes = backbone.output_shape()
    assert list(shapes) == ["s2", "s4", "s8"]
    assert [(s.channels, s.stride) for s in shapes.values()] == [(64, 2), (16, 4), (32, 8)]
    x = torch.randn(1, 3, 64, 96)
    out = backbone(x)
    for name, s in shapes.items():
        assert out[name].shape == (1, s.channels, 64 // s.stride, 96 // s.stride)
    ref = timm.create_model("hrnet_w18_small", features_only=True, feature_location="", out_indices=(0, 1, 2))
    ref.load_state_dict(backbone.body.state_dict())
    for a, b in zip(ref.eval()(x), backbone.eval()(x).values()):
        torch.testing.assert_close(a, b)
    cfg.MODEL.HRNET.OUT_INDICES = [1, 2, 3, 4]
    assert [s.stride for s in build_backbone(cfg, ShapeSpec(channels=3)).output_shape().values()] == [4, 8, 16, 32]
    cfg.MODEL.HRNET.NAME = "hrnet_w99"
    with pytest.raises(ValueError, match="MODEL.HRNET.NAME must be one of"):
        build_backbone(cfg, ShapeSpec(channels=3))


def test_timm_hrnet_pretrained_weights_out_of_reach_say_what_to_do(monkeypatch):
    """MODEL.HRNET.PRETRAINED True where timm cannot get the weights (no cache, no network): one clear error."""
    timm = pytest.importorskip("timm", reason="timm is in requirements.txt (make venv installs it)")
    from instseg.modeling.hrnet import TimmHRNet

    def offline(name, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co'")
        return real(name, pretrained=False, **kwargs)

    real = timm.create_model
    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(RuntimeError, match="PRETRAINED True: timm could not load hrnet_w18_small's ImageNet weights"):
        TimmHRNet("hrnet_w18_small", (0, 1, 2), pretrained=True)
    assert TimmHRNet("hrnet_w18_small", (0, 1, 2), pretrained=False).output_shape()["s4"].stride == 4
