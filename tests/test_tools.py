"""The measurement tools run and print what they promise (JSON with ratios against the first model)."""

import json
import os

import pytest

from tests.utils import importorskip_detectron2

importorskip_detectron2()

# benchmark_inference on toy inputs, one timed run
SMALL_RUN = ["--size", "64", "64", "--repeats", "1", "--warmup", "0", "--detections", "5", "--json"]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_benchmark_inference_json(capsys):
    from tools import benchmark_inference

    base = os.path.join(ROOT, "configs", "Baselines", "mask_rcnn_R_18_FPN_synthetic.yaml")
    mp = os.path.join(ROOT, "configs", "MaskPoint", "mask_point_rcnn_R_18_FPN_synthetic.yaml")
    benchmark_inference.main(
        [
            "--model",
            "a",
            base,
            "--model",
            "b",
            mp,
            "MODEL.MASK_POINT.NUM_POINTS",
            "8",
            "MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS",
            "9",
            *SMALL_RUN,
        ]
    )
    out = json.loads(capsys.readouterr().out)
    a, b = out["models"]["a"], out["models"]["b"]
    assert a["ratio_to_a"] == 1.0 and b["ratio_to_a"] == pytest.approx(b["seconds"] / a["seconds"])
    assert b["params"] > a["params"] and b["params_delta_M"] > 0
    assert 0 < a["detections"] <= 5 and out["size"] == [64, 64]


def test_benchmark_inference_loads_given_weights(tmp_path):
    import torch
    from detectron2.checkpoint import DetectionCheckpointer

    from tools import benchmark_inference

    cfg = os.path.join(ROOT, "configs", "Baselines", "mask_rcnn_R_18_FPN_synthetic.yaml")
    _, random_model, _ = benchmark_inference.build(["a", cfg], 5)
    assert not random_model.trained
    with torch.no_grad():
        for p in random_model.parameters():
            p.add_(1.0)
    DetectionCheckpointer(random_model, save_dir=str(tmp_path)).save("w")
    _, loaded, _ = benchmark_inference.build(["b", cfg, "MODEL.WEIGHTS", str(tmp_path / "w.pth")], 5)
    assert loaded.trained
    for (n, a), (_, b) in zip(random_model.state_dict().items(), loaded.state_dict().items()):
        torch.testing.assert_close(a, b, msg=n)


def test_benchmark_inference_times_a_given_image_resized_in_bgr(tmp_path, capsys):
    """``--image``: the file's pixels in its own (BGR) channel order, resized to H x W (not W x H); a missing file is
    one clear error; the JSON names the image."""
    import cv2
    import numpy as np

    from tools import benchmark_inference

    bgr = np.zeros((32, 48, 3), dtype=np.uint8)
    bgr[:, :24] = (200, 10, 30)
    bgr[:, 24:] = (0, 100, 250)
    path = str(tmp_path / "two_halves.png")
    cv2.imwrite(path, bgr)
    image = benchmark_inference.load_image(path, 64, 96)
    assert image.shape == (3, 64, 96) and str(image.dtype) == "torch.uint8"
    assert image[:, :, :44].reshape(3, -1).unique(dim=1).flatten().tolist() == [200, 10, 30]
    assert image[:, :, 52:].reshape(3, -1).unique(dim=1).flatten().tolist() == [0, 100, 250]
    with pytest.raises(FileNotFoundError, match="--image"):
        benchmark_inference.load_image(str(tmp_path / "missing.png"), 64, 96)
    base = os.path.join(ROOT, "configs", "Baselines", "mask_rcnn_R_18_FPN_synthetic.yaml")
    benchmark_inference.main(["--model", "a", base, "--image", path, *SMALL_RUN])
    assert json.loads(capsys.readouterr().out)["image"] == path


def test_huddled_eval_tool(tmp_path, capsys):
    from tests.instseg.test_huddled import _segm_dataset, as_results
    from tools import huddled_eval

    d = _segm_dataset()
    (tmp_path / "gt.json").write_text(json.dumps(d))
    res = as_results(d["annotations"])
    (tmp_path / "a.json").write_text(json.dumps(res[:1]))
    (tmp_path / "b.json").write_text(json.dumps(res))
    rows = huddled_eval.main(
        [
            "--gt-json",
            str(tmp_path / "gt.json"),
            "--results",
            f"a={tmp_path / 'a.json'}",
            f"b={tmp_path / 'b.json'}",
            "--thresholds",
            "0.0",
            "0.1",
        ]
    )
    printed = capsys.readouterr().out
    assert "| T_O \\ T_P | 0.0 | 0.1 |" in printed
    assert rows[0]["b/bbox"] == pytest.approx(100.0) and rows[0]["a/bbox"] < 100.0
    with pytest.raises(SystemExit, match="NAME=PATH"):
        huddled_eval.main(["--gt-json", str(tmp_path / "gt.json"), "--results", "nameless"])


@pytest.mark.parametrize("ground_truth", [True, False])
def test_demo_renders_a_grid(tmp_path, datasets_dir, ground_truth):
    from tests.utils import TINY
    from tools import demo

    out = tmp_path / "demo.png"
    cfg = os.path.join(ROOT, "configs", "Baselines", "mask_rcnn_R_18_FPN_synthetic.yaml")
    grid = demo.main(
        ["--config-file", cfg, "--num-images", "3", "--columns", "2", "--output", str(out)]
        + (["--ground-truth"] if ground_truth else ["--score-threshold", "0.0"])
        + TINY
    )
    assert out.exists() and grid.shape == (2 * 2 * 96, 2 * 2 * 96, 3)  # 2 rows x 2 columns at scale 2
    assert grid[: 2 * 96, : 2 * 96].std() > 0 and grid[2 * 96 :, 2 * 96 :].max() == 0  # 3 tiles, one empty


def test_benchmark_inference_dsg_table1_preset_and_weights(tmp_path, capsys, monkeypatch):
    """The synthetic Table 1 preset times rows 0-5 (+ DSG light); --weights loads a checkpoint into a row."""
    from detectron2.checkpoint import DetectionCheckpointer

    from dsg.config import TABLE1_ROWS, table1_opts
    from tools import benchmark_inference

    monkeypatch.chdir(ROOT)
    _, model, _ = benchmark_inference.build(["row2", benchmark_inference.SYN_DSG, *table1_opts(2)], 5)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("row2")
    benchmark_inference.main(
        [
            "--preset",
            "dsg_table1",
            "--weights",
            f"row2={tmp_path / 'row2.pth'}",
            *SMALL_RUN,
        ]
    )
    out = json.loads(capsys.readouterr().out)["models"]
    assert list(out) == ["row0_mask_rcnn"] + [f"row{i}" for i in range(1, len(TABLE1_ROWS))] + ["dsg_light"]
    assert out["row2"]["opts"][-2:] == ["MODEL.WEIGHTS", str(tmp_path / "row2.pth")]
    # parameters per row as in Table 1: the MPN adds, F_M and F_B add a fusion conv each, SgRA adds none
    p = [out["row0_mask_rcnn"]["params"]] + [out[f"row{i}"]["params"] for i in range(1, 6)]
    assert p[1] > p[0] and p[2] > p[1] and p[3] == p[2] and p[4] > p[3] and p[5] == p[4]
    with pytest.raises(SystemExit):
        benchmark_inference.parse_args(["--preset", "dsg_table1", "--weights", "row9=x.pth"])


def test_benchmark_ops_json_reports_every_op_with_consistent_ratios(capsys):
    """tools/benchmark_ops.py at toy sizes: every op reports its times, and each ratio is the quotient of the times
    it names (the benchmark's arithmetic, not its speed, is what a test can check)."""
    from tools import benchmark_ops

    small = {
        "sg-roi-align": dict(
            batch=1,
            channels=4,
            height=16,
            width=16,
            rois=8,
            repeats=1,
            warmup=0,
            reference_repeats=1,
            scaling_repeats=1,
        ),
        "corr-crop": dict(n=1, d=4, height=16, width=16, objects=4, repeats=1, warmup=0, scaling_repeats=1),
        "iou-vote": dict(height=32, width=32, seeds=5, repeats=1, op_repeats=1, warmup=0, scaling_repeats=1),
    }
    argv = ["--op", "all", "--json"]
    for prefix, opts in small.items():
        for k, v in opts.items():
            argv += [f"--{prefix}-{k.replace('_', '-')}", str(v)]
    report = benchmark_ops.main(argv)["ops"]
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{") :])["ops"].keys() == report.keys()
    sg = report["sg_roi_align"]["cpu"] if "cpu" in report["sg_roi_align"] else report["sg_roi_align"]
    assert sg["speedup_vs_reference_forward"] == pytest.approx(sg["reference_forward_s"] / sg["op_forward_s"])
    assert sg["forward_vs_roi_align"] == pytest.approx(sg["op_forward_s"] / sg["roi_align_forward_s"])
    # the benchmarked op computes what its reference does at these sizes
    assert report["correlation_crop"]["max_abs_diff_forward"] < 1e-4 and report["iou_vote"]["agree"]


def test_benchmark_inference_counts_what_runs_and_the_mask_head_macs(capsys):
    """MaskPlus's rows on the synthetic recipe: the quasi-multitask branch adds parameters that never run (Sec. 3.4:
    no test-time cost), and the deconvolutional pyramid adds, per RoI at 14x14 with C = 64 channels, two 2x2 stride-2
    deconvs (14->28->56) and two 3x3 stride-2 convs (56->28->14): C^2 (14^2*4 + 28^2*4 + 28^2*9 + 14^2*9) MACs."""
    from maskplus.config import table_opts
    from tools import benchmark_inference

    syn = os.path.join(ROOT, "configs", "MaskPlus", "maskplus_R_18_FPN_synthetic.yaml")
    models = [("base", "mask_rcnn"), ("quasi", "table4_quasi_half"), ("pyramid", "table2_deconv_pyramid")]
    argv = [x for name, row in models for x in ("--model", name, syn, *table_opts(row))]
    benchmark_inference.main(argv + SMALL_RUN)
    out = json.loads(capsys.readouterr().out)["models"]
    base, quasi, pyramid = out["base"], out["quasi"], out["pyramid"]
    assert base["params_run"] == base["params"]
    assert quasi["params"] > base["params"] and quasi["params_run"] == base["params_run"]
    assert quasi["mask_head_gmac_per_roi"] == base["mask_head_gmac_per_roi"]
    macs = 64 * 64 * (14**2 * 4 + 28**2 * 4 + 28**2 * 9 + 14**2 * 9)
    assert pyramid["mask_head_gmac_per_roi"] - base["mask_head_gmac_per_roi"] == pytest.approx(macs / 1e9)


def test_benchmark_inference_casnet_times_its_post_processing(capsys):
    """CASNet (synthetic, untrained) next to a Mask R-CNN: the seeds are calibrated to 9 x --detections positions, so
    instances come out; the post-processing's time is a share of the total and its peak memory is reported alone."""
    pytest.importorskip("timm", reason="timm is in requirements.txt (make venv installs it)")
    from tools import benchmark_inference

    base = os.path.join(ROOT, "configs", "Baselines", "mask_rcnn_R_18_FPN_synthetic.yaml")
    cas = os.path.join(ROOT, "configs", "CASNet", "casnet_hrnet_w18_small_synthetic.yaml")
    benchmark_inference.main(["--model", "a", base, "--model", "c", cas, "--memory", *SMALL_RUN])
    out = json.loads(capsys.readouterr().out)
    a, c = out["models"]["a"], out["models"]["c"]
    assert a["postprocess_seconds"] is None and a["postprocess_share"] is None
    assert 0 < c["postprocess_seconds"] < c["seconds"]
    assert c["postprocess_share"] == pytest.approx(c["postprocess_seconds"] / c["seconds"])
    assert c["postprocess_peak_memory_mb"] is not None and c["detections"] > 0


def test_calibrate_casnet_makes_the_asked_number_of_seeds():
    pytest.importorskip("timm", reason="timm is in requirements.txt (make venv installs it)")
    import torch

    from tools import benchmark_inference

    cas = os.path.join(ROOT, "configs", "CASNet", "casnet_hrnet_w18_small_synthetic.yaml")
    _, model, _ = benchmark_inference.build(["c", cas], 7)
    image = torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    inputs = [{"image": image, "height": 64, "width": 96}]
    benchmark_inference.calibrate_casnet(model, inputs, 7)
    seen = {}
    handle = model.prob_head.register_forward_hook(lambda mod, args, out: seen.setdefault("x", out))
    with torch.no_grad():
        model(inputs)
    handle.remove()
    assert int((torch.sigmoid(seen["x"]) > model.post["seed_threshold"]).sum()) == 63


def test_leaderboard_end_to_end_on_two_entries_and_reuse(tmp_path, datasets_dir, capsys):
    """tools/leaderboard.py on Mask R-CNN and CASNet (panoptic) with a 2-iteration budget: trains both (progress lines
    from detectron2's log), evaluates (box / mask AP, huddled AP, PQ for CASNet), times them against Mask R-CNN,
    writes the four files (strict JSON); the second call reuses both checkpoints; a changed override retrains; an
    entry that cannot train is reported failed, with its log's last line, and the other one still is."""
    pytest.importorskip("timm", reason="timm is in requirements.txt (make venv installs it)")
    import math
    import re

    import cv2
    from detectron2.data import DatasetCatalog

    from tests.utils import TINY
    from tools import leaderboard

    out = tmp_path / "lb"
    argv = ["--entries", "mask_rcnn,casnet", "--output", str(out), "--num-gpus", "1", "--sizes", "64x64"]
    argv += ["--repeats", "1", *TINY, "SOLVER.MAX_ITER", "2", "TEST.PRECISE_BN.ENABLED", "False"]
    rows = leaderboard.main(argv)
    log = capsys.readouterr().out
    assert re.search(r"mask_rcnn: training, iteration \d+", log) and re.search(r"casnet: training, iteration \d+", log)
    by = {r["name"]: r for r in rows}
    assert not any(r.get("error") for r in rows), rows
    for r in rows:  # 2 iterations: the numbers are there (None where detectron2 says NaN), their values mean nothing
        for key in ("box_AP", "mask_AP", "AP50", "huddled_mask_AP", "mask_AP_bar", "mask_AP_ring"):
            assert key in r and (r[key] is None or math.isfinite(r[key])), (r["name"], key)
        assert r["params_M"] > 0 and r["iterations"] == 2 and r["train_seconds"] is not None
        assert isinstance(r["detections_64x64"], int)  # timed as evaluated: each config's own detections
    from detectron2.data.datasets.coco import convert_to_coco_dict

    from instseg.evaluation.huddled import _image_overlaps, _select

    huddled = _select(_image_overlaps(convert_to_coco_dict(leaderboard.INSTANCES_VAL)), 0.3, 0.0)
    assert 0 < len(huddled) < len(DatasetCatalog.get(leaderboard.INSTANCES_VAL))  # a subset, not every image
    assert all(r["huddled_images"] == len(huddled) for r in rows)
    assert by["mask_rcnn"]["time_64x64"] == 1.0 and math.isfinite(by["casnet"]["time_64x64"])
    assert math.isfinite(by["casnet"]["PQ"]) and "PQ" not in by["mask_rcnn"]

    def strict(text):
        raise ValueError(f"not strict JSON: {text}")

    saved = json.loads((out / "leaderboard.json").read_text(), parse_constant=strict)
    assert [r["name"] for r in saved["rows"]] == ["mask_rcnn", "casnet"] and saved["meta"]["reference"] == "mask_rcnn"
    most_huddled = leaderboard.gallery_images(DatasetCatalog.get(leaderboard.INSTANCES_VAL), k=1)[0]["file_name"]
    assert saved["meta"]["timed_image"] == os.path.basename(most_huddled)  # timed on it, not on noise
    md = (out / "leaderboard.md").read_text()
    assert md.count("\n| mask_rcnn |") == 1 and "| casnet |" in md and "ratios to mask_rcnn" in md
    assert f"validation image {saved['meta']['timed_image']} resized" in md
    assert f"on the {len(huddled)} validation images" in md and "(2 iterations" in md
    assert _table_shapes(md) == 1
    png = cv2.imread(str(out / "gallery.png"))
    tile = 96 + leaderboard.LABEL_HEIGHT
    assert png.shape[:2] == (4 * tile, 3 * 96)  # 4 images x (ground truth + 2 methods)
    assert cv2.imread(str(out / "leaderboard.png")) is not None
    # second call: both reused, nothing trained, the checkpoints untouched
    mtimes = {n: (out / n / "model_final.pth").stat().st_mtime for n in ("mask_rcnn", "casnet")}
    leaderboard.main(argv)
    log = capsys.readouterr().out
    assert "training" not in log and log.count("reusing") == 2
    assert mtimes == {n: (out / n / "model_final.pth").stat().st_mtime for n in ("mask_rcnn", "casnet")}
    # a solver override changes every entry's config (retrained); rdsnet cannot build with its own bad key: reported,
    # mask_rcnn still is (the RDSNet key alone would not retrain it: tests of the stamp below)
    bad = ["SOLVER.BASE_LR", "0.0005", "MODEL.RDSNET.MASK_ASSEMBLY", "dot"]
    rows = leaderboard.main(argv[:1] + ["mask_rcnn,rdsnet"] + argv[2:] + bad)
    log = capsys.readouterr().out
    by = {r["name"]: r for r in rows}
    assert "mask_rcnn: training" in log and "box_AP" in by["mask_rcnn"] and "time_64x64" in by["mask_rcnn"]
    assert "MASK_ASSEMBLY must be one of" in by["rdsnet"]["error"] and "leaderboard_train.log" in by["rdsnet"]["error"]
    md = (out / "leaderboard.md").read_text()
    assert "| rdsnet | failed: RuntimeError: training exited with 1" in md and _table_shapes(md) == 1


def _table_shapes(md):
    """How many different cell counts the markdown table's rows have (1: every row, failed ones too, lines up)."""
    return len({line.count("|") for line in md.splitlines() if line.startswith("|")})


def test_leaderboard_stamp_follows_the_code_the_entry_runs_not_the_commit(tmp_path, monkeypatch):
    """A checkpoint's stamp changes when the code it ran changes (the shared package or its own method's, committed or
    not) or its config does, and not when a commit touches only tests, the README, another method's package or another
    method's config keys, so that trained entries carry over such commits."""
    import subprocess

    from tools import leaderboard

    repo = tmp_path / "repo"
    for path in ("instseg/a.py", "rdsnet/b.py", "casnet/c.py", "tests/t.py", "README.md"):
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text("x = 1\n")

    def git(*args):
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True, capture_output=True
        )

    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "one")
    rds_cfg = leaderboard.entry_cfg("configs/RDSNet/rdsnet_R_18_FPN_synthetic.yaml", [])
    base_cfg = leaderboard.entry_cfg("configs/Baselines/mask_rcnn_R_18_FPN_synthetic.yaml", [])
    monkeypatch.setattr(leaderboard, "ROOT", str(repo))

    def stamps():
        return (
            leaderboard.stamp_of(rds_cfg, "configs/RDSNet/rdsnet_R_18_FPN_synthetic.yaml"),
            leaderboard.stamp_of(base_cfg, "configs/Baselines/mask_rcnn_R_18_FPN_synthetic.yaml"),
        )

    rds, base = stamps()
    for path in ("tests/t.py", "README.md", "casnet/c.py"):
        (repo / path).write_text("x = 2\n")
    git("commit", "-qam", "tests, README and another method")
    base_cfg.defrost()
    base_cfg.MODEL.CASNET.ALPHA = 0.5  # another method's key
    assert stamps() == (rds, base)
    (repo / "rdsnet/b.py").write_text("x = 2\n")
    rds2, base2 = stamps()
    assert rds2["code_sha"] != rds["code_sha"] and base2 == base  # uncommitted, its own package only
    git("commit", "-qam", "rdsnet")
    assert stamps() == (rds2, base)
    (repo / "instseg/a.py").write_text("x = 3\n")
    rds3, base3 = stamps()
    assert rds3["code_sha"] != rds2["code_sha"] and base3["code_sha"] != base["code_sha"]  # shared code: both
    base_cfg.SOLVER.MAX_ITER = 7
    assert stamps()[1]["config_sha"] != base3["config_sha"]


def test_leaderboard_gallery_picks_huddled_ring_and_bar_images():
    """The gallery's images: the one with the most huddled instances (box IoU > 0.3 with another), then the one with
    the most rings, the most bars, then by instance count; no image twice."""
    from tools import leaderboard

    def anno(cls, box):
        return {"category_id": cls, "bbox": box, "bbox_mode": 0}

    a = {"image_id": 1, "annotations": [anno(0, [0, 0, 10, 10]), anno(0, [20, 20, 30, 30])]}
    huddle = {"image_id": 2, "annotations": [anno(0, [0, 0, 10, 10]), anno(1, [1, 1, 11, 11])]}
    rings = {"image_id": 3, "annotations": [anno(3, [0, 0, 5, 5]), anno(3, [10, 10, 15, 15])]}
    bars = {"image_id": 4, "annotations": [anno(2, [0, 0, 5, 5])]}
    many = {"image_id": 5, "annotations": [anno(4, [i * 10, 0, i * 10 + 5, 5]) for i in range(5)]}
    chosen = leaderboard.gallery_images([a, bars, many, rings, huddle], k=4)
    assert [d["image_id"] for d in chosen] == [2, 3, 4, 5]


def test_leaderboard_reports_a_failed_training_by_its_exception(tmp_path):
    """A failed entry's message is the training log's first exception line (the worker's), not the launcher's last."""
    from tools import leaderboard

    log = tmp_path / "leaderboard_train.log"
    log.write_text(
        "[11/30 09:58:19] d2.engine.train_loop INFO: Exception during training:\n"
        "Traceback (most recent call last):\n"
        '  File "train_loop.py", line 152, in train\n'
        "RuntimeError: Expected to have finished reduction in the prior iteration\n"
        "Parameter indices which did not receive grad for rank 0: 183 184\n"
        "torch.multiprocessing.spawn.ProcessRaisedException:\n"
        " In addition, you can set the environment variable TORCH_DISTRIBUTED_DEBUG\n"
    )
    assert leaderboard._error_line(str(log)).startswith("RuntimeError: Expected to have finished reduction")
    log.write_text("no exception here\nthe end\n")
    assert leaderboard._error_line(str(log)) == "the end"
    assert leaderboard._error_line(str(tmp_path / "missing.log")) == ""


def test_leaderboard_cut_run_time_from_its_log_stamps(tmp_path):
    """A run that ended counts detectron2's "Total training time"; a cut one, from its "Starting training" line to its
    last time-stamped line (the lines before it, e.g. the dataset's preparation, do not count), across midnight and a
    year's end too."""
    from tools import leaderboard

    ended = tmp_path / "ended.txt"
    ended.write_text(
        "[03/02 10:00:00] d2.engine.train_loop INFO: Starting training from iteration 0\n"
        "[03/02 11:20:00] d2.engine.hooks INFO: Total training time: 1:02:03 (0:00:01 on hooks)\n"
    )
    assert leaderboard._log_seconds(str(ended)) == 3723
    cut = tmp_path / "cut.txt"
    cut.write_text(
        "[12/31 23:40:00] detectron2 INFO: Environment info:\n"
        "  a line without a time\n"
        "[12/31 23:58:30] d2.engine.train_loop INFO: Starting training from iteration 900\n"
        "[12/31 23:59:40] d2.utils.events INFO:  eta: 0:05:00  iter: 919  total_loss: 1.0\n"
        "[01/01 00:01:15] d2.utils.events INFO:  eta: 0:03:00  iter: 939  total_loss: 0.9\n"
    )
    assert leaderboard._log_seconds(str(cut)) == 165
    never = tmp_path / "never.txt"
    never.write_text("[03/02 10:00:00] detectron2 INFO: Environment info:\n")
    assert leaderboard._log_seconds(str(never)) == 0


def test_leaderboard_resumes_a_cut_training_and_counts_every_segment(tmp_path, datasets_dir, capsys):
    """An entry whose training was cut (a pending stamp of the same config and code, a last checkpoint, no
    model_final) goes on from its last checkpoint instead of starting over; its training time adds the cut run's; a
    pending stamp of other code starts over."""
    import datetime
    import re

    from tests.utils import TINY
    from tools import leaderboard

    out = tmp_path / "lb"
    run = out / "mask_rcnn"
    argv = ["--entries", "mask_rcnn", "--output", str(out), "--num-gpus", "1", "--sizes", "64x64", "--repeats", "1"]
    argv += [*TINY, "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2", "TEST.PRECISE_BN.ENABLED", "False"]
    leaderboard.main(argv)
    capsys.readouterr()
    # cut it after its first checkpoint (iteration 2): what a session's end leaves
    (run / leaderboard.STAMP).rename(run / leaderboard.PENDING)
    for name in ("model_final.pth", "model_0000003.pth"):
        (run / name).unlink(missing_ok=True)
    (run / "last_checkpoint").write_text("model_0000001.pth")
    text = (run / "log.txt").read_text()
    start = re.search(r"^\[(\d\d)/(\d\d) (\d\d):(\d\d):(\d\d)\] .*Starting training", text, re.M)
    later = datetime.datetime(2000, *map(int, start.groups())) + datetime.timedelta(seconds=100)
    cut_log = text[: text.index("Total training time")].rsplit("\n", 1)[0] + "\n"
    cut_log += later.strftime("[%m/%d %H:%M:%S] d2.utils.events INFO:  eta: 0:00:01  iter: 1  total_loss: 1.0\n")
    (run / "log.txt").write_text(cut_log)  # the cut run logged its last line 100 s after it started training
    rows = leaderboard.main(argv)
    log = capsys.readouterr().out
    assert "mask_rcnn: resuming" in log and "model_0000001.pth" in log and "mask_rcnn: training configs" not in log
    assert "Starting training from iteration 2" in (run / "log.txt").read_text()
    assert (run / "log.segment0.txt").read_text() == cut_log
    h, m, s = re.findall(r"Total training time: (\d+):(\d+):(\d+)", (run / "log.txt").read_text())[-1]
    assert rows[0]["train_seconds"] == int(h) * 3600 + int(m) * 60 + int(s) + 100
    assert (run / leaderboard.STAMP).is_file() and not (run / leaderboard.PENDING).exists()
    # a pending stamp of other code is no cut run of this one: start over, the old segments dropped
    (run / leaderboard.STAMP).rename(run / leaderboard.PENDING)
    (run / leaderboard.PENDING).write_text('{"code_sha": "other"}')
    (run / "model_final.pth").unlink()
    leaderboard.main(argv)
    assert "mask_rcnn: training configs" in capsys.readouterr().out and not (run / "log.segment0.txt").exists()
