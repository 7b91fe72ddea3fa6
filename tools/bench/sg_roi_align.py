"""Benchmark of Shape-guided RoIAlign (DSG Eq. 1-2) against its pure-PyTorch reference and torchvision's RoIAlign.

Default sizes are issue 3's realistic ones: 2 x 256 x 100 x 152 features (stride 8 of an 800 x 1216 image),
512 RoIs, 7 x 7 output, 28 x 28 probability maps, adaptive sampling (sampling_ratio 0), aligned=True
(detectron2's ROIAlignV2). RoIs are 32-256 image pixels a side (4-32 feature pixels). Goal on a 2-core CPU:
forward+backward at most 1.5x the time of ``torchvision.ops.roi_align``'s.

``run(args)`` returns a dict (times in seconds, medians over ``--repeats`` after ``--warmup`` runs) and prints
nothing; ``tools/benchmark_ops.py`` drives it. ``python -m tools.bench.sg_roi_align`` prints the dict as JSON.
"""

import argparse

import torch
import torchvision

from tools.bench.common import forward_and_backward, median_time, summary_row, thread_counts, thread_scaling

FWD_BWD_GOAL = 1.5  # sg_roi_align forward+backward / roi_align forward+backward


def add_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    g = parser.add_argument_group("sg_roi_align (DSG Sec. 3.4, Eq. 1-2)")
    g.add_argument("--sg-roi-align-batch", type=int, default=2, help="images N")
    g.add_argument("--sg-roi-align-channels", type=int, default=256, help="feature channels C")
    g.add_argument("--sg-roi-align-height", type=int, default=100, help="feature map height H")
    g.add_argument("--sg-roi-align-width", type=int, default=152, help="feature map width W")
    g.add_argument("--sg-roi-align-rois", type=int, default=512, help="RoIs K")
    g.add_argument("--sg-roi-align-output-size", type=int, default=7, help="pooled output side")
    g.add_argument("--sg-roi-align-probs-size", type=int, default=28, help="probability map side (Hp = Wp)")
    g.add_argument("--sg-roi-align-spatial-scale", type=float, default=1 / 8, help="feature stride^-1")
    g.add_argument("--sg-roi-align-sampling-ratio", type=int, default=0, help="<= 0: adaptive (RoIAlign)")
    g.add_argument("--sg-roi-align-not-aligned", action="store_true", help="legacy RoIAlign (aligned=False)")
    g.add_argument("--sg-roi-align-min-box", type=float, default=32.0, help="smallest RoI side, image px")
    g.add_argument("--sg-roi-align-max-box", type=float, default=256.0, help="largest RoI side, image px")
    g.add_argument("--sg-roi-align-repeats", type=int, default=5, help="timed repeats")
    g.add_argument("--sg-roi-align-warmup", type=int, default=1, help="untimed warm-up runs")
    g.add_argument("--sg-roi-align-reference-repeats", type=int, default=1, help="timed repeats, reference")
    g.add_argument("--sg-roi-align-skip-reference", action="store_true", help="do not time the reference")
    g.add_argument("--sg-roi-align-no-cuda", action="store_true", help="CPU only, even with a GPU")
    g.add_argument("--sg-roi-align-scaling-repeats", type=int, default=7, help="timed repeats per thread count")
    g.add_argument("--sg-roi-align-seed", type=int, default=0)
    return parser


def _inputs(a, device):
    g = torch.Generator().manual_seed(a.seed)
    n, c, h, w, k = a.batch, a.channels, a.height, a.width, a.rois
    x = torch.randn(n, c, h, w, generator=g)
    img_h, img_w = h / a.spatial_scale, w / a.spatial_scale
    size = a.min_box + torch.rand(k, 2, generator=g) * (a.max_box - a.min_box)
    x1 = torch.rand(k, generator=g) * (img_w - size[:, 0]).clamp(min=1)
    y1 = torch.rand(k, generator=g) * (img_h - size[:, 1]).clamp(min=1)
    b = torch.randint(0, n, (k,), generator=g).float()
    rois = torch.stack([b, x1, y1, x1 + size[:, 0], y1 + size[:, 1]], dim=1)
    probs = torch.rand(k, a.probs_size, a.probs_size, generator=g)
    grad = torch.randn(k, c, a.output_size, a.output_size, generator=g)
    return [t.to(device) for t in (x, rois, probs, grad)]


def _measure(a, device: torch.device) -> dict:
    from dsg.layers.sg_roi_align import sg_roi_align, sg_roi_align_reference

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    x, rois, probs, grad = _inputs(a, device)
    xg, pg = x.clone().requires_grad_(), probs.clone().requires_grad_()
    size, scale, ratio, aligned = a.output_size, a.spatial_scale, a.sampling_ratio, not a.not_aligned

    def guided(op):
        return forward_and_backward(
            lambda *t: op(*t, size, scale, ratio, aligned), (x, rois, probs), (xg, rois, pg), (xg, pg), grad
        )

    sg_fwd, sg_fwd_bwd = guided(sg_roi_align)
    ref_fwd, ref_fwd_bwd = guided(sg_roi_align_reference)
    tv_fwd, tv_fwd_bwd = forward_and_backward(
        lambda *t: torchvision.ops.roi_align(*t, size, scale, ratio, aligned), (x, rois), (xg, rois), (xg,), grad
    )

    warm, rep = a.warmup + (2 if device.type == "cuda" else 0), a.repeats
    t = {
        "op_forward_s": median_time(sg_fwd, warm, rep, sync),
        "op_forward_backward_s": median_time(sg_fwd_bwd, warm, rep, sync),
        "roi_align_forward_s": median_time(tv_fwd, warm, rep, sync),
        "roi_align_forward_backward_s": median_time(tv_fwd_bwd, warm, rep, sync),
    }
    if not a.skip_reference:  # seconds per call: no warm-up needed, and it keeps the run near a minute
        t["reference_forward_s"] = median_time(ref_fwd, 0, a.reference_repeats, sync)
        t["reference_forward_backward_s"] = median_time(ref_fwd_bwd, 0, a.reference_repeats, sync)
    out = dict(t)
    out["forward_vs_roi_align"] = t["op_forward_s"] / t["roi_align_forward_s"]
    out["forward_backward_vs_roi_align"] = t["op_forward_backward_s"] / t["roi_align_forward_backward_s"]
    if "reference_forward_s" in t:
        out["speedup_vs_reference_forward"] = t["reference_forward_s"] / t["op_forward_s"]
        out["speedup_vs_reference_forward_backward"] = t["reference_forward_backward_s"] / t["op_forward_backward_s"]
    out["goal_forward_backward_vs_roi_align"] = FWD_BWD_GOAL
    out["goal_met"] = out["forward_backward_vs_roi_align"] <= FWD_BWD_GOAL
    if device.type == "cuda":
        out["device"] = torch.cuda.get_device_name(device)
    else:
        out["threads"] = torch.get_num_threads()
    return out


def _scaling(a, threads) -> dict:
    """The compiled CPU kernels (forward, backward of both inputs) at 1 and all threads."""
    x, rois, probs, grad = _inputs(a, torch.device("cpu"))
    size, scale, ratio, aligned = a.output_size, a.spatial_scale, a.sampling_ratio, not a.not_aligned
    ops = torch.ops.instseg
    fns = {
        "forward": lambda: ops.sg_roi_align_forward(x, rois, probs, scale, size, size, ratio, aligned),
        "backward": lambda: ops.sg_roi_align_backward(
            grad, x, rois, probs, scale, size, size, ratio, aligned, [True, True]
        ),
    }
    return thread_scaling(fns, threads, a.warmup, a.scaling_repeats)


def run(args) -> dict:
    """Time the op, its reference and torchvision's roi_align on CPU (and on CUDA when there is a GPU and
    instseg._C has CUDA kernels). Returns {"op", "compiled_op", "sizes", "cpu": {...}, ["threads"],
    "summary", ["cuda": {...}]}."""
    from instseg.extension import extension_has_cuda, get_op

    a = argparse.Namespace(
        **{k[len("sg_roi_align_") :]: v for k, v in vars(args).items() if k.startswith("sg_roi_align_")}
    )
    result = {
        "op": "sg_roi_align",
        "compiled_op": get_op("sg_roi_align_forward") is not None,
        "sizes": {
            "input": [a.batch, a.channels, a.height, a.width],
            "rois": a.rois,
            "output_size": [a.output_size, a.output_size],
            "probs": [a.probs_size, a.probs_size],
            "spatial_scale": a.spatial_scale,
            "sampling_ratio": a.sampling_ratio,
            "aligned": not a.not_aligned,
            "box_side_px": [a.min_box, a.max_box],
        },
        "cpu": _measure(a, torch.device("cpu")),
    }
    cpu = result["cpu"]
    if result["compiled_op"]:
        result["threads"] = _scaling(a, thread_counts(torch.get_num_threads()))
    scaling = result.get("threads", {})
    result["summary"] = {
        "forward": summary_row(
            scaling.get("forward"),
            reference=cpu.get("speedup_vs_reference_forward"),
            roi_align=cpu["roi_align_forward_s"] / cpu["op_forward_s"],
        ),
        "backward": summary_row(
            scaling.get("backward"),
            reference_forward_backward=cpu.get("speedup_vs_reference_forward_backward"),
            roi_align_forward_backward=cpu["roi_align_forward_backward_s"] / cpu["op_forward_backward_s"],
        ),
    }
    if not a.no_cuda and torch.cuda.is_available() and result["compiled_op"] and extension_has_cuda():
        result["cuda"] = _measure(a, torch.device("cuda"))
    return result


if __name__ == "__main__":
    import json

    parser = add_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    print(json.dumps(run(parser.parse_args()), indent=2))
