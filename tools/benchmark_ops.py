#!/usr/bin/env python
"""Benchmark of the custom ops against their references (and torchvision's roi_align), in one run.

    python tools/benchmark_ops.py                    # every op, realistic sizes, a table
    python tools/benchmark_ops.py --op iou_vote --json
    python tools/benchmark_ops.py --threads 2 --json > bench.json

Each op's module in tools/bench/ times the compiled op and its reference(s) on the same inputs and
returns the times (seconds, median of the repeats) and the ratios; see that module for sizes and goals.
It also times the compiled CPU kernels (each op's forward and backward) at 1 thread and at all threads
(``--threads``, default torch's), the two counts taking turns, and reports their ratio
(``thread_speedup``; issue 13's goal on 2 cores: >= 1.6x). ``summary`` gathers, per op and pass, the
thread scaling and the speed-ups against the references (``vs_<reference>`` = reference time / op time),
printed as a table at the end. The machine block says whether instseg._C was built with OpenMP (without
it ATen's ``at::parallel_for`` runs our loops on one thread).
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

    from instseg.extension import extension_available, extension_has_cuda, extension_has_openmp

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
            "extension_openmp": extension_has_openmp(),
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
        print()
        print(summary_table(report))
    return report


def summary_table(report) -> str:
    """The summary of every op as a text table: times at 1 / all threads, their ratio, speed-ups vs references."""
    n = report["machine"]["threads"]
    header = ["op", "pass", "1 thread (ms)", f"{n} threads (ms)", "thread speed-up", "speed-up vs references"]
    lines = []
    for op, res in report["ops"].items():
        for name, row in res.get("summary", {}).items():
            t1, tn = row.get("threads_1_s"), row.get(f"threads_{n}_s")
            refs = ", ".join(f"{k[3:]} {v:.2f}x" for k, v in row.items() if k.startswith("vs_"))
            lines.append(
                [
                    op,
                    name,
                    f"{t1 * 1e3:.2f}" if t1 is not None else "-",
                    f"{tn * 1e3:.2f}" if tn is not None and n > 1 else "-",
                    f"{row['thread_speedup']:.2f}x" if "thread_speedup" in row else "-",
                    refs,
                ]
            )
    widths = [max(len(str(r[i])) for r in [header] + lines) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*r) for r in [header] + lines)


if __name__ == "__main__":
    main()
