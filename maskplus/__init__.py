"""MaskPlus (``papers/maskplus.txt``) as a detectron2 extension.

``maskplus.layers`` (contextual fusion's convs, the deconvolutional pyramid, boundary refinement) needs only torch; the
detectron2 parts (``maskplus.modeling``: the ROI heads, MaskPlus+ on the cascade, the mask head) are imported, and so
registered, when detectron2 is installed. Importing the package registers ``add_maskplus_config``.
"""

import importlib.util

from instseg.registry import METHOD_CONFIG_REGISTRY

from . import layers  # noqa: F401
from .config import add_maskplus_config

METHOD_CONFIG_REGISTRY.register(add_maskplus_config)

if importlib.util.find_spec("detectron2") is not None:
    from . import modeling  # noqa: F401

__all__ = ["add_maskplus_config"]
