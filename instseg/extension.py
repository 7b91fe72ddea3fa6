"""Loader for the compiled extension ``instseg._C`` and the input checks every op wrapper shares.

The extension defines each op's schema and its CPU/CUDA kernels (``csrc/<op>/``). The op wrapper modules of the
method packages (the module each op names with ``set_python_module`` in its ``<op>.cpp``) register the rest with
``torch.library`` when :func:`extension_available`: the fake (meta) kernels (``register_fake``) and the backward
formula (``register_autograd``), as torchvision does for its ops, so the ops work on meta tensors and under
``torch.compile`` / ``torch.export``. The wrappers call the compiled op through :func:`dispatch`; when the
extension was not built they fall back to their pure-PyTorch reference on CPU (with a one-time warning), and a
CUDA tensor with no CUDA kernel is a clear error.
"""

import logging
import warnings
from typing import Optional, Sequence

import torch

logger = logging.getLogger(__name__)

# What the extension offers, read once when it is first asked for (plain values, so that the wrappers' checks
# trace under torch.compile): None until then, {} when instseg._C cannot be imported.
_FEATURES: Optional[dict] = None


def _features() -> dict:
    global _FEATURES
    if _FEATURES is None:
        try:
            from instseg import _C  # importing registers torch.ops.instseg.*
        except ImportError as e:
            logger.debug("instseg._C could not be imported: %s", e)
            _FEATURES = {}
        else:
            with_openmp = getattr(_C, "with_openmp", None)  # builds before it was exposed had no OpenMP
            _FEATURES = {"cuda": bool(_C.with_cuda()), "openmp": bool(with_openmp()) if with_openmp else False}
    return _FEATURES


def extension_available() -> bool:
    """Whether the compiled extension ``instseg._C`` is importable."""
    return bool(_features())


def extension_has_cuda() -> bool:
    """Whether the compiled extension has its CUDA kernels."""
    return _features().get("cuda", False)


def extension_has_openmp() -> bool:
    """Whether the extension's C++ was compiled with OpenMP, so that ``at::parallel_for`` in its CPU kernels
    runs on ``torch.get_num_threads()`` threads (without it ATen runs those loops serially)."""
    return _features().get("openmp", False)


def get_op(name: str):
    """The compiled op ``torch.ops.instseg.<name>``, or None when it is not available."""
    if not _features():
        return None
    try:
        return getattr(torch.ops.instseg, name)
    except (AttributeError, RuntimeError):
        return None


def values_readable(*tensors: torch.Tensor) -> bool:
    """Whether an op wrapper may read these tensors' values for a data check (e.g. that batch indices lie in
    range): not while ``torch.compile`` / ``torch.export`` trace it, nor for meta tensors. The compiled kernels
    check such data again themselves."""
    return not torch.compiler.is_compiling() and not any(t.is_meta for t in tensors)


_warned = set()


def warn_fallback_once(op_name: str) -> None:
    if op_name not in _warned:
        _warned.add(op_name)
        warnings.warn(
            f"instseg: the compiled op '{op_name}' is not available (instseg._C was not built); "
            "using the slower pure-PyTorch reference. Rebuild with `pip install --no-build-isolation -e .`.",
            RuntimeWarning,
            stacklevel=3,
        )


def dispatch(op_name: str, reference, *tensors: torch.Tensor):
    """Return the compiled op ``torch.ops.instseg.<op_name>`` for these tensors, or ``reference`` when falling
    back is allowed (no extension, CPU tensors). Meta and fake tensors get the compiled op (its fake kernel).

    Raises a clear RuntimeError for CUDA tensors when the extension has no CUDA kernels.
    """
    op = get_op(op_name)
    on_cuda = any(t.is_cuda for t in tensors)
    if op is not None and (not on_cuda or extension_has_cuda()):
        return op
    if on_cuda:
        raise RuntimeError(
            f"instseg: '{op_name}' got CUDA tensors but instseg._C has no CUDA kernels. Rebuild the extension "
            "with the CUDA toolkit present (or FORCE_CUDA=1), or move the inputs to the CPU."
        )
    warn_fallback_once(op_name)
    return reference


# ----------------------------------------------------------------------------------------------
# Input checks shared by every op wrapper: one clear ValueError instead of a crash in a kernel.
# ----------------------------------------------------------------------------------------------
def check_tensor(
    name: str,
    t,
    *,
    ndim: Optional[int] = None,
    shape: Optional[Sequence[Optional[int]]] = None,
    floating: bool = False,
    integer: bool = False,
    op: str = "op",
) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{op}: '{name}' must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{op}: '{name}' must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if shape is not None:
        for i, s in enumerate(shape):
            if s is not None and t.shape[i] != s:
                want = tuple("*" if s is None else s for s in shape)
                raise ValueError(f"{op}: '{name}' must have shape {want}, got {tuple(t.shape)}")
    if floating and not t.is_floating_point():
        raise ValueError(f"{op}: '{name}' must be a floating-point tensor, got {t.dtype}")
    if integer and (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool):
        raise ValueError(f"{op}: '{name}' must be an integer tensor, got {t.dtype}")


def check_same_device(op: str, **tensors: torch.Tensor) -> None:
    devices = {k: v.device for k, v in tensors.items()}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{k} on {d}" for k, d in devices.items())
        raise ValueError(f"{op}: all inputs must be on the same device, got {listing}")


def check_same_dtype(op: str, **tensors: torch.Tensor) -> None:
    dtypes = {k: v.dtype for k, v in tensors.items()}
    if len(set(dtypes.values())) > 1:
        listing = ", ".join(f"{k}: {d}" for k, d in dtypes.items())
        raise ValueError(f"{op}: floating inputs must share one dtype, got {listing}")
