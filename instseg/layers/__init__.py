"""Layers shared by the method packages (pure PyTorch)."""

from .upsample import upsample_and_predict

__all__ = ["upsample_and_predict"]
