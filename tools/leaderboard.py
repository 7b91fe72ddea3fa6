#!/usr/bin/env python
"""One leaderboard of every method on the embedded synthetic data, trained with each synthetic config's own recipe
(`make train`'s, x 1.5 for the cascades), evaluated alike, and drawn.

    python tools/leaderboard.py                                  # all entries, under output/leaderboard
    python tools/leaderboard.py --entries mask_rcnn,dsg --retrain
    make leaderboard

Per entry: train (``train_net.py`` in a subprocess, a progress line per logged iteration; a training of the same
stamp that was cut, e.g. by a session's end, resumes from its last checkpoint) unless
``<output>/<entry>/model_final.pth`` exists with a stamp of the same config (after overrides) and code
(``SHARED_CODE`` and its method's package; ``--retrain`` forces); then, in this process, evaluate on
``synthetic_instances_val`` (box and mask AP, AP50, AP75, APs, per-class mask AP of the thin ``bar`` and the holed
``ring``, and DSG's huddled-instance mask AP: the images where some instance has a box IoU > T_O = 0.3 with another
(T_P = 0), AP as the mean over those instances, Appendix 6.1) and, for panoptic models, PQ on their panoptic split.
Inference time at 256 x 256 and at 800 x 1333 (trained weights, the most huddled validation image resized, one
thread, every model in turns in one run: ``tools/benchmark_inference.py``) as ratios to Mask R-CNN, the parameters
that run at inference, the training time from the log. An entry that fails is reported as failed; the others still are.

Writes ``leaderboard.json``, ``leaderboard.md``, ``leaderboard.png`` (mask AP against the 800 x 1333 time ratio) and
``gallery.png`` (4 validation images chosen for huddled instances, a ring and bars; ground truth and one column per
method, detectron2's ``Visualizer``).
"""

import argparse
import contextlib
import datetime
import hashlib
import io
import json
import math
import os
import re
import shutil
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
STAMP, PENDING = "leaderboard_stamp.json", "leaderboard_pending.json"  # what trained model_final.pth; what is training
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
    p.add_argument(
        "opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for every entry (e.g. a short budget); last"
    )
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
    from instseg.engine.setup import merge_config

    cfg = get_cfg()
    merge_config(cfg, os.path.join(ROOT, config), list(opts))
    return cfg


def _git(*args):
    try:
        return subprocess.check_output(["git", *args], cwd=ROOT, text=True, stderr=subprocess.DEVNULL)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def commit():
    return _git("rev-parse", "HEAD").strip()


# what a trained model depends on besides its config: the shared package, the ops, the training script, and its own
# method package (the method packages import none of each other). Tests, tools, README, the other methods and the
# leaderboard itself are left out, so that committing them keeps the trained checkpoints.
SHARED_CODE = ("instseg", "csrc", "train_net.py", "setup.py")


def method_nodes():
    """{method package: the MODEL nodes its ``add_<method>_config`` adds}, read off the registered functions. A
    config under ``configs/<Folder>/`` belongs to the package ``<folder>`` (lower case; ``Baselines``: none)."""
    from detectron2.config import CfgNode as CN

    from instseg.config import method_config_functions

    nodes = {}
    for fn in method_config_functions():
        blank = CN({"MODEL": CN()})
        fn(blank)
        nodes[fn.__module__.split(".")[0]] = tuple(blank.MODEL.keys())
    return nodes


def code_sha(paths=SHARED_CODE):
    """A hash of the content on disk of the files git knows (or would: untracked, not ignored) under ``paths``: the
    same code gives the same hash, committed or not."""
    listed = _git("ls-files", "--cached", "--others", "--exclude-standard", "--", *paths).split("\n")
    h = hashlib.sha1()
    for name in sorted(f for f in listed if f):
        path = os.path.join(ROOT, name)
        if os.path.isfile(path):
            with open(path, "rb") as f:
                h.update(name.encode() + b"\0" + hashlib.sha1(f.read()).digest())
    return h.hexdigest()


def stamp_of(cfg, config):
    """What a checkpoint was trained from: the config after overrides, without the other methods' MODEL nodes (their
    keys do not reach this model), and the code it ran: ``SHARED_CODE`` and its own method package."""
    nodes = method_nodes()
    folder = config.split("/")[1].lower() if config.startswith("configs/") else ""
    own = folder if folder in nodes else None
    cfg = cfg.clone()
    cfg.defrost()
    for package, keys in nodes.items():
        for key in keys if package != own else ():
            cfg.MODEL.pop(key, None)
    paths = SHARED_CODE + ((own,) if own else ())
    return {"config": config, "config_sha": hashlib.sha1(cfg.dump().encode()).hexdigest(), "code_sha": code_sha(paths)}


# --------------------------------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------------------------------
# detectron2's metrics line; its first iterations are untimed and carry no "eta:" yet
ITER_RE = re.compile(r"(?:eta: (.+?)\s+)?iter: (\d+)")


def train(name, config, out, opts, num_gpus, resume=False):
    """``train_net.py`` in a subprocess (``--resume``: from ``out``'s last checkpoint); a progress line per new
    iteration the log reports. Returns its exit code."""
    cmd = [sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file", os.path.join(ROOT, config)]
    cmd += ["--num-gpus", str(num_gpus), "--dist-url", "auto", *(["--resume"] if resume else [])]
    cmd += ["OUTPUT_DIR", out, *opts, "DATASETS.TEST", "()"]  # evaluated afterwards, alike for every entry
    os.makedirs(out, exist_ok=True)
    log_txt = os.path.join(out, "log.txt")
    if resume:  # the cut runs' logs are kept, one per segment: their time counts (training_seconds)
        if os.path.isfile(log_txt):
            os.replace(log_txt, os.path.join(out, f"log.segment{len(_segment_logs(out))}.txt"))
    else:
        for old in _segment_logs(out):
            os.remove(old)
        if os.path.isfile(log_txt):  # detectron2 appends: keep the old run's log apart
            os.replace(log_txt, os.path.join(out, "log.previous.txt"))
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
        log(f"{name}: training, iteration {int(it) + 1}" + (f", eta {eta}" if eta else ""))
        return hits[-1]
    return seen


def _segment_logs(out):
    """The logs of the runs of this training that were cut and resumed, in order."""
    names = [n for n in os.listdir(out) if re.fullmatch(r"log\.segment\d+\.txt", n)] if os.path.isdir(out) else []
    return [os.path.join(out, n) for n in sorted(names, key=lambda n: int(re.findall(r"\d+", n)[0]))]


LOG_TIME_RE = re.compile(r"^\[(\d\d)/(\d\d) (\d\d):(\d\d):(\d\d)\] ", re.M)  # detectron2's log.txt lines


def _total_training_time(text):
    """detectron2's "Total training time" of a run that ended, in seconds, else None."""
    total = re.findall(r"Total training time: (\d+):(\d+):(\d+)", text)
    return None if not total else int(total[-1][0]) * 3600 + int(total[-1][1]) * 60 + int(total[-1][2])


def _log_seconds(path):
    """One run's training time: detectron2's "Total training time" where the run ended, else (a cut run) from its
    "Starting training" line to its last time-stamped line (up to one logging period short)."""
    with open(path) as f:
        text = f.read()
    total = _total_training_time(text)
    if total is not None:
        return total
    start = text.find("Starting training from iteration")
    stamps = LOG_TIME_RE.findall(text[text.rfind("\n[", 0, start) + 1 :]) if start >= 0 else []
    if len(stamps) < 2:
        return 0
    first, last = (datetime.datetime(2000, *map(int, t)) for t in (stamps[0], stamps[-1]))  # a leap year: 02/29 too
    return int((last - first).total_seconds()) % (366 * 86400)  # across a year's end


def training_seconds(out):
    """The training's time: its last run's (None unless it ended) and, where it was cut and resumed, the cut runs'."""
    last = _read(os.path.join(out, "log.txt"), lambda f: _total_training_time(f.read()))
    return None if last is None else last + sum(_log_seconds(p) for p in _segment_logs(out))


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
    for old in (folder, folder + "_panoptic"):  # detectron2 caches the ground truth's json there: never reuse it
        shutil.rmtree(old, ignore_errors=True)
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
        evaluator = Trainer.build_evaluator(cfg, pan_name, folder + "_panoptic")
        pan = inference_on_dataset(model, Trainer.build_test_loader(cfg, pan_name), evaluator)
        res.update({k: pan["panoptic_seg"][k] for k in ("PQ", "PQ_th", "PQ_st")})
    return res


def _bench(specs, size, repeats, image):
    from tools import benchmark_inference

    argv = [x for m in specs for x in ["--model", *m]]
    argv += ["--size", str(size[0]), str(size[1]), "--repeats", str(repeats), "--threads", "1", "--json"]
    argv += ["--image", image, "--as-configured"]  # as evaluated: each config's score threshold and detections
    with contextlib.redirect_stdout(io.StringIO()):
        return benchmark_inference.main(argv)["models"]


def timings(rows, sizes, repeats, image):
    """Inference time of the trained models on ``image`` resized to each size, in turns in one run, as ratios to the
    reference (Mask R-CNN when it trained, else the first model: returned). A model that fails to run is timed alone
    against the reference instead, or left out, so that the others keep their columns."""
    specs = [
        [r["name"], os.path.join(ROOT, r["config"]), *r["opts"], "MODEL.WEIGHTS", r["weights"]]
        for r in rows
        if r.get("weights")
    ]
    if not specs:
        return None
    specs.sort(key=lambda m: m[0] != BASELINE)  # the reference first
    ref = specs[0][0]
    for size in sizes:
        key = f"time_{size[0]}x{size[1]}"
        try:
            ms = _bench(specs, size, repeats, image)
        except Exception as e:
            log(f"timing {size} together FAILED ({type(e).__name__}: {e}); each model against {ref} instead")
            ms = {}
            for m in specs[1:]:
                try:
                    ms.update(_bench([specs[0], m], size, repeats, image))
                except Exception as e:
                    log(f"{m[0]}: timing FAILED: {type(e).__name__}: {e}")
        for r in rows:
            if r["name"] in ms:
                r[key] = ms[r["name"]]["ratio_to_" + ref]
                r[f"detections_{size[0]}x{size[1]}"] = ms[r["name"]]["detections"]
                r["params_M"] = ms[r["name"]]["params_run"] / 1e6
    return ref


# --------------------------------------------------------------------------------------------------------------------
# outputs
# --------------------------------------------------------------------------------------------------------------------
COLUMNS = [
    ("box_AP", "box AP"),
    ("mask_AP", "mask AP"),
    ("AP50", "mask AP50"),
    ("AP75", "mask AP75"),
    ("APs", "mask APs"),
    ("PQ", "PQ"),
    ("huddled_mask_AP", f"huddled mask AP (T_O {HUDDLED_T_O}, T_P {HUDDLED_T_P:g})"),
    *[(f"mask_AP_{c}", f"{c} mask AP") for c in CLASSES_SHOWN],
]


def _fmt(v, digits=1):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:.{digits}f}"


def markdown(rows, sizes, meta):
    head = ["method"] + [c[1] for c in COLUMNS] + [f"time {h}×{w}" for h, w in sizes]
    head += ["params (M)", "train (min)", "iterations"]
    lines = [
        f"Commit {meta['commit'][:10]}, {meta['machine']}; times are ratios to {meta['reference']} (one thread, "
        f"validation image {meta.get('timed_image', '?')} resized to each size, each model at its config's test "
        "settings).",
        "",
    ]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r.get("error"):
            why = re.sub(r"[|\n]+", " ", r["error"])
            lines.append(f"| {r['name']} | failed: {why} |" + " |" * (len(head) - 2))
            continue
        cells = [r["name"]] + [_fmt(r.get(k)) for k, _ in COLUMNS]
        cells += [_fmt(r.get(f"time_{h}x{w}"), 2) + ("×" if r.get(f"time_{h}x{w}") else "") for h, w in sizes]
        t = r.get("train_seconds")
        cells += [_fmt(r.get("params_M"), 2), _fmt(None if t is None else t / 60), str(r.get("iterations", "—"))]
        lines.append("| " + " | ".join(cells) + " |")
    huddled = next((r["huddled_images"] for r in rows if r.get("huddled_images") is not None), None)
    budgets = sorted({r["iterations"] for r in rows if r.get("iterations")})
    overrides = " ".join(meta.get("opts") or [])
    recipe = f"its synthetic config's recipe with `{overrides}`" if overrides else "its synthetic config's recipe"
    why = ": the cascades 1.5×, as their 20e-vs-12e COCO schedules" if len(budgets) > 1 and not overrides else ""
    lines += [
        "",
        f"Each entry trains with {recipe} ({' or '.join(map(str, budgets))} iterations{why}). Huddled mask AP: DSG's "
        "Appendix 6.1 on the "
        f"{huddled if huddled is not None else '?'} validation images with an instance whose box IoU with another "
        f"exceeds T_O. Mask columns are empty (—) for box-only entries and where detectron2 reports no AP.",
    ]
    return "\n".join(lines) + "\n"


def scatter(rows, sizes, path, reference):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, w = sizes[-1]
    key = f"time_{h}x{w}"
    pts = [r for r in rows if _is_number(r.get("mask_AP")) and _is_number(r.get(key))]
    fig, ax = plt.subplots(figsize=(7, 5), dpi=PLOT_DPI)  # names are placed at the dpi they are saved with
    colours = plt.get_cmap("tab20").colors  # 20 distinct: the default cycle's 10 repeat on this board
    for k, r in enumerate(pts):
        ax.scatter(r[key], r["mask_AP"], s=30, color=colours[k % len(colours)])
    ax.set_xlabel(f"inference time at {h}×{w}, ratio to {reference}")
    ax.set_ylabel("mask AP (synthetic_instances_val)")
    boxes_only = [r["name"] for r in rows if r.get("kind") == "box"]
    if boxes_only:
        ax.set_title(f"not drawn (no masks): {', '.join(boxes_only)}", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()  # before the names: it moves the axes, which the names' placement measures
    _place_labels(fig, ax, [(r["name"], r[key], r["mask_AP"]) for r in pts])
    fig.savefig(path, dpi=PLOT_DPI)
    plt.close(fig)


# where a point's name goes, in points from it (the first free one): beside it, then further off with a leader line
LABEL_OFFSETS = tuple((dx, dy, "left" if dx > 0 else "right") for dy in (4, -11) for dx in (4, -4)) + tuple(
    (dx, dy, "left" if dx > 0 else "right") for dy in (16, -23, 28, -35) for dx in (8, -8)
)
PLOT_DPI = 120
MARKER_RADIUS_PT = 3  # ax.scatter's s=30 (points²) is a disc of radius ~3 pt


def _place_labels(fig, ax, points):
    """Each point's name beside it, at the first of LABEL_OFFSETS where it stays inside the axes and covers no
    other point's marker and no name placed before (the first one if none is free); returns the texts."""
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox

    fig.canvas.draw()  # final axis limits, so the labels' extents are where they will be drawn
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    r = MARKER_RADIUS_PT * fig.dpi / 72
    markers = [ax.transData.transform((x, y)) for _, x, y in points]
    markers = [Bbox.from_extents(u - r, v - r, u + r, v + r) for u, v in markers]
    placed = []
    for i, (name, x, y) in enumerate(points):
        others = [m for j, m in enumerate(markers) if j != i] + [Text.get_window_extent(t, renderer) for t in placed]
        for dx, dy, ha in LABEL_OFFSETS:
            text = _annotate(ax, name, (x, y), dx, dy, ha)
            text.update_positions(renderer)
            box = Text.get_window_extent(text, renderer)  # the name alone, not its leader line
            inside = frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1)
            if inside and not any(box.overlaps(other) for other in others):
                break
            text.remove()
        else:
            dx, dy, ha = LABEL_OFFSETS[0]
            text = _annotate(ax, name, (x, y), dx, dy, ha)
        placed.append(text)
    return placed


def _annotate(ax, name, xy, dx, dy, ha):
    far = abs(dy) > 12  # off its point's row: a thin line says whose name it is
    line = {"arrowstyle": "-", "lw": 0.5, "color": "0.5", "shrinkA": 0, "shrinkB": 3} if far else None
    return ax.annotate(name, xy, textcoords="offset points", xytext=(dx, dy), ha=ha, fontsize=8, arrowprops=line)


def gallery_images(dicts, k=GALLERY_IMAGES):
    """``k`` validation images: the most huddled, then one with the most rings, one with the most bars, then by
    instance count."""
    from detectron2.structures import BoxMode

    from instseg.data.synthetic import THING_CLASSES
    from instseg.evaluation.huddled import _max_other_iou

    def count(d, cls):
        return sum(a["category_id"] == cls for a in d.get("annotations", []))

    def huddled(d):
        annos = [a for a in d.get("annotations", []) if not a.get("iscrowd", 0)]
        xywh = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYWH_ABS) for a in annos]
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
    """Ground truth and each trained method on the chosen images (scores >= 0.5), a labelled column each; a method
    that fails to run gets a blank tile saying so."""
    import cv2
    import numpy as np
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.engine import DefaultPredictor
    from detectron2.utils.visualizer import Visualizer

    from tools.demo import SEGMENTATION_KEYS

    meta = MetadataCatalog.get(INSTANCES_VAL)
    images = gallery_images(DatasetCatalog.get(INSTANCES_VAL))
    columns = {"ground truth": []}
    for d in images:
        rgb = cv2.imread(d["file_name"])[:, :, ::-1]
        boxes_and_masks = {k: v for k, v in d.items() if k not in SEGMENTATION_KEYS}  # no stuff: an instance split
        columns["ground truth"].append(Visualizer(rgb, meta).draw_dataset_dict(boxes_and_masks).get_image())
    for r in rows:
        if not r.get("weights"):
            continue
        tiles = []
        try:
            cfg = cfgs[r["name"]].clone()
            cfg.MODEL.WEIGHTS = r["weights"]
            predictor = DefaultPredictor(cfg)  # the config's input format and test-time resize
            for d in images:
                bgr = cv2.imread(d["file_name"])
                inst = predictor(bgr)["instances"].to("cpu")
                inst = inst[inst.scores >= 0.5]
                tiles.append(Visualizer(bgr[:, :, ::-1], meta).draw_instance_predictions(inst).get_image())
        except Exception as e:
            log(f"{r['name']}: gallery FAILED: {type(e).__name__}: {e}")
            tiles = [np.full_like(columns["ground truth"][0], 255) for _ in images]
            r["gallery_error"] = f"{type(e).__name__}: {e}"
        columns[r["name"]] = tiles
    grid = [np.concatenate([_label(columns[n][k], n) for n in columns], axis=1) for k in range(len(images))]
    cv2.imwrite(path, np.concatenate(grid, axis=0)[:, :, ::-1])


LABEL_HEIGHT = 16


def _label(image, text):
    """The tile under a white strip with its column's name (nothing of the image hidden)."""
    import cv2
    import numpy as np

    strip = np.full((LABEL_HEIGHT, image.shape[1], 3), 255, dtype=np.uint8)
    cv2.putText(strip, text, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([strip, image.astype(np.uint8)], axis=0)


def _is_number(value):
    return isinstance(value, (int, float)) and math.isfinite(value)


def _finite(value):
    """NaN (detectron2's "no such instance") as None, so that leaderboard.json is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------------------------------
def main(argv=None):
    args = parse_args(argv)

    from instseg.data.datasets import register_synthetic_from_cfg
    from instseg.registry import load_methods
    from tools.bench.common import machine_name

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
            stamp_path, pending_path = (os.path.join(out, f) for f in (STAMP, PENDING))
            weights = os.path.join(out, "model_final.pth")
            old, pending = (_read(p, json.load) for p in (stamp_path, pending_path))
            if os.path.isfile(weights) and old == stamp and not args.retrain:
                log(f"{name}: reusing {weights} (same config and code)")
            else:
                # a training of this very stamp that was cut (e.g. the session ended) goes on from its last checkpoint
                resume = pending == stamp and os.path.isfile(os.path.join(out, "last_checkpoint")) and not args.retrain
                if resume:
                    last = _read(os.path.join(out, "last_checkpoint"), lambda f: f.read().strip())
                    log(f"{name}: resuming {config} from {last}")
                else:
                    for stale in (stamp_path, weights):  # no old stamp may end up next to new weights
                        if os.path.isfile(stale):
                            os.remove(stale)
                    os.makedirs(out, exist_ok=True)
                    with open(pending_path, "w") as f:
                        json.dump(stamp, f)
                    log(f"{name}: training {config} ({cfg.SOLVER.MAX_ITER} iterations)")
                rc = train(name, config, out, args.opts, args.num_gpus, resume=resume)
                if rc != 0 or not os.path.isfile(weights):
                    raise RuntimeError(
                        f"training exited with {rc}: {_error_line(os.path.join(out, 'leaderboard_train.log'))} "
                        f"(whole log: {os.path.join(out, 'leaderboard_train.log')})"
                    )
                with open(stamp_path, "w") as f:
                    json.dump(stamp, f)
                os.remove(pending_path)
            row["weights"] = weights
            row["train_seconds"] = training_seconds(out)
            log(f"{name}: evaluating")
            row.update(evaluate(name, cfg, kind, weights, out))
            log(f"{name}: box AP {_fmt(row.get('box_AP'))}, mask AP {_fmt(row.get('mask_AP'))}")
        except Exception as e:  # one entry's failure does not stop the others
            row["error"] = f"{type(e).__name__}: {e}"
            row.pop("weights", None)
            log(f"{name}: FAILED: {row['error']}")
    # timed on a real validation image (the most huddled one), resized: on noise, CASNet (no fixed number of
    # detections) would time whatever the noise makes it fire
    from detectron2.data import DatasetCatalog

    meta = {"commit": commit(), "machine": machine_name(), "sizes": args.sizes, "reference": None, "opts": args.opts}
    try:
        timed_image = gallery_images(DatasetCatalog.get(INSTANCES_VAL), k=1)[0]["file_name"]
        meta["timed_image"] = os.path.basename(timed_image)
        log(f"timing the trained models on {meta['timed_image']}")
        meta["reference"] = reference = timings(rows, args.sizes, args.repeats, timed_image)
    except Exception as e:
        reference = None
        log(f"timing FAILED: {type(e).__name__}: {e}")
    drawings = {
        "leaderboard.png": lambda p: scatter(rows, args.sizes, p, reference),
        "gallery.png": lambda p: gallery(rows, cfgs, p),
    }
    for what, draw in drawings.items():
        try:
            draw(os.path.join(args.output, what))
        except Exception as e:
            log(f"{what} FAILED: {type(e).__name__}: {e}")
    rows = _finite(rows)
    with open(os.path.join(args.output, "leaderboard.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1, allow_nan=False)
    with open(os.path.join(args.output, "leaderboard.md"), "w") as f:
        f.write(markdown(rows, args.sizes, meta))
    log(f"wrote {args.output}/leaderboard.{{json,md,png}} and gallery.png")
    return rows


def _read(path, how):
    """``how(file)`` of the file at ``path``, None if there is none."""
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return how(f)


def _error_line(path):
    """The training log's first exception line (``SomeError: message``, the worker's own before the launcher's), or
    its last line."""
    try:
        with open(path) as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        return ""
    errors = [line for line in lines if re.match(r"^[\w.]*(Error|Exception)\b.*:", line)]
    return errors[0] if errors else (lines[-1] if lines else "")


if __name__ == "__main__":
    sys.exit(1 if any(r.get("error") for r in main()) else 0)
