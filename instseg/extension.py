"""Loader for the compiled extension ``instseg._C`` and the input checks every op wrapper shares.

Op wrappers (``dsg.layers``, ``rdsnet.layers``, ``casnet.layers``) ask :func:`get_op` for the compiled
kernel. When the extension was not built they fall back to their pure-PyTorch reference on CPU (with a
one-time warning); a CUDA tensor with no CUDA kernel is a clear error.
"""
import functools
import logging
import warnings
from typing import Optional, Sequence

import torch

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=None)
def _load_extension() -> bool:
    try:
        from instseg import _C  # noqa: F401  (importing registers torch.ops.instseg.*)
    except ImportError as e:
        logger.debug("instseg._C could not be imported: %s", e)
        return False
    return True


def extension_available() -> bool:
    """Whether the compiled extension ``instseg._C`` is importable."""
    return _load_extension()


def extension_has_cuda() -> bool:
    """Whether the compiled extension has its CUDA kernels."""
    if not _load_extension():
        return False
    from instseg import _C

    return bool(_C.with_cuda())


def get_op(name: str):
    """The compiled op ``torch.ops.instseg.<name>``, or None when it is not available."""
    _load_extension()
    try:
        return getattr(torch.ops.instseg, name)
    except (AttributeError, RuntimeError):
        return None


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
    """Return the compiled op for these tensors, or ``reference`` when falling back is allowed.

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
