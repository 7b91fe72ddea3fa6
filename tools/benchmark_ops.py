#!/usr/bin/env python
"""Benchmark of the custom ops against their references (and torchvision's roi_align), in one run.

    python tools/benchmark_ops.py                    # every op, realistic sizes, a table
    python tools/benchmark_ops.py --op iou_vote --json
    python tools/benchmark_ops.py --threads 2 --json > bench.json

Each op's module in tools/bench/ times the compiled op and its reference(s) on the same inputs and
returns the times (seconds, median of the repeats) and the ratios; see that module for sizes and goals.
"""
import argparse
import importlib
import json
import os
import platform
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

OPS = ["sg_roi_align", "correlation_crop", "iou_vote"]


def _bench_module(op):
    return importlib.import_module(f"tools.bench.{op}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--op", choices=OPS + ["all"], default="all")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    for op in OPS:
        _bench_module(op).add_args(p)
    return p.parse_args(argv)


def _flatten(prefix, obj, out):
    if isinstance(obj, dict):
        for k, v in obj.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out.append((prefix, obj))


def main(argv=None):
    args = parse_args(argv)
    import torch

    from instseg.extension import extension_available, extension_has_cuda

    if args.threads:
        torch.set_num_threads(args.threads)
    report = {
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "extension": extension_available(),
            "extension_cuda": extension_has_cuda(),
        },
        "ops": {},
    }
    for op in OPS if args.op == "all" else [args.op]:
        report["ops"][op] = _bench_module(op).run(args)
    if args.json:
        print(json.dumps(report, indent=2, default=float))
    else:
        rows = []
        _flatten("", report, rows)
        width = max(len(k) for k, _ in rows)
        for k, v in rows:
            v = f"{v:.6g}" if isinstance(v, float) else v
            print(f"{k:<{width}}  {v}")
    return report


if __name__ == "__main__":
    main()
