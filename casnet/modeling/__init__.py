"""CASNet's detectron2 parts, registered on import: the ``CASNet`` meta-architecture, its HRNetV2 fusion and FCN
heads."""

from .heads import FCNHead, HRFusion
from .meta_arch import CASNet

__all__ = ["CASNet", "FCNHead", "HRFusion"]
