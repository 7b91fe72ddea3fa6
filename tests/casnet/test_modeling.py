"""CASNet's detectron2 model (``casnet.modeling``, instance mode): Eq. 4's weights, the targets of a padded batch,
training with images without instances, non-overlapping instances, detectron2's tools."""

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


def test_trains_with_images_without_instances_and_predicts_non_overlapping_instances():
    model = seeded_model(SYN, ["MODEL.CASNET.SEED_THRESHOLD", "0.3"])
    with EventStorage(0):
        for empty in ((1,), (0, 1)):
            losses = model(synthetic_batch(2, empty=empty))
            assert all(torch.isfinite(v) for v in losses.values())
            sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        out = model([{**d, "height": 120, "width": 144} for d in images_only(synthetic_batch(2, empty=()))])
    for o in out:
        inst = o["instances"]
        assert inst.image_size == (120, 144) and o["sem_seg"].shape == (6, 120, 144)
        if len(inst):
            assert inst.pred_masks.sum(dim=0).max() <= 1  # no pixel in two instances
            assert inst.pred_masks.flatten(1).any(dim=1).all()  # no instance without a pixel


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


def test_bad_settings_stop_at_build_time():
    with pytest.raises(ValueError, match="are not backbone outputs"):
        seeded_model(SYN, ["MODEL.CASNET.IN_FEATURES", "['s16']"])
    with pytest.raises(ValueError, match="SCORE_MODE must be one of"):
        seeded_model(SYN, ["MODEL.CASNET.SCORE_MODE", "mean"])
