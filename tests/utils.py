"""Helpers shared by the tests."""
import importlib.util

import pytest

HAS_DETECTRON2 = importlib.util.find_spec("detectron2") is not None
DETECTRON2_REASON = (
    "detectron2 is not installed: install it from its official source "
    "(pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git') "
    "or set DETECTRON2_SRC to a detectron2 checkout and run `make test`"
)

requires_detectron2 = pytest.mark.skipif(not HAS_DETECTRON2, reason=DETECTRON2_REASON)


def importorskip_detectron2():
    """Module-level skip for test files that import detectron2 at the top."""
    return pytest.importorskip("detectron2", reason=DETECTRON2_REASON)


def cuda_available():
    import torch

    return torch.cuda.is_available()


requires_cuda = pytest.mark.skipif(
    not importlib.util.find_spec("torch") or not cuda_available(), reason="no CUDA device on this machine"
)
