"""How many cores this process may use, and how many training processes `make train` starts with them.

Kept free of detectron2 imports so that the Makefile can ask it before anything heavy loads.
"""

import os


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS reports one, else all of them)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_train_processes() -> int:
    """`make train`'s ``--num-gpus``: 1 on a GPU machine; on a CPU-only one with at least 2 cores, 2 processes
    (gloo) that split the cores, which trains 1.15x faster on 2 cores than one process using both
    (0.466 vs 0.535 s/it, measured)."""
    import torch

    return 1 if torch.cuda.is_available() else min(2, usable_cores())


if __name__ == "__main__":
    print(default_train_processes())
