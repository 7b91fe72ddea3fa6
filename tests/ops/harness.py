"""The test harness every custom op of csrc/ shares (as torchvision's ``RoIOpTester``).

An op's test file subclasses :class:`OpTester` as ``class Test<Op>(OpTester)`` and says only what is specific
to the op: its public function and pure-PyTorch reference, how to make sample inputs, and which compiled ops
(``torch.ops.instseg.*``) take which arguments. The base class then runs, on CPU and (where a GPU is present)
on CUDA:

* ``torch.library.opcheck`` on the compiled forward (and backward) op: schema, autograd registration, fake
  (meta) kernel, AOT dispatch;
* float32 / float64 parity of the op with its reference, forward and (differentiable ops) gradients;
* ``gradcheck`` in float64 through the public function;
* empty inputs (shapes, dtypes, zero gradients);
* meta tensors (the fake kernel gives the output's shape and dtype);
* ``torch.compile(fullgraph=True)`` of a small function that calls the op, against eager (CPU);
* ``torch.export`` of a module that calls the op: the op stays one node of the graph, and the program matches eager;
* the registration itself, and the fallback to the reference (with a warning) when the extension is missing.
"""

import os
import shutil
import warnings
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple

import pytest
import torch

import instseg.extension as ext
from tests.utils import cuda_available

DTYPES = [torch.float32, torch.float64]
DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(not cuda_available(), reason="no CUDA device")),
]
NO_EXTENSION = "instseg._C is not built (pip install --no-build-isolation -e .): the op runs on its reference"


def requires_extension(device: str):
    """Skip unless the compiled op exists for ``device`` (a CUDA device also needs the CUDA kernels)."""
    if not ext.extension_available():
        pytest.skip(NO_EXTENSION)
    if device == "cuda" and not ext.extension_has_cuda():
        pytest.skip("instseg._C was built without its CUDA kernels")


def cpp_toolchain_missing() -> Optional[str]:
    """Why torch.compile's CPU backend (inductor, which compiles C++) cannot run here, or None when it can."""
    compilers = [os.environ.get("CXX"), "c++", "g++", "clang++"]
    if not any(c and shutil.which(c) for c in compilers):
        return "no C++ compiler on PATH (set CXX): torch.compile's CPU backend (inductor) needs one"
    return None


class Sample(NamedTuple):
    """Arguments of the op's public function; ``grad_args`` are the positions of its differentiable inputs."""

    args: tuple
    grad_args: Tuple[int, ...] = ()


def _to(args, device):
    return tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args)


def _with_grad(sample: Sample, device="cpu") -> tuple:
    args = list(_to(sample.args, device))
    for i in sample.grad_args:
        args[i] = args[i].detach().clone().requires_grad_(True)
    return tuple(args)


def _outputs(out) -> List[torch.Tensor]:
    return list(out) if isinstance(out, (tuple, list)) else [out]


class OpTester:
    """Base class of an op's tests. Subclasses set the attributes and implement the methods marked so."""

    #: name of the compiled forward op, ``torch.ops.instseg.<forward_op>``
    forward_op: str
    #: name of the compiled backward op, or None (not differentiable)
    backward_op: Optional[str] = None
    #: the module that registers the op's fake kernels and autograd (its C++ set_python_module)
    wrapper_module: str
    #: tolerances of the float32 / float64 parity with the reference (None: exact)
    tolerances = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-10)}

    # ----------------------------------------------------------------------------- what a subclass says
    def fn(self, *args):
        """The op's public function (compiled op, or the reference when the extension is missing)."""
        raise NotImplementedError

    def reference(self, *args):
        """The op's pure-PyTorch reference, same arguments as :meth:`fn`."""
        raise NotImplementedError

    def sample(self, dtype, device="cpu", seed=0) -> Sample:
        """Random inputs of moderate size (on ``device``)."""
        raise NotImplementedError

    def empty_samples(self, dtype, device="cpu") -> Sequence[Sample]:
        """Inputs with an empty dimension (no RoI, no object, no pixel, no seed...)."""
        raise NotImplementedError

    def op_args(self, args: tuple) -> tuple:
        """The compiled forward op's arguments for the public function's ``args``."""
        raise NotImplementedError

    def backward_op_args(self, args: tuple, grad: torch.Tensor) -> tuple:
        """The compiled backward op's arguments for the public function's ``args`` and an output gradient."""
        raise NotImplementedError

    def expected_shapes(self, args: tuple) -> List[Tuple[Tuple[int, ...], torch.dtype]]:
        """(shape, dtype) of each output for ``args``."""
        raise NotImplementedError

    # ----------------------------------------------------------------------------- helpers
    @property
    def differentiable(self) -> bool:
        return self.backward_op is not None

    def assert_same(self, actual, expected, dtype):
        actual, expected = _outputs(actual), _outputs(expected)
        assert len(actual) == len(expected)
        tol = self.tolerances.get(dtype)
        for a, e in zip(actual, expected):
            if tol is None or not e.is_floating_point():
                assert a.dtype == e.dtype and torch.equal(a.cpu(), e.cpu())
            else:
                torch.testing.assert_close(a.cpu(), e.cpu(), **tol)

    def grads(self, fn: Callable, sample: Sample, device: str, seed: int = 1):
        """Output(s) of ``fn`` and the gradients of the differentiable inputs for a fixed random output grad."""
        args = _with_grad(sample, device)
        out = fn(*args)
        g = torch.Generator().manual_seed(seed)
        upstream = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype).to(device)
        inputs = [args[i] for i in sample.grad_args]
        grads = torch.autograd.grad(out, inputs, upstream, allow_unused=True)
        return [out.detach()] + [torch.zeros_like(x) if gr is None else gr for x, gr in zip(inputs, grads)]

    def _op(self, name):
        return getattr(torch.ops.instseg, name).default

    # ----------------------------------------------------------------------------- the shared tests
    def test_registered_with_kernels_per_device(self):
        if not ext.extension_available():
            pytest.skip(NO_EXTENSION)
        has_kernel = torch._C._dispatch_has_kernel_for_dispatch_key
        for name in filter(None, (self.forward_op, self.backward_op)):
            qualname = f"instseg::{name}"
            assert ext.get_op(name) is not None, f"instseg._C is built but torch.ops.{qualname} is missing"
            assert has_kernel(qualname, "CPU")
            assert has_kernel(qualname, "CUDA") == ext.extension_has_cuda()
            assert has_kernel(qualname, "Meta"), f"{qualname} has no fake (meta) kernel"
            # The C++ schema names the Python module that registers the fake kernel and autograd.
            pystub = getattr(torch._C, "_dispatch_pystub", None)  # private: checked where this torch has it
            if pystub is not None:
                assert pystub(qualname, "")[0] == self.wrapper_module
        has_autograd = has_kernel(f"instseg::{self.forward_op}", "Autograd")
        assert has_autograd == self.differentiable

    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_opcheck(self, dtype, device):
        requires_extension(device)
        sample = self.sample(dtype, device, seed=3)
        args = _with_grad(sample, device)
        torch.library.opcheck(self._op(self.forward_op), self.op_args(args))
        if self.differentiable:
            out = self.fn(*sample.args)
            grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(4), dtype=dtype).to(device)
            torch.library.opcheck(self._op(self.backward_op), self.backward_op_args(_to(sample.args, device), grad))

    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_matches_reference(self, dtype, device):
        if device == "cuda":
            requires_extension(device)
        for seed in range(3):
            sample = self.sample(dtype, device, seed=seed)
            if not self.differentiable:
                self.assert_same(self.fn(*sample.args), self.reference(*_to(sample.args, "cpu")), dtype)
                continue
            ref = self.grads(self.reference, Sample(_to(sample.args, "cpu"), sample.grad_args), "cpu")
            self.assert_same(self.grads(self.fn, sample, device), ref, dtype)

    @pytest.mark.parametrize("device", DEVICES)
    def test_gradcheck_float64(self, device):
        if not self.differentiable:
            pytest.skip("not differentiable")
        if device == "cuda":
            requires_extension(device)
        sample = self.sample(torch.float64, device, seed=5)
        args = _with_grad(sample, device)

        def fn(*grad_inputs):
            full = list(args)
            for i, x in zip(sample.grad_args, grad_inputs):
                full[i] = x
            return self.fn(*full)

        assert torch.autograd.gradcheck(fn, tuple(args[i] for i in sample.grad_args), eps=1e-6, atol=1e-6)

    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_empty_inputs(self, dtype, device):
        if device == "cuda":
            requires_extension(device)
        for sample in self.empty_samples(dtype, device):
            args = _with_grad(sample, device)
            out = self.fn(*args)
            for o, (shape, odtype) in zip(_outputs(out), self.expected_shapes(args)):
                assert o.shape == shape and o.dtype == odtype and o.device.type == device
            self.assert_same(out, self.reference(*_to(args, "cpu")), dtype)
            if self.differentiable and ext.extension_available():  # zero gradients of the inputs' shapes
                inputs = [args[i] for i in sample.grad_args]
                grads = torch.autograd.grad(out.sum(), inputs, allow_unused=True)
                for x, g in zip(inputs, grads):
                    assert g is not None and g.shape == x.shape and torch.count_nonzero(g) == 0

    def test_meta_tensors(self):
        if not ext.extension_available():
            pytest.skip(NO_EXTENSION)
        sample = self.sample(torch.float32, "cpu", seed=6)
        meta = _to(sample.args, "meta")
        out = self.fn(*meta)
        for o, (shape, dtype) in zip(_outputs(out), self.expected_shapes(sample.args)):
            assert o.is_meta and o.shape == shape and o.dtype == dtype

    def test_compile_fullgraph_matches_eager(self):
        if not ext.extension_available():
            pytest.skip(NO_EXTENSION)
        reason = cpp_toolchain_missing()
        if reason:
            pytest.skip(reason)
        torch._dynamo.reset()
        sample = self.sample(torch.float64, "cpu", seed=7)

        def small(*args):  # the op between two ordinary ops, so that inductor has something to fuse around it
            out = _outputs(self.fn(*args))
            return [o * 2 if o.is_floating_point() else o + 1 for o in out]

        compiled = torch.compile(small, fullgraph=True)
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # no fallback to the reference under compile
            if not self.differentiable:
                self.assert_same(compiled(*sample.args), small(*sample.args), torch.float64)
                return
            self.assert_same(
                self.grads(lambda *a: compiled(*a)[0], sample, "cpu"),
                self.grads(lambda *a: small(*a)[0], sample, "cpu"),
                torch.float64,
            )

    def test_export_keeps_the_op_and_matches_eager(self):
        if not ext.extension_available():
            pytest.skip(NO_EXTENSION)
        sample = self.sample(torch.float32, "cpu", seed=9)
        tensors = [i for i, a in enumerate(sample.args) if isinstance(a, torch.Tensor)]
        fn = self.fn

        class Wrapper(torch.nn.Module):  # the tensors are the inputs, the other arguments constants
            def forward(self, *xs):
                args = list(sample.args)
                for i, x in zip(tensors, xs):
                    args[i] = x
                return fn(*args)

        inputs = tuple(sample.args[i] for i in tensors)
        exported = torch.export.export(Wrapper(), inputs)
        targets = [str(node.target) for node in exported.graph.nodes if node.op == "call_function"]
        assert f"instseg.{self.forward_op}.default" in targets, targets
        self.assert_same(exported.module()(*inputs), fn(*sample.args), torch.float32)

    def test_falls_back_to_reference_with_a_warning(self, monkeypatch):
        monkeypatch.setattr(ext, "get_op", lambda name: None)
        monkeypatch.setattr(ext, "_warned", set())
        sample = self.sample(torch.float64, "cpu", seed=8)
        with pytest.warns(RuntimeWarning, match=self.forward_op):
            out = self.fn(*sample.args)
        self.assert_same(out, self.reference(*sample.args), torch.float64)
