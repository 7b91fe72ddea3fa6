"""train_net.py end to end on tiny synthetic data: train, evaluate (COCO and Cityscapes evaluators),
two CPU processes, resume after a kill, and one clear message for each user mistake."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.utils import TINY, importorskip_detectron2

importorskip_detectron2()

import torch  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402

import train_net  # noqa: E402
from instseg.engine import Trainer, UserError, build_cfg  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
BASELINE = os.path.join(ROOT, "configs", "Baselines", "mask_rcnn_R_18_FPN_synthetic.yaml")
PY = sys.executable
# train without evaluating (no test set)
NO_EVAL = ["TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()"]


class Args:
    """The fields of detectron2's default_argument_parser that setup uses."""

    def __init__(self, config_file, opts, **kw):
        self.config_file = config_file
        self.opts = opts
        self.eval_only = kw.get("eval_only", False)
        self.resume = kw.get("resume", False)
        self.num_gpus = 1


def _env(datasets_dir):
    env = dict(os.environ)
    env["DETECTRON2_DATASETS"] = str(datasets_dir)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_train_then_eval_only_coco(tmp_path, datasets_dir):
    out = tmp_path / "out"
    res = train_net.run(["--config-file", BASELINE, *TINY, "SOLVER.MAX_ITER", "3", "OUTPUT_DIR", str(out)])
    assert (out / "model_final.pth").is_file()
    # the final evaluation ran through the COCO evaluator: bbox and segm AP are numbers
    for task in ("bbox", "segm"):
        assert task in res and 0.0 <= res[task]["AP"] <= 100.0
    res2 = train_net.run(
        [
            "--config-file",
            BASELINE,
            "--eval-only",
            *TINY,
            "MODEL.WEIGHTS",
            str(out / "model_final.pth"),
            "OUTPUT_DIR",
            str(tmp_path / "eval"),
        ]
    )
    # same weights, same data: the same numbers
    assert res2["segm"]["AP"] == pytest.approx(res["segm"]["AP"], abs=1e-6)
    assert (tmp_path / "eval" / "inference" / "synthetic_instances_val" / "coco_instances_results.json").is_file()


def test_eval_cityscapes_instance_evaluator_on_export(tmp_path, datasets_dir, monkeypatch):
    from instseg.data.cityscapes import export_and_register
    from instseg.data.synthetic import SyntheticSpec

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # cityscapesscripts writes matches.json into the cwd unless we stop it

    name = export_and_register(
        SyntheticSpec(num_images=3, height=96, width=96, seed=5), split="val", name="synthetic_cityscapes_test_val"
    )
    cfg_args = Args(BASELINE, TINY + ["DATASETS.TEST", f"('{name}',)", "OUTPUT_DIR", str(tmp_path / "o")])
    cfg = build_cfg(cfg_args)
    model = Trainer.build_model(cfg)
    res = Trainer.test(cfg, model)
    # cityscapesscripts' instance-level evaluation ran and reported AP / AP50 (in percent)
    assert "segm" in res and set(res["segm"]) >= {"AP", "AP50"}
    assert 0.0 <= res["segm"]["AP50"] <= 100.0
    assert list(cwd.iterdir()) == []


def test_two_processes_on_cpu(tmp_path, datasets_dir):
    out = tmp_path / "ddp"
    cmd = [
        PY,
        os.path.join(ROOT, "train_net.py"),
        "--num-gpus",
        "2",
        "--dist-url",
        "auto",  # a free port: detectron2's default port is per user, taken by any other 2-process run
        "--config-file",
        BASELINE,
        *TINY,
        "SOLVER.MAX_ITER",
        "2",
        *NO_EVAL,
        "OUTPUT_DIR",
        str(out),
    ]
    p = subprocess.run(cmd, env=_env(datasets_dir), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (out / "model_final.pth").is_file()
    metrics = [json.loads(line) for line in open(out / "metrics.json")]
    assert max(m["iteration"] for m in metrics if "iteration" in m) == 1


def _last_checkpoint(out):
    f = out / "last_checkpoint"
    return f.read_text().strip() if f.is_file() else None


def test_resume_after_kill(tmp_path, datasets_dir):
    out = tmp_path / "resume"
    opts = [
        *TINY,
        "SOLVER.MAX_ITER",
        "8",
        "SOLVER.CHECKPOINT_PERIOD",
        "2",
        *NO_EVAL,
        "OUTPUT_DIR",
        str(out),
    ]
    cmd = [PY, os.path.join(ROOT, "train_net.py"), "--config-file", BASELINE, *opts]
    p = subprocess.Popen(
        cmd, env=_env(datasets_dir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.time() + 300
        while time.time() < deadline and _last_checkpoint(out) not in ("model_0000003.pth", "model_0000005.pth"):
            assert p.poll() is None, "training ended before it could be killed"
            time.sleep(0.2)
        killed_at = _last_checkpoint(out)
        assert killed_at is not None, "no checkpoint was written in time"
        os.killpg(p.pid, signal.SIGKILL)
    finally:
        p.wait()
    assert not (out / "model_final.pth").exists()
    ckpt_iter = int(killed_at[len("model_") : -len(".pth")])
    saved = torch.load(out / killed_at, map_location="cpu", weights_only=False)

    # in process: resume_or_load(resume=True) continues from that checkpoint, weights and iteration
    cfg = build_cfg(Args(BASELINE, opts, resume=True))
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == ckpt_iter + 1 == saved["iteration"] + 1
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, saved["model"][k]), k
    del trainer

    # and train_net.py --resume finishes the schedule from there
    p = subprocess.run(
        cmd[:2] + ["--resume"] + cmd[2:], env=_env(datasets_dir), capture_output=True, text=True, timeout=600
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"Starting training from iteration {ckpt_iter + 1}" in p.stderr + p.stdout
    assert (out / "model_final.pth").is_file()
    final = DetectionCheckpointer(Trainer.build_model(cfg)).load(str(out / "model_final.pth"))
    assert final["iteration"] == 7


def _run_cli(args, datasets_dir, extra_env=None):
    env = _env(datasets_dir)
    env.update(extra_env or {})
    return subprocess.run(
        [PY, os.path.join(ROOT, "train_net.py"), *args], env=env, capture_output=True, text=True, timeout=300
    )


def _assert_clear(p, *needles):
    assert p.returncode != 0
    assert "Traceback" not in p.stderr, p.stderr[-2000:]
    for n in needles:
        assert n in p.stderr, p.stderr[-2000:]


def test_unknown_config_key_is_one_clear_message(datasets_dir):
    p = _run_cli(["--config-file", BASELINE, "MODEL.NOT_A_KEY", "1"], datasets_dir)
    _assert_clear(p, "Unknown config key 'MODEL.NOT_A_KEY'", "the command line")


def test_unknown_key_in_yaml(tmp_path, datasets_dir):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f'_BASE_: "{BASELINE}"\nSOLVER:\n  BASE_LRR: 0.1\n')
    p = _run_cli(["--config-file", str(bad)], datasets_dir)
    _assert_clear(p, "Unknown config key 'SOLVER.BASE_LRR'", str(bad))


def test_missing_config_file(datasets_dir):
    p = _run_cli(["--config-file", "configs/nope.yaml"], datasets_dir)
    _assert_clear(p, "Config file 'configs/nope.yaml' does not exist")


def test_unregistered_dataset(datasets_dir):
    p = _run_cli(["--config-file", BASELINE, "DATASETS.TRAIN", "('synthetic_instance_train',)"], datasets_dir)
    _assert_clear(p, "Dataset 'synthetic_instance_train' is not registered", "synthetic_instances_train")


def test_missing_dataset_directory(tmp_path, datasets_dir):
    p = _run_cli(["--config-file", BASELINE, "DATASETS.TEST", "('coco_2017_val',)"], datasets_dir)
    _assert_clear(p, "Dataset 'coco_2017_val' needs", "DETECTRON2_DATASETS")


def test_detectron2_missing_is_one_clear_message(tmp_path, datasets_dir):
    shadow = tmp_path / "shadow" / "detectron2"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named detectron2')\n")
    p = _run_cli(["--config-file", BASELINE], datasets_dir, {"PYTHONPATH": str(shadow.parent) + os.pathsep + ROOT})
    _assert_clear(p, "detectron2 is not installed", "DETECTRON2_SRC")


def test_build_cfg_raises_user_error_in_process():
    with pytest.raises(UserError, match="Unknown config key"):
        build_cfg(Args(BASELINE, ["MODEL.NOPE", "1"]))


def test_every_config_loads_and_builds():
    from detectron2.modeling import build_model

    from instseg.config import get_cfg

    configs = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True))
    assert len(configs) >= 6
    for path in configs:
        cfg = get_cfg()
        cfg.merge_from_file(path)
        cfg.MODEL.DEVICE = "cpu"
        cfg.MODEL.HRNET.PRETRAINED = False  # timm's ImageNet weights: nothing is downloaded in tests
        model = build_model(cfg)
        assert sum(p.numel() for p in model.parameters()) > 0, path


def test_solver_optimizer_switch():
    from detectron2.modeling import build_model

    from instseg.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(BASELINE)
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    cfg.SOLVER.OPTIMIZER = "SGD"
    assert isinstance(Trainer.build_optimizer(cfg, model), torch.optim.SGD)
    cfg.SOLVER.OPTIMIZER = "AdamW"
    opt = Trainer.build_optimizer(cfg, model)
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["lr"] == cfg.SOLVER.BASE_LR
    # every trainable parameter is optimised exactly once
    n_opt = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_opt == sum(p.numel() for p in model.parameters() if p.requires_grad)
    cfg.SOLVER.OPTIMIZER = "Adam"
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER"):
        Trainer.build_optimizer(cfg, model)


def test_full_model_gradient_clipping_clips_the_norm_of_all_gradients_together():
    """SOLVER.CLIP_GRADIENTS.CLIP_TYPE full_model (RDSNet's recipe: mmdetection's grad_clip max_norm 35): the total
    norm over every parameter is scaled to CLIP_VALUE, not each parameter's own (detectron2's "norm")."""
    from instseg.config import get_cfg

    cfg = get_cfg()
    cfg.SOLVER.OPTIMIZER = "SGD"
    cfg.SOLVER.BASE_LR, cfg.SOLVER.MOMENTUM, cfg.SOLVER.WEIGHT_DECAY = 1.0, 0.0, 0.0
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 5.0
    model = torch.nn.Linear(2, 1, bias=True)
    grads = {"weight": torch.tensor([[3.0, 4.0]]), "bias": torch.tensor([12.0])}  # norms 5 and 12, total 13

    def step(clip_type):
        cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = clip_type
        with torch.no_grad():
            model.weight.zero_()
            model.bias.zero_()
        opt = Trainer.build_optimizer(cfg, model)
        for n, p in model.named_parameters():
            p.grad = grads[n].clone()
        opt.step()
        return -model.weight.detach().clone(), -model.bias.detach().clone()

    w, b = step("full_model")
    torch.testing.assert_close(w, grads["weight"] * 5 / 13)
    torch.testing.assert_close(b, grads["bias"] * 5 / 13)
    w, b = step("norm")  # detectron2's per-parameter clipping, for contrast
    torch.testing.assert_close(w, grads["weight"])
    torch.testing.assert_close(b, grads["bias"] * 5 / 12)


def test_cpu_processes_share_the_cores(monkeypatch):
    """`--num-gpus N` on a CPU: each process gets cores // N threads, unless OMP_NUM_THREADS says otherwise."""
    from instseg.cpu import usable_cores
    from instseg.engine.setup import split_cpu_threads

    cfg = build_cfg(Args(BASELINE, ["MODEL.DEVICE", "cpu"]), check=False)
    cores = usable_cores()
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert split_cpu_threads(cfg, 2) == max(1, cores // 2) == torch.get_num_threads()
        assert split_cpu_threads(cfg, 4 * cores) == 1 == torch.get_num_threads()
        torch.set_num_threads(before)
        assert split_cpu_threads(cfg, 1) == before  # one process: torch's default stands
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert split_cpu_threads(cfg, 2) == before  # the user's setting stands
        gpu_cfg = cfg.clone()
        gpu_cfg.defrost()
        gpu_cfg.MODEL.DEVICE = "cuda"
        assert split_cpu_threads(gpu_cfg, 2) == before  # GPU processes are left alone
    finally:
        torch.set_num_threads(before)
