"""The compiled extension instseg._C as a whole: how it was built (CUDA, OpenMP) and that its CPU kernels run
in parallel. Each op's own tests are in the method's test folder, on the shared harness tests/ops/harness.py."""

import sys

import pytest
import torch

import instseg.extension as ext
from tests.ops.harness import NO_EXTENSION

requires_extension = pytest.mark.skipif(not ext.extension_available(), reason=NO_EXTENSION)


@requires_extension
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="OpenMP is required of Linux builds only")
def test_extension_built_with_openmp_on_linux():
    # Without -fopenmp ATen's at::parallel_for (an inline OpenMP loop) runs every CPU kernel on one thread.
    assert ext.extension_has_openmp(), "instseg._C was built without OpenMP: rebuild it with a compiler taking -fopenmp"


@requires_extension
def test_extension_parallel_for_uses_torch_threads():
    from instseg import _C

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert _C.parallel_threads(16) == 1
        torch.set_num_threads(2)  # torch.set_num_threads governs the extension's loops too (one OpenMP runtime)
        assert _C.parallel_threads(16) == (2 if ext.extension_has_openmp() else 1)
    finally:
        torch.set_num_threads(threads)


@requires_extension
def test_extension_reports_its_build():
    from instseg import _C

    assert ext.extension_has_cuda() == _C.with_cuda()
    assert ext.extension_has_openmp() == _C.with_openmp()
