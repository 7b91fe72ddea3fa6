"""MaskPlus (``papers/maskplus.txt``) as a detectron2 extension.

``maskplus.layers`` (boundary refinement, the deconvolutional pyramid) needs only torch. Importing the package
registers ``add_maskplus_config``; its detectron2 ROI heads (``maskplus.modeling``) arrive with the next slice of
issue 14.
"""

from instseg.registry import METHOD_CONFIG_REGISTRY

from . import layers  # noqa: F401
from .config import add_maskplus_config

METHOD_CONFIG_REGISTRY.register(add_maskplus_config)

__all__ = ["add_maskplus_config"]
