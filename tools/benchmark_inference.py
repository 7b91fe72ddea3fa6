#!/usr/bin/env python
"""End-to-end inference time of whole models on one image size, measured in one run, as ratios.

    python tools/benchmark_inference.py --preset maskpoint --json   # Mask Point / Mask R-CNN, / FUSION=none
    python tools/benchmark_inference.py --preset dsg                 # DSG, DSG light / Mask R-CNN (+ params)
    python tools/benchmark_inference.py --preset dsg_table1 --size 256 256 --threads 1   # Table 1 rows, synthetic
    python tools/benchmark_inference.py --preset maskplus            # each MaskPlus technique alone, MaskPlus
    python tools/benchmark_inference.py --preset rdsnet              # RDSNet (+ MBRM) / RetinaNet, Mask R-CNN
    python tools/benchmark_inference.py --preset casnet --memory     # CASNet panoptic / instance / Panoptic FPN
    python tools/benchmark_inference.py --model a configs/A.yaml --model b configs/B.yaml KEY VALUE

Models are built from their configs (random weights: nothing is downloaded, unless a model's overrides give
MODEL.WEIGHTS) and run on the same image: random noise, or ``--image`` (a file, read as BGR, every config's input
format here, and resized to ``--size``; what a trained model should be timed on: on noise, a model without a fixed
number of detections times whatever noise makes it fire). So that every model runs its per-detection heads on the same
number of RoIs, the box head keeps exactly ``--detections`` detections per image (score threshold 0), unless ``--as-
configured`` (each model at its config's test settings, as it is evaluated: what a leaderboard times; the JSON gives
each model's ``detections``). The models are timed in turns (a, b, c, a, b, c, ...) and each one's median is reported;
ratios are against the first model. A preset may fix its image size (``casnet``: Cityscapes' 1024 x 2048). Also
reported: the parameters of the modules that run at inference (``params_run``: a training-only branch does not count),
and the GMAC of the mask head per RoI (fvcore's count, one MAC per multiply-add) where the mask head is a
``MaskRCNNConvUpsampleHead``.

CASNet (no detector to keep a fixed number of detections): with random weights its BatchNorms are set to normalise
the image's activations, its attribute head's bias so that the distances' median is ``ATTRIBUTE_HALF_SIZE``, and its
box-probability head's bias so that 9 x ``--detections`` positions are seeds before NMS (a 3 x 3 centre region per
object, as the targets' radius of 1.5 strides gives); its post-processing
(``inference_single``: attributes -> boxes, seeds, NMS, the IoU vote, masks, panoptic combination) is timed on its own
within each run (``postprocess_seconds``, ``postprocess_share``) and, with ``--memory``, its peak memory on the heads'
outputs alone.
"""

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dsg.config import TABLE1_ROWS, table1_opts  # noqa: E402
from maskplus.config import table_opts  # noqa: E402
from rdsnet.config import table_opts as rdsnet_table_opts  # noqa: E402
from tools.bench.common import machine_name  # noqa: E402

MP = "configs/MaskPoint/mask_point_rcnn_R_50_FPN_1x.yaml"
SYN_DSG = "configs/DSG/dsg_R_18_FPN_synthetic.yaml"
MP1X = "configs/MaskPlus/maskplus_R_50_FPN_1x.yaml"
RDS = "configs/RDSNet/rdsnet_R_50_FPN_1x.yaml"

PRESETS = {
    "maskpoint": [
        ["mask_rcnn", "configs/Baselines/mask_rcnn_R_50_FPN_1x.yaml"],
        ["mask_point", MP],
        ["mask_point_fusion_none", MP, "MODEL.MASK_POINT.FUSION", "none"],
    ],
    "dsg": [
        ["mask_rcnn", "configs/Baselines/mask_rcnn_R_50_FPN_1x.yaml"],
        # Mask R-CNN with the mask-head tail DSG's heads use (instseg.layers.upsample_and_predict): the
        # same function, so DSG's ratio can also be read against it
        [
            "mask_rcnn_matmul_tail",
            "configs/Baselines/mask_rcnn_R_50_FPN_1x.yaml",
            "MODEL.ROI_MASK_HEAD.NAME",
            "FeatureMaskRCNNHead",
        ],
        ["dsg", "configs/DSG/dsg_R_50_FPN_1x.yaml"],
        ["dsg_light", "configs/DSG/dsg_light_R_50_FPN_1x.yaml"],
    ],
    # DSG's Table 1 rows on the synthetic recipe (run with --size 256 256 --threads 1; --weights row4=PATH
    # etc. to time trained models)
    "dsg_table1": [
        ["row0_mask_rcnn", "configs/Baselines/mask_rcnn_R_18_FPN_synthetic.yaml"],
        *[[f"row{i}", SYN_DSG, *table1_opts(i)] for i in range(1, len(TABLE1_ROWS))],
        ["dsg_light", "configs/DSG/dsg_light_R_18_FPN_synthetic.yaml"],
    ],
    # MaskPlus's techniques one at a time on its COCO recipe, then all (the paper's final MaskPlus), against the
    # same recipe with every technique off (Mask R-CNN)
    "maskplus": [
        ["mask_rcnn", MP1X, *table_opts("mask_rcnn")],
        ["quasi_multitask", MP1X, *table_opts("table4_quasi_half")],
        ["context_fusion", MP1X, *table_opts("context_fusion")],
        ["improved_refinement", MP1X, *table_opts("table3_improved_refinement")],
        ["deconv_pyramid", MP1X, *table_opts("table2_deconv_pyramid")],
        ["maskplus", MP1X, *table_opts("maskplus")],
    ],
    # RDSNet against its object stream alone (RetinaNet with the same recipe), with MBRM, and Mask R-CNN
    "rdsnet": [
        ["retinanet", RDS, "MODEL.MASK_ON", "False"],
        ["rdsnet", RDS, *rdsnet_table_opts(4, "baseline")],
        ["rdsnet_mbrm", RDS, *rdsnet_table_opts(4, "mbrm")],
        ["mask_rcnn", "configs/Baselines/mask_rcnn_R_50_FPN_1x.yaml"],
    ],
    # CASNet on its Cityscapes recipe (HRNet-W48), panoptic and instance mode, against detectron2's Panoptic FPN R-50
    "casnet": [
        ["panoptic_fpn", "configs/Baselines/panoptic_fpn_R_50_FPN_1x.yaml"],
        ["casnet_panoptic", "configs/CASNet/casnet_hrnet_w48_cityscapes.yaml", "MODEL.HRNET.PRETRAINED", "False"],
        [
            "casnet_instance",
            "configs/CASNet/casnet_hrnet_w48_cityscapes_instance.yaml",
            "MODEL.HRNET.PRETRAINED",
            "False",
        ],
    ],
}
PRESET_SIZES = {"casnet": (1024, 2048)}
# an untrained CASNet's attributes are set around this many output pixels (x 4 px at stride 4: 64-px boxes, the size
# of a car in a Cityscapes image), so that its boxes, NMS and vote work on objects of a plausible size
ATTRIBUTE_HALF_SIZE = 8.0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), help="a set of models to compare")
    p.add_argument(
        "--model",
        nargs="+",
        action="append",
        default=[],
        metavar="NAME CONFIG [KEY VALUE ...]",
        help="a model: a name, its config file and config overrides (repeatable)",
    )
    p.add_argument(
        "--weights",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="load a checkpoint into the model NAME (repeatable), e.g. a preset's row",
    )
    p.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"), help="default 800 1333")
    p.add_argument("--image", default=None, help="time on this image file, resized to --size (default: random noise)")
    p.add_argument("--detections", type=int, default=100, help="detections per image kept by every model")
    p.add_argument(
        "--as-configured",
        action="store_true",
        help="keep each config's test score threshold and detections per image (--detections then only calibrates "
        "an untrained CASNet)",
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--memory", action="store_true", help="also the peak resident-memory growth of one forward")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    args.models = [list(m) for m in (PRESETS[args.preset] if args.preset else [])] + args.model
    if args.size is None:
        args.size = list(PRESET_SIZES.get(args.preset, (800, 1333)))
    if len(args.models) < 1:
        p.error("give --preset or at least one --model")
    by_name = {m[0]: m for m in args.models}
    for w in args.weights:
        name, sep, path = w.partition("=")
        if not sep or name not in by_name:
            p.error(f"--weights expects NAME=PATH with NAME one of {sorted(by_name)}, got {w!r}")
        by_name[name] += ["MODEL.WEIGHTS", path]
    for m in args.models:
        if len(m) < 2 or len(m) % 2:
            p.error(f"--model expects NAME CONFIG [KEY VALUE ...], got {m}")
    return args


def build(spec, detections):
    """The model of ``spec``, keeping exactly ``detections`` per image, or its config's own test settings where
    ``detections`` is None."""
    import torch
    from detectron2.modeling import build_model

    from instseg.config import get_cfg

    name, config, *opts = spec
    cfg = get_cfg()
    cfg.merge_from_file(config)
    fixed = []
    if detections is not None:  # exactly this many per image: no score cut
        fixed = ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0"]
        fixed += ["TEST.DETECTIONS_PER_IMAGE", str(detections)]
    cfg.merge_from_list(list(opts) + ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", *fixed])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    # random weights unless the opts name a checkpoint (e.g. a trained synthetic model)
    weights = dict(zip(opts[::2], opts[1::2])).get("MODEL.WEIGHTS", "")
    if weights:
        from detectron2.checkpoint import DetectionCheckpointer

        DetectionCheckpointer(model).load(weights)
    model.trained = bool(weights)
    return name, model, sum(p.numel() for p in model.parameters())


def params_run(model, inputs):
    """The parameters of the modules that run on ``inputs`` (each module's own parameters, counted once)."""
    import torch

    ran = set()
    handles = [
        m.register_forward_pre_hook(lambda mod, args: ran.add(mod))
        for m in model.modules()
        if any(True for _ in m.parameters(recurse=False))
    ]
    with torch.no_grad():
        model(inputs)
    for h in handles:
        h.remove()
    return sum(p.numel() for m in ran for p in m.parameters(recurse=False))


def mask_head_gmac_per_roi(model):
    """GMAC of the mask head on one RoI (its eval-time ``layers``), or None for other kinds of mask head."""
    import torch
    from detectron2.modeling.roi_heads.mask_head import MaskRCNNConvUpsampleHead
    from fvcore.nn import FlopCountAnalysis

    head = getattr(getattr(model, "roi_heads", None), "mask_head", None)
    if not isinstance(head, MaskRCNNConvUpsampleHead):
        return None
    pooler = model.roi_heads.mask_pooler
    channels = head.conv_norm_relus[0].in_channels if head.conv_norm_relus else head.deconv.in_channels
    x = torch.zeros(1, channels, *pooler.output_size)

    class Layers(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = head

        def forward(self, x):
            return self.head.layers(x)

    counter = FlopCountAnalysis(Layers().eval(), (x,))
    counter.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return counter.total() / 1e9


def peak_memory_mb(model, inputs):
    """The peak growth of this process's resident memory during one forward (MiB): Linux's high-water mark (VmHWM),
    reset through /proc/self/clear_refs before the run, after glibc's malloc_trim; None where that is not available
    (not Linux/glibc)."""
    import torch

    def status(key):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))

    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so that RSS starts at what is live
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        start = status("VmRSS")
    except OSError:
        return None
    with torch.no_grad():
        model(inputs)
    return (status("VmHWM") - start) / 1024


def calibrate_casnet(model, inputs, detections):
    """An untrained CASNet: BatchNorms (eval mode, running statistics 0 / 1) normalise this image's activations, in
    forward order, and the box-probability head's last bias makes 9 x ``detections`` positions seeds (see the module
    docstring). No-op for other models and for trained ones."""
    import torch

    if not hasattr(model, "prob_head") or model.trained:
        return

    def hook(module, args):
        x = args[0]
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3)))

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        model(inputs)
    for h in handles:
        h.remove()
    seen = {}  # the two heads' outputs, from one forward
    handles = [
        head.register_forward_hook(lambda mod, args, out, key=key: seen.setdefault(key, out))
        for key, head in (("prob", model.prob_head), ("attr", model.attr_head))
    ]
    with torch.no_grad():
        model(inputs)
    for h in handles:
        h.remove()
    with torch.no_grad():  # the attributes' median at ATTRIBUTE_HALF_SIZE output pixels: boxes of objects' size
        model.attr_head[-1].bias.add_(ATTRIBUTE_HALF_SIZE - seen["attr"].median())
    flat = seen["prob"].flatten()
    k = min(9 * detections, flat.numel())
    threshold = flat.topk(k).values[-1]
    with torch.no_grad():  # seeds: sigmoid > SEED_THRESHOLD, i.e. logit > its logit
        t = torch.tensor(model.post["seed_threshold"]).clamp(1e-6, 1 - 1e-6)
        model.prob_head[-1].bias.add_(torch.log(t / (1 - t)) - threshold + 1e-4)


def postprocess_timer(model):
    """Wrap a CASNet's ``inference_single`` to add its time to the returned list (None for other models)."""
    if not hasattr(model, "inference_single") or not hasattr(model, "prob_head"):
        return None
    spent = []
    inner = model.inference_single

    def timed(*args, **kwargs):
        start = time.perf_counter()
        out = inner(*args, **kwargs)
        spent.append(time.perf_counter() - start)
        return out

    model.inference_single = timed
    return spent


def postprocess_peak_memory_mb(model, inputs):
    """CASNet's post-processing alone (on the heads' outputs of ``inputs``): peak resident-memory growth, MiB."""
    import torch
    from detectron2.structures import ImageList

    x = inputs[0]
    with torch.no_grad():
        image = (x["image"].to(model.device) - model.pixel_mean) / model.pixel_std
        images = ImageList.from_tensors([image], model.backbone.size_divisibility)
        sem, attr, prob = model.heads(images)

    class Post(torch.nn.Module):
        def forward(self, _):
            size = images.image_sizes[0]
            return model.inference_single(sem[0], attr[0], prob[0], size, (x["height"], x["width"]))

    return peak_memory_mb(Post(), inputs)


def calibrate_frozen_bn(model, inputs):
    """Random weights behind FrozenBatchNorm (identity statistics) make activations grow by orders of magnitude
    over 50 layers: the RPN then keeps a handful of degenerate proposals and the box head one detection, which
    times nothing real. Set each frozen BN's affine to normalise its input on this image (what pretrained
    statistics do), in forward order, once. The compute is unchanged."""
    import torch
    from detectron2.layers import FrozenBatchNorm2d

    def hook(module, args):
        x = args[0]
        mean = x.mean(dim=(0, 2, 3))
        std = x.std(dim=(0, 2, 3)).clamp(min=1e-5)
        module.running_mean.zero_()
        module.running_var.fill_(1.0 - module.eps)
        module.weight.copy_(1.0 / std)
        module.bias.copy_(-mean / std)

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    if handles:
        with torch.no_grad():
            model(inputs)
    for h in handles:
        h.remove()


def load_image(path, h, w):
    """The timed image, CHW uint8: ``path`` (BGR) resized to h x w, or seeded noise where no path is given."""
    import torch

    if path is None:
        return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    import cv2

    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"--image {path!r}: not a readable image file")
    bgr = cv2.resize(bgr, (w, h), interpolation=cv2.INTER_LINEAR)
    return torch.from_numpy(bgr.transpose(2, 0, 1).copy())


def main(argv=None):
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    h, w = args.size
    image = load_image(args.image, h, w)
    inputs = [{"image": image, "height": h, "width": w}]
    models = [build(m, None if args.as_configured else args.detections) for m in args.models]
    for _, model, _ in models:
        if not model.trained:
            calibrate_frozen_bn(model, inputs)
            calibrate_casnet(model, inputs, args.detections)
    run_params = {name: params_run(model, inputs) for name, model, _ in models}
    post_times = {name: postprocess_timer(model) for name, model, _ in models}
    gmac = {name: mask_head_gmac_per_roi(model) for name, model, _ in models}
    times = {name: [] for name, _, _ in models}
    detections = {}
    with torch.no_grad():
        for _ in range(args.warmup):
            for name, model, _ in models:
                detections[name] = len(model(inputs)[0]["instances"])
        for spent in post_times.values():
            if spent is not None:
                spent.clear()  # the timed runs only
        for _ in range(args.repeats):
            for name, model, _ in models:
                start = time.perf_counter()
                out = model(inputs)
                times[name].append(time.perf_counter() - start)
                detections[name] = len(out[0]["instances"])
    memory = {name: peak_memory_mb(model, inputs) if args.memory else None for name, model, _ in models}
    post_memory = {
        name: postprocess_peak_memory_mb(model, inputs) if args.memory and post_times[name] is not None else None
        for name, model, _ in models
    }
    base = models[0][0]
    med = {n: statistics.median(t) for n, t in times.items()}
    post = {n: None if t is None else statistics.median(t) for n, t in post_times.items()}
    result = {
        "size": [h, w],
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "image": args.image or "noise",
        "detections_fixed": None if args.as_configured else args.detections,
        "machine": machine_name(),
        "models": {
            name: {
                "seconds": med[name],
                "ratio_to_" + base: med[name] / med[base],
                "params": params,
                "params_delta_M": (params - models[0][2]) / 1e6,
                "params_run": run_params[name],
                "mask_head_gmac_per_roi": gmac[name],
                "peak_memory_mb": memory[name],
                "postprocess_seconds": post[name],
                "postprocess_share": None if post[name] is None else post[name] / med[name],
                "postprocess_peak_memory_mb": post_memory[name],
                "detections": detections[name],
                "config": spec[1],
                "opts": spec[2:],
            }
            for (name, _, params), spec in zip(models, args.models)
        },
    }
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"inference at {h}x{w}, {result['threads']} threads, median of {args.repeats}")
        for name, r in result["models"].items():
            print(
                f"  {name:28s} {r['seconds']:8.3f} s  x{r['ratio_to_' + base]:.3f} vs {base}  "
                f"params {r['params'] / 1e6:.2f}M ({r['params_delta_M']:+.2f}M, run {r['params_run'] / 1e6:.2f}M)  "
                f"detections {r['detections']}"
                + (
                    ""
                    if r["mask_head_gmac_per_roi"] is None
                    else f"  mask head {r['mask_head_gmac_per_roi']:.3f} GMAC/RoI"
                )
                + ("" if r["peak_memory_mb"] is None else f"  peak +{r['peak_memory_mb']:.0f} MiB")
                + (
                    ""
                    if r["postprocess_seconds"] is None
                    else f"  post-processing {r['postprocess_seconds']:.3f} s ({100 * r['postprocess_share']:.1f} %)"
                    + (
                        ""
                        if r["postprocess_peak_memory_mb"] is None
                        else f", peak +{r['postprocess_peak_memory_mb']:.0f} MiB"
                    )
                )
            )
    return result


if __name__ == "__main__":
    main()
