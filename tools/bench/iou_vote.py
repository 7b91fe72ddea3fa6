"""Benchmark of CASNet's IoU-vote clustering (Sec. III-C): the compiled op against the references.

``run(args)`` times, in one run and on the same synthetic scene,
  * ``casnet.layers.iou_vote`` (the compiled kernel of instseg._C, CPU and, when present, CUDA),
  * ``iou_vote_numpy``, the NumPy reference (per class, one broadcast IoU of that class's pixel boxes against
    its seeds, then the tie rule),
  * ``iou_vote_reference``, the same reference in PyTorch,
checks that all agree exactly, and returns the times (seconds; median of the repeats after warm-up) and
the speed-up ratios (the op is cheap, so it gets more repeats than the references), and the compiled CPU
kernel's times at 1 and at all threads. Goal (issues 3 and 13) on a 2-core CPU: the op >= 20x faster than
the NumPy reference, and >= 1.6x faster on 2 threads than on 1.

The scene mimics CASNet's inputs on a Cityscapes-like image: ``seeds`` instances (boxes of 16-256 px)
spread over ``classes`` thing classes are painted into the semantic map (later ones on top); the other
pixels get a stuff class with no seeds. Each instance pixel predicts the distances to its instance's
box with some noise (a few percent of the box size); each seed is its instance's box, jittered as a
detection would be.
"""

import numpy as np
import torch

from tools.bench.common import median_time, summary_row, thread_counts, thread_scaling

DEFAULTS = dict(
    height=512, width=1024, classes=8, seeds=100, repeats=3, op_repeats=20, warmup=1, seed=0, scaling_repeats=15
)


def add_args(parser):
    g = parser.add_argument_group("iou_vote (CASNet Sec. III-C)")
    g.add_argument("--iou-vote-height", type=int, default=DEFAULTS["height"], help="image height H")
    g.add_argument("--iou-vote-width", type=int, default=DEFAULTS["width"], help="image width W")
    g.add_argument("--iou-vote-classes", type=int, default=DEFAULTS["classes"], help="thing classes")
    g.add_argument("--iou-vote-seeds", type=int, default=DEFAULTS["seeds"], help="seed boxes S")
    g.add_argument(
        "--iou-vote-repeats", type=int, default=DEFAULTS["repeats"], help="timed repeats of the (slow) references"
    )
    g.add_argument("--iou-vote-op-repeats", type=int, default=DEFAULTS["op_repeats"], help="timed repeats of the op")
    g.add_argument("--iou-vote-warmup", type=int, default=DEFAULTS["warmup"], help="untimed warm-up runs")
    g.add_argument("--iou-vote-seed", type=int, default=DEFAULTS["seed"], help="random seed of the scene")
    g.add_argument(
        "--iou-vote-scaling-repeats", type=int, default=DEFAULTS["scaling_repeats"], help="repeats per thread count"
    )
    return parser


def make_scene(height, width, classes, seeds, seed=0, dtype=np.float32):
    """A synthetic CASNet scene: (sem_labels, distances, seed_boxes, seed_classes) as NumPy arrays."""
    rng = np.random.default_rng(seed)
    stuff = classes  # a class id with no seeds (road, sky, ...)
    labels = np.full((height, width), stuff, dtype=np.int64)
    owner = np.full((height, width), -1, dtype=np.int64)
    # Instances: sizes log-uniform in [16, 256] px, anywhere in the image (partly outside allowed).
    size = np.exp(rng.uniform(np.log(16), np.log(256), size=(seeds, 2)))
    ctr = rng.uniform(0, 1, size=(seeds, 2)) * np.array([width, height])
    gt = np.concatenate([ctr - size / 2, ctr + size / 2], axis=1)
    gt_cls = np.arange(seeds) % max(classes, 1)
    for k in range(seeds):
        x1, y1, x2, y2 = gt[k]
        j0, j1 = int(max(0, np.floor(x1))), int(min(width, np.ceil(x2)))
        i0, i1 = int(max(0, np.floor(y1))), int(min(height, np.ceil(y2)))
        labels[i0:i1, j0:j1] = gt_cls[k]
        owner[i0:i1, j0:j1] = k
    # Distances: exact for instance pixels plus noise of 5% of the box size; stuff pixels: random.
    cy, cx = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    dist = rng.uniform(0, 64, size=(4, height, width))
    inst = owner >= 0
    box = gt[owner[inst]]
    w, h = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]
    exact = np.stack([cx[inst] - box[:, 0], cy[inst] - box[:, 1], box[:, 2] - cx[inst], box[:, 3] - cy[inst]])
    noise = rng.normal(0, 0.05, size=exact.shape) * np.stack([w, h, w, h])
    dist[:, inst] = np.maximum(exact + noise, 0)
    # Seeds: the instance boxes with detection jitter (3% of the size).
    jitter = rng.normal(0, 0.03, size=gt.shape) * np.concatenate([size, size], axis=1)
    seed_boxes = gt + jitter
    seed_boxes[:, 2:] = np.maximum(seed_boxes[:, 2:], seed_boxes[:, :2])
    return labels, dist.astype(dtype), seed_boxes.astype(dtype), gt_cls.astype(np.int64)


def run(args) -> dict:
    from casnet.layers import iou_vote, iou_vote_numpy, iou_vote_reference
    from instseg.extension import get_op

    H, W = args.iou_vote_height, args.iou_vote_width
    C, S = args.iou_vote_classes, args.iou_vote_seeds
    warmup, repeats = args.iou_vote_warmup, args.iou_vote_repeats
    labels, dist, boxes, classes = make_scene(H, W, C, S, seed=args.iou_vote_seed)
    t_labels, t_dist = torch.from_numpy(labels), torch.from_numpy(dist)
    t_boxes, t_classes = torch.from_numpy(boxes), torch.from_numpy(classes)

    out = {
        "op": "iou_vote",
        "size": {"height": H, "width": W, "classes": C, "seeds": S, "dtype": "float32"},
        "compiled": get_op("iou_vote") is not None,
        "threads": torch.get_num_threads(),
        "thing_pixel_fraction": float((labels < C).mean()),
    }
    ids_np, sup_np = iou_vote_numpy(labels, dist, boxes, classes)
    ids_op, sup_op = iou_vote(t_labels, t_dist, t_boxes, t_classes)
    ids_ref, sup_ref = iou_vote_reference(t_labels, t_dist, t_boxes, t_classes)
    out["agree"] = bool(
        np.array_equal(ids_op.numpy(), ids_np)
        and np.array_equal(sup_op.numpy(), sup_np)
        and torch.equal(ids_op, ids_ref)
        and torch.equal(sup_op, sup_ref)
    )
    out["assigned_pixel_fraction"] = float((ids_np >= 0).mean())
    out["supported_seeds"] = int((sup_np > 0).sum())

    op_repeats = args.iou_vote_op_repeats
    t_op = median_time(lambda: iou_vote(t_labels, t_dist, t_boxes, t_classes), warmup, op_repeats)
    t_np = median_time(lambda: iou_vote_numpy(labels, dist, boxes, classes), warmup, repeats)
    t_ref = median_time(lambda: iou_vote_reference(t_labels, t_dist, t_boxes, t_classes), warmup, repeats)
    out["cpu"] = {
        "op_s": t_op,
        "numpy_reference_s": t_np,
        "torch_reference_s": t_ref,
        "speedup_vs_numpy": t_np / t_op,
        "speedup_vs_torch_reference": t_ref / t_op,
        "goal_speedup_vs_numpy": 20.0,
        "goal_met": t_np / t_op >= 20.0,
    }
    if out["compiled"]:
        out["threads"] = thread_scaling(
            {"forward": lambda: torch.ops.instseg.iou_vote(t_labels, t_dist, t_boxes, t_classes, 0.0, 1e-3)},
            thread_counts(torch.get_num_threads()),
            warmup,
            args.iou_vote_scaling_repeats,
        )
    out["summary"] = {
        "forward": summary_row(out.get("threads", {}).get("forward"), numpy=t_np / t_op, torch_reference=t_ref / t_op)
    }

    if torch.cuda.is_available() and get_op("iou_vote") is not None:
        from instseg.extension import extension_has_cuda

        if extension_has_cuda():
            dev = torch.device("cuda")
            c_in = [t.to(dev) for t in (t_labels, t_dist, t_boxes, t_classes)]
            sync = torch.cuda.synchronize
            ids_c, sup_c = iou_vote(*c_in)
            t_op_c = median_time(lambda: iou_vote(*c_in), warmup + 2, op_repeats, sync)
            t_ref_c = median_time(lambda: iou_vote_reference(*c_in), warmup, repeats, sync)
            out["cuda"] = {
                "device": torch.cuda.get_device_name(),
                "op_s": t_op_c,
                "torch_reference_s": t_ref_c,
                "speedup_vs_torch_reference": t_ref_c / t_op_c,
                "speedup_vs_numpy_cpu": t_np / t_op_c,
                "agree_with_cpu": bool(torch.equal(ids_c.cpu(), ids_op) and torch.equal(sup_c.cpu(), sup_op)),
            }
    return out


if __name__ == "__main__":
    import argparse
    import json

    print(json.dumps(run(add_args(argparse.ArgumentParser()).parse_args()), indent=2))
