"""MaskPlus's shipped configs against the paper's recipe (Sec. 4.2, 4.9) and the table rows (one definition)."""

import os

import pytest

from tests.utils import importorskip_detectron2

importorskip_detectron2()

from instseg.config import get_cfg  # noqa: E402
from instseg.registry import load_methods  # noqa: E402
from maskplus.config import ALL_OFF, TABLE_ROWS, table_values  # noqa: E402

load_methods()

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cfg(name):
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(ROOT, "configs", name))
    return cfg


def _switches(cfg):
    return {k: cfg.MODEL.MASKPLUS[k] for k in ALL_OFF}


def test_defaults_are_the_papers_final_maskplus_row():
    """Sec. 4.9: MaskPlus is every technique in its best setting; the defaults are that row, and Table 1's best
    context stack (720-512-512-256) is the default width."""
    cfg = get_cfg()
    assert _switches(cfg) == {k: table_values("maskplus")[k] for k in ALL_OFF}
    assert cfg.MODEL.MASKPLUS.CONTEXT_CONV_DIMS == TABLE_ROWS["table1_context_720_512_512_256"]["CONTEXT_CONV_DIMS"]
    assert cfg.MODEL.MASKPLUS.BIASED_ALPHA == 1.5 and cfg.MODEL.MASKPLUS.BIASED_UNTIL == 0.5


def test_every_row_switches_on_only_its_own_technique():
    """Each ablation row is Mask R-CNN plus one technique (Tables 1-6), so it differs from ALL_OFF in one switch."""
    for name in TABLE_ROWS:
        on = {k for k, v in table_values(name).items() if k in ALL_OFF and v != ALL_OFF[k]}
        if name == "mask_rcnn":
            assert on == set()
        elif name == "maskplus":
            assert on == set(ALL_OFF) - {"MASK_SCALE"}
        else:
            assert len(on) == 1, (name, on)


def test_sec42_recipe_coco():
    """Sec. 4.2: 800 / 1333 single scale, 512 RoIs per image with 1:3 positives, wd 1e-4, momentum 0.9; the paper's
    schedule (8 GPUs x 1 image, 360k iterations, LR 0.02) is the 2x config, with Tensorpack's drops (2x: 240k, 320k)."""
    one, two = _cfg("MaskPlus/maskplus_R_50_FPN_1x.yaml"), _cfg("MaskPlus/maskplus_R_50_FPN_2x.yaml")
    for cfg in (one, two):
        assert cfg.MODEL.ROI_HEADS.NAME == "MaskPlusROIHeads" and cfg.MODEL.ROI_MASK_HEAD.NAME == "MaskPlusMaskHead"
        assert cfg.INPUT.MIN_SIZE_TRAIN == (800,) and cfg.INPUT.MAX_SIZE_TRAIN == 1333
        assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == (800, 1333)
        assert cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE == 512 and cfg.MODEL.ROI_HEADS.POSITIVE_FRACTION == 0.25
        assert (cfg.SOLVER.WEIGHT_DECAY, cfg.SOLVER.MOMENTUM, cfg.SOLVER.BASE_LR) == (1e-4, 0.9, 0.02)
        assert _switches(cfg) == {k: table_values("maskplus")[k] for k in ALL_OFF}
    assert (two.SOLVER.IMS_PER_BATCH, two.SOLVER.MAX_ITER, two.SOLVER.STEPS) == (8, 360000, (240000, 320000))
    # the 1x config: detectron2's 1x, the images of half the paper's schedule
    assert (one.SOLVER.IMS_PER_BATCH, one.SOLVER.MAX_ITER, one.SOLVER.STEPS) == (16, 90000, (60000, 80000))
    assert one.SOLVER.IMS_PER_BATCH * one.SOLVER.MAX_ITER * 2 == two.SOLVER.IMS_PER_BATCH * two.SOLVER.MAX_ITER


def test_mask_rcnn_row_config_is_the_maskplus_recipe_with_every_technique_off():
    base, mp = _cfg("MaskPlus/mask_rcnn_R_50_FPN_1x.yaml"), _cfg("MaskPlus/maskplus_R_50_FPN_1x.yaml")
    assert _switches(base) == table_values("mask_rcnn")
    for key in ("SOLVER", "INPUT", "DATASETS"):
        assert base[key] == mp[key], key
    assert base.MODEL.ROI_HEADS == mp.MODEL.ROI_HEADS


@pytest.mark.parametrize(
    "plus,base",
    [
        ("maskplus_plus_cascade_R_50_FPN_1x", "maskplus_R_50_FPN_1x"),
        ("maskplus_plus_cascade_R_50_FPN_3x", "maskplus_R_50_FPN_2x"),
    ],
)
def test_sec49_maskplus_plus_is_the_cascade_trained_half_as_long_again(plus, base):
    """Sec. 4.9: MaskPlus+ is MaskPlus on a cascade Mask R-CNN with 0.5 times longer training; the drops of the 3x
    config are Tensorpack's for 540k (420k, 500k)."""
    p, b = _cfg(f"MaskPlus/{plus}.yaml"), _cfg(f"MaskPlus/{base}.yaml")
    assert p.MODEL.ROI_HEADS.NAME == "MaskPlusCascadeROIHeads"
    assert p.SOLVER.MAX_ITER == 1.5 * b.SOLVER.MAX_ITER and p.SOLVER.IMS_PER_BATCH == b.SOLVER.IMS_PER_BATCH
    if b.SOLVER.IMS_PER_BATCH == 16:  # detectron2's drops, at the same fractions of training
        assert [s / p.SOLVER.MAX_ITER for s in p.SOLVER.STEPS] == [s / b.SOLVER.MAX_ITER for s in b.SOLVER.STEPS]
    else:
        assert p.SOLVER.STEPS == (420000, 500000)
    assert _switches(p) == _switches(b)


def test_synthetic_configs_are_make_trains_recipe_plus_maskplus():
    base = _cfg("Baselines/mask_rcnn_R_18_FPN_synthetic.yaml")
    mp = _cfg("MaskPlus/maskplus_R_18_FPN_synthetic.yaml")
    assert mp.SOLVER == base.SOLVER and mp.INPUT == base.INPUT and mp.MODEL.BACKBONE == base.MODEL.BACKBONE
    assert _switches(mp) == {k: table_values("maskplus")[k] for k in ALL_OFF}
    # the paper's context widths scaled to the synthetic FPN (64 of 256 channels)
    assert mp.MODEL.MASKPLUS.CONTEXT_CONV_DIMS == [d * 64 // 256 for d in [720, 512, 512, 256]]
    plus, cascade = (
        _cfg("MaskPlus/maskplus_plus_cascade_R_18_FPN_synthetic.yaml"),
        _cfg("Baselines/cascade_mask_rcnn_R_18_FPN_synthetic.yaml"),
    )
    assert plus.SOLVER == cascade.SOLVER and plus.SOLVER.MAX_ITER == 1.5 * base.SOLVER.MAX_ITER
    assert cascade.MODEL.ROI_HEADS.NAME == "CascadeROIHeads" and plus.MODEL.ROI_HEADS.NAME == "MaskPlusCascadeROIHeads"
    assert _switches(plus) == _switches(mp) and plus.MODEL.MASKPLUS == mp.MODEL.MASKPLUS
