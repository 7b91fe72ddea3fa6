"""Timing shared by the op benchmarks."""
import statistics
import time


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
