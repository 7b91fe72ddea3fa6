"""instseg.cpu: the cores a process may use and `make train`'s number of processes."""

import os
import subprocess
import sys

import torch

from instseg.cpu import default_train_processes, usable_cores

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_usable_cores_follows_the_affinity():
    assert 1 <= usable_cores() <= (os.cpu_count() or 1)
    if hasattr(os, "sched_getaffinity"):
        assert usable_cores() == len(os.sched_getaffinity(0))


def test_default_train_processes_and_the_makefile_query():
    expected = 1 if torch.cuda.is_available() else min(2, usable_cores())
    assert default_train_processes() == expected
    # what the Makefile runs for TRAIN_PROCS
    out = subprocess.run([sys.executable, "-m", "instseg.cpu"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(expected)
