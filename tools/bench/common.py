"""Timing shared by the op benchmarks."""

import os
import platform
import statistics
import time
from typing import Callable, Dict, Optional, Sequence

import torch


def median_time(fn, warmup: int, repeats: int, sync=None) -> float:
    """Median wall time (seconds) of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls.

    ``sync`` (e.g. ``torch.cuda.synchronize``) is called around every timed call, so asynchronous
    devices are timed to completion.
    """
    for _ in range(warmup):
        fn()
        if sync:
            sync()
    times = []
    for _ in range(max(1, repeats)):
        if sync:
            sync()
        start = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def thread_counts(all_threads: int) -> Sequence[int]:
    """The thread counts a CPU op is timed at: one thread and all of them (just one when they are the same)."""
    return (1,) if all_threads <= 1 else (1, all_threads)


def thread_scaling(
    fns: Dict[str, Callable[[], object]], threads: Sequence[int], warmup: int, repeats: int
) -> Dict[str, dict]:
    """CPU times of each ``fns[name]`` at every thread count of ``threads`` (``torch.set_num_threads``).

    The thread counts take turns within every repeat (1, N, 1, N, ...), so a load that comes and goes on the
    machine hits all of them alike; each time is the median of ``repeats``. Returns, per name,
    ``{"threads_<n>_s": seconds, ..., "thread_speedup": t(1) / t(max n)}``. The thread count is restored.
    """
    import torch

    before = torch.get_num_threads()
    out = {}
    try:
        for name, fn in fns.items():
            samples = {n: [] for n in threads}
            for n in threads:  # warm-up at every count (OpenMP spins up its thread team on first use)
                torch.set_num_threads(n)
                for _ in range(warmup):
                    fn()
            for _ in range(max(1, repeats)):
                for n in threads:
                    torch.set_num_threads(n)
                    start = time.perf_counter()
                    fn()
                    samples[n].append(time.perf_counter() - start)
            res = {f"threads_{n}_s": statistics.median(samples[n]) for n in threads}
            if len(threads) > 1:
                res["thread_speedup"] = res[f"threads_{threads[0]}_s"] / res[f"threads_{threads[-1]}_s"]
            out[name] = res
    finally:
        torch.set_num_threads(before)
    return out


def summary_row(scaling: Optional[dict], **ratios: float) -> dict:
    """One row of the driver's summary table: the thread scaling of a pass and its ratios against references."""
    row = dict(scaling or {})
    row.update({f"vs_{k}": v for k, v in ratios.items() if v is not None})
    return row


def forward_and_backward(fn, args, grad_args, grad_inputs, grad):
    """Two closures to time: ``fn(*args)`` without autograd, and ``fn(*grad_args)`` followed by the gradient of
    ``grad`` with respect to ``grad_inputs`` (tensors among ``grad_args``)."""

    def forward():
        with torch.no_grad():
            return fn(*args)

    def forward_backward():
        return torch.autograd.grad(fn(*grad_args), grad_inputs, grad)

    return forward, forward_backward


def machine_name() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo; else what ``platform`` says) and its logical core count, e.g.
    "AMD EPYC 7B13, 2 cores": what a timing's ratios were measured on."""
    name = ""
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return f"{name or platform.processor() or platform.machine()}, {os.cpu_count()} cores"
