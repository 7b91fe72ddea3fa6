#!/usr/bin/env python
"""One leaderboard of every method on the embedded synthetic data, trained with each synthetic config's own recipe
(`make train`'s, x 1.5 for the cascades), evaluated alike, and drawn.

    python tools/leaderboard.py                                  # all entries, under output/leaderboard
    python tools/leaderboard.py --entries mask_rcnn,dsg --retrain
    make leaderboard

Per entry: train (``train_net.py`` in a subprocess, a progress line per logged iteration) unless
``<output>/<entry>/model_final.pth`` exists with a stamp of the same config (after overrides) and commit
(``--retrain`` forces); then, in this process, evaluate on ``synthetic_instances_val`` (box and mask AP, AP50, AP75,
APs, per-class mask AP of the thin ``bar`` and the holed ``ring``, and DSG's huddled-instance mask AP: the images where
some instance has a box IoU > T_O = 0.3 with another (T_P = 0), AP as the mean over those instances, Appendix 6.1) and,
for panoptic models, PQ on their panoptic split. Inference time at 256 x 256 and at 800 x 1333 (trained weights, one
thread, every model in turns in one run: ``tools/benchmark_inference.py``) as ratios to Mask R-CNN, the parameters
that run at inference, the training time from the log. An entry that fails is reported as failed; the
others still are.

Writes ``leaderboard.json``, ``leaderboard.md``, ``leaderboard.png`` (mask AP against the 800 x 1333 time ratio) and
``gallery.png`` (4 validation images chosen for huddled instances, a ring and bars; ground truth and one column per
method, detectron2's ``Visualizer``).
"""

import argparse
import contextlib
import hashlib
import io
import json
import math
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# name, config, kind ("instance": instances with masks; "box": boxes only; "panoptic": also panoptic_seg)
ENTRIES = [
    ("mask_rcnn", "configs/Baselines/mask_rcnn_R_18_FPN_synthetic.yaml", "instance"),
    ("cascade_mask_rcnn", "configs/Baselines/cascade_mask_rcnn_R_18_FPN_synthetic.yaml", "instance"),
    ("retinanet", "configs/Baselines/retinanet_R_18_FPN_synthetic.yaml", "box"),
    ("panoptic_fpn", "configs/Baselines/panoptic_fpn_R_18_FPN_synthetic.yaml", "panoptic"),
    ("mask_point", "configs/MaskPoint/mask_point_rcnn_R_18_FPN_synthetic.yaml", "instance"),
    ("maskplus", "configs/MaskPlus/maskplus_R_18_FPN_synthetic.yaml", "instance"),
    ("maskplus_plus", "configs/MaskPlus/maskplus_plus_cascade_R_18_FPN_synthetic.yaml", "instance"),
    ("dsg", "configs/DSG/dsg_R_18_FPN_synthetic.yaml", "instance"),
    ("dsg_light", "configs/DSG/dsg_light_R_18_FPN_synthetic.yaml", "instance"),
    ("cascade_dsg", "configs/DSG/cascade_dsg_R_18_FPN_synthetic.yaml", "instance"),
    ("rdsnet", "configs/RDSNet/rdsnet_R_18_FPN_synthetic.yaml", "instance"),
    ("casnet", "configs/CASNet/casnet_hrnet_w18_small_synthetic.yaml", "panoptic"),
]
BASELINE = "mask_rcnn"
INSTANCES_VAL = "synthetic_instances_val"
HUDDLED_T_O, HUDDLED_T_P = 0.3, 0.0
CLASSES_SHOWN = ("bar", "ring")
GALLERY_IMAGES = 4


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--entries", default=",".join(e[0] for e in ENTRIES), help="comma-separated entry names")
    p.add_argument("--output", default="output/leaderboard")
    p.add_argument("--retrain", action="store_true", help="train even where a checkpoint of the same stamp exists")
    p.add_argument("--num-gpus", type=int, default=2, help="training processes per entry (CPU: 2, as make train)")
    p.add_argument("--sizes", default="256x256,800x1333", help="inference sizes timed, HxW, comma-separated")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per model and size")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for every entry (e.g. a short budget)")
    args = p.parse_args(argv)
    known = {e[0] for e in ENTRIES}
    args.entries = [e for e in args.entries.split(",") if e]
    unknown = [e for e in args.entries if e not in known]
    if unknown:
        p.error(f"unknown entries {unknown}; known: {sorted(known)}")
    args.sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",") if s]
    return args


def log(msg):
    print(f"[leaderboard {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def entry_cfg(config, opts):
    from instseg.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(ROOT, config))
    cfg.merge_from_list(list(opts))
    return cfg


def commit():
    try:
        return subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=ROOT, text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def stamp_of(cfg, config):
    return {"config": config, "config_sha": hashlib.sha1(cfg.dump().encode()).hexdigest(), "commit": commit()}


# --------------------------------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------------------------------
ITER_RE = re.compile(r"eta: (\S+)\s+iter: (\d+)")


def train(name, config, out, opts, num_gpus):
    """``train_net.py`` in a subprocess; a progress line per new iteration the log reports. Returns its exit code."""
    cmd = [sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file", os.path.join(ROOT, config)]
    cmd += ["--num-gpus", str(num_gpus), "--dist-url", "auto", "OUTPUT_DIR", out, *opts]
    cmd += ["DATASETS.TEST", "()"]  # evaluated afterwards, alike for every entry
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "leaderboard_train.log"), "w") as sink:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
        seen = None
        while proc.poll() is None:
            time.sleep(2)
            seen = _report_progress(name, out, seen)
        _report_progress(name, out, seen)
    return proc.returncode


def _report_progress(name, out, seen):
    path = os.path.join(out, "log.txt")
    if not os.path.isfile(path):
        return seen
    with open(path) as f:
        hits = ITER_RE.findall(f.read())
    if hits and hits[-1] != seen:
        eta, it = hits[-1]
        log(f"{name}: training, iteration {int(it) + 1}, eta {eta}")
        return hits[-1]
    return seen


def training_seconds(out):
    path = os.path.join(out, "log.txt")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        m = re.findall(r"Total training time: (\d+):(\d+):(\d+)", f.read())
    return None if not m else int(m[-1][0]) * 3600 + int(m[-1][1]) * 60 + int(m[-1][2])


# --------------------------------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------------------------------
def build_trained(cfg, weights):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    model = build_model(cfg).eval()
    DetectionCheckpointer(model).load(weights)
    return model


def evaluate(name, cfg, kind, weights, out):
    """Box / mask AP and their details on the instance split (+ PQ on the panoptic one), the huddled mask AP."""
    from detectron2.data.datasets.coco import convert_to_coco_dict
    from detectron2.evaluation import COCOEvaluator, inference_on_dataset

    from instseg.engine import Trainer
    from instseg.evaluation.huddled import _coco, _image_overlaps, _select, instance_mean_ap

    model = build_trained(cfg, weights)
    res = {}
    tasks = ("bbox",) if kind == "box" else ("bbox", "segm")
    folder = os.path.join(out, "leaderboard_eval")
    evaluator = COCOEvaluator(INSTANCES_VAL, tasks=tasks, distributed=False, output_dir=folder)
    loader = Trainer.build_test_loader(cfg, INSTANCES_VAL)
    coco = inference_on_dataset(model, loader, evaluator)
    res["box_AP"] = coco["bbox"]["AP"]
    if "segm" in coco:
        s = coco["segm"]
        res.update({"mask_AP": s["AP"], "AP50": s["AP50"], "AP75": s["AP75"], "APs": s["APs"]})
        res.update({f"mask_AP_{c}": s.get(f"AP-{c}") for c in CLASSES_SHOWN})
        with open(os.path.join(folder, "coco_instances_results.json")) as f:
            results = json.load(f)
        gt_dict = convert_to_coco_dict(INSTANCES_VAL)
        ids = _select(_image_overlaps(gt_dict), HUDDLED_T_O, HUDDLED_T_P)
        res["huddled_mask_AP"] = instance_mean_ap(_coco(gt_dict), results, "segm", ids) if ids else None
        res["huddled_images"] = len(ids)
    if kind == "panoptic":
        pan_name = next(n for n in cfg.DATASETS.TEST if "panoptic" in n)
        evaluator = Trainer.build_evaluator(cfg, pan_name, os.path.join(out, "leaderboard_eval_panoptic"))
        pan = inference_on_dataset(model, Trainer.build_test_loader(cfg, pan_name), evaluator)
        res.update({k: pan["panoptic_seg"][k] for k in ("PQ", "PQ_th", "PQ_st")})
    return res


def timings(rows, sizes, repeats):
    """Inference time of the trained models at each size, in turns in one run, as ratios to the baseline."""
    from tools import benchmark_inference

    models = [
        ["--model", r["name"], os.path.join(ROOT, r["config"]), *r["opts"], "MODEL.WEIGHTS", r["weights"]]
        for r in rows
        if r.get("weights")
    ]
    if not models:
        return
    for h, w in sizes:
        argv = [x for m in models for x in m]
        argv += ["--size", str(h), str(w), "--repeats", str(repeats), "--threads", "1", "--json"]
        with contextlib.redirect_stdout(io.StringIO()):
            result = benchmark_inference.main(argv)
        ms = result["models"]
        base = ms.get(BASELINE, ms[models[0][1]])
        for r in rows:
            if r["name"] in ms:
                r[f"time_{h}x{w}"] = ms[r["name"]]["seconds"] / base["seconds"]
                r["params_M"] = ms[r["name"]]["params_run"] / 1e6


# --------------------------------------------------------------------------------------------------------------------
# outputs
# --------------------------------------------------------------------------------------------------------------------
COLUMNS = [
    ("box_AP", "box AP"),
    ("mask_AP", "mask AP"),
    ("AP50", "AP50"),
    ("AP75", "AP75"),
    ("APs", "APs"),
    ("PQ", "PQ"),
    ("huddled_mask_AP", f"huddled mask AP (T_O {HUDDLED_T_O})"),
    *[(f"mask_AP_{c}", f"{c} mask AP") for c in CLASSES_SHOWN],
]


def _fmt(v, digits=1):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:.{digits}f}"


def markdown(rows, sizes, meta):
    head = ["method"] + [c[1] for c in COLUMNS] + [f"time {h}×{w}" for h, w in sizes]
    head += ["params (M)", "train (min)", "iterations"]
    lines = [f"Commit {meta['commit'][:10]}, {meta['machine']}; times are ratios to {BASELINE} (one thread).", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r.get("error"):
            lines.append(f"| {r['name']} | failed: {r['error']} |" + " |" * (len(head) - 2))
            continue
        cells = [r["name"]] + [_fmt(r.get(k)) for k, _ in COLUMNS]
        cells += [_fmt(r.get(f"time_{h}x{w}"), 2) + ("×" if r.get(f"time_{h}x{w}") else "") for h, w in sizes]
        t = r.get("train_seconds")
        cells += [_fmt(r.get("params_M"), 2), _fmt(None if t is None else t / 60), str(r.get("iterations", "—"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def scatter(rows, sizes, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, w = sizes[-1]
    key = f"time_{h}x{w}"
    pts = [r for r in rows if r.get("mask_AP") is not None and r.get(key)]
    fig, ax = plt.subplots(figsize=(7, 5))
    for r in pts:
        ax.scatter(r[key], r["mask_AP"], s=30)
        ax.annotate(r["name"], (r[key], r["mask_AP"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(f"inference time at {h}×{w}, ratio to {BASELINE}")
    ax.set_ylabel("mask AP (synthetic_instances_val)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def gallery_images(dicts, k=GALLERY_IMAGES):
    """``k`` validation images: the most huddled, then one with the most rings, one with the most bars, then by
    instance count."""
    from instseg.data.synthetic import THING_CLASSES
    from instseg.evaluation.huddled import _max_other_iou

    def count(d, cls):
        return sum(a["category_id"] == cls for a in d.get("annotations", []))

    def huddled(d):
        boxes = [a["bbox"] for a in d.get("annotations", [])]  # XYXY_ABS here: converted below
        xywh = [[b[0], b[1], b[2] - b[0], b[3] - b[1]] for b in boxes]
        return float((_max_other_iou(xywh) > HUDDLED_T_O).sum()) if xywh else 0.0

    ring, bar = THING_CLASSES.index("ring"), THING_CLASSES.index("bar")
    order = [max(dicts, key=huddled), max(dicts, key=lambda d: count(d, ring)), max(dicts, key=lambda d: count(d, bar))]
    order += sorted(dicts, key=lambda d: -len(d.get("annotations", [])))
    chosen, seen = [], set()
    for d in order:
        if d["image_id"] not in seen:
            chosen.append(d)
            seen.add(d["image_id"])
        if len(chosen) == k:
            break
    return chosen


def gallery(rows, cfgs, path):
    import cv2
    import numpy as np
    import torch
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.utils.visualizer import Visualizer

    from tools.demo import SEGMENTATION_KEYS

    meta = MetadataCatalog.get(INSTANCES_VAL)
    images = gallery_images(DatasetCatalog.get(INSTANCES_VAL))
    done = [r for r in rows if r.get("weights")]
    grid = []
    for d in images:
        bgr = cv2.imread(d["file_name"])
        rgb = bgr[:, :, ::-1]
        boxes_and_masks = {k: v for k, v in d.items() if k not in SEGMENTATION_KEYS}  # no stuff: an instance split
        row = [Visualizer(rgb, meta, scale=1.0).draw_dataset_dict(boxes_and_masks).get_image()]
        for r in done:
            model = build_trained(cfgs[r["name"]], r["weights"])
            image = torch.as_tensor(np.ascontiguousarray(bgr.transpose(2, 0, 1)))
            if cfgs[r["name"]].INPUT.FORMAT == "RGB":
                image = image.flip(0)
            with torch.no_grad():
                inst = model([{"image": image, "height": bgr.shape[0], "width": bgr.shape[1]}])[0]["instances"]
            inst = inst.to("cpu")
            inst = inst[inst.scores >= 0.5]
            row.append(Visualizer(rgb, meta, scale=1.0).draw_instance_predictions(inst).get_image())
        grid.append(
            np.concatenate([_label(c, n) for c, n in zip(row, ["ground truth"] + [r["name"] for r in done])], 1)
        )
    cv2.imwrite(path, np.concatenate(grid, 0)[:, :, ::-1])


def _label(image, text):
    import cv2
    import numpy as np

    out = np.ascontiguousarray(image.copy())
    cv2.rectangle(out, (0, 0), (out.shape[1], 16), (255, 255, 255), -1)
    cv2.putText(out, text, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return out


# --------------------------------------------------------------------------------------------------------------------
def main(argv=None):
    args = parse_args(argv)
    import platform

    from instseg.data.datasets import register_synthetic_from_cfg
    from instseg.registry import load_methods

    load_methods()
    os.makedirs(args.output, exist_ok=True)
    by_name = {e[0]: e for e in ENTRIES}
    rows, cfgs = [], {}
    for name in args.entries:
        _, config, kind = by_name[name]
        row = {"name": name, "config": config, "kind": kind, "opts": list(args.opts)}
        rows.append(row)
        out = os.path.abspath(os.path.join(args.output, name))
        try:
            cfg = entry_cfg(config, args.opts)
            cfg.MODEL.DEVICE = "cpu"
            register_synthetic_from_cfg(cfg)
            cfgs[name] = cfg
            row["iterations"] = cfg.SOLVER.MAX_ITER
            stamp = stamp_of(cfg, config)
            stamp_path = os.path.join(out, "leaderboard_stamp.json")
            weights = os.path.join(out, "model_final.pth")
            old = json.load(open(stamp_path)) if os.path.isfile(stamp_path) else None
            if os.path.isfile(weights) and old == stamp and not args.retrain:
                log(f"{name}: reusing {weights} (same config and commit)")
            else:
                log(f"{name}: training {config} ({cfg.SOLVER.MAX_ITER} iterations)")
                rc = train(name, config, out, args.opts, args.num_gpus)
                if rc != 0 or not os.path.isfile(weights):
                    raise RuntimeError(f"training exited with {rc}; see {os.path.join(out, 'leaderboard_train.log')}")
                with open(stamp_path, "w") as f:
                    json.dump(stamp, f)
            row["weights"] = weights
            row["train_seconds"] = training_seconds(out)
            log(f"{name}: evaluating")
            row.update(evaluate(name, cfg, kind, weights, out))
            log(f"{name}: box AP {_fmt(row.get('box_AP'))}, mask AP {_fmt(row.get('mask_AP'))}")
        except Exception as e:  # one entry's failure does not stop the others
            row["error"] = f"{type(e).__name__}: {e}"
            row.pop("weights", None)
            log(f"{name}: FAILED: {row['error']}")
    try:
        log("timing the trained models")
        timings(rows, args.sizes, args.repeats)
    except Exception as e:
        log(f"timing FAILED: {type(e).__name__}: {e}")
    meta = {"commit": commit(), "machine": platform.processor() or platform.machine(), "sizes": args.sizes}
    with open(os.path.join(args.output, "leaderboard.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    with open(os.path.join(args.output, "leaderboard.md"), "w") as f:
        f.write(markdown(rows, args.sizes, meta))
    drawings = {
        "leaderboard.png": lambda p: scatter(rows, args.sizes, p),
        "gallery.png": lambda p: gallery(rows, cfgs, p),
    }
    for what, draw in drawings.items():
        try:
            draw(os.path.join(args.output, what))
        except Exception as e:
            log(f"{what} FAILED: {type(e).__name__}: {e}")
    log(f"wrote {args.output}/leaderboard.{{json,md,png}} and gallery.png")
    return rows


if __name__ == "__main__":
    main()
