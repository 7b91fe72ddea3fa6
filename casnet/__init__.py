"""CASNet (``papers/casnet.txt``: semantic + common-attribute + box-probability heads, IoU-vote clustering) as a
detectron2 extension.

``casnet.layers`` (the IoU-vote clustering op, the targets, the post-processing) needs only torch; the detectron2 model
(``casnet.modeling``: the ``CASNet`` meta-architecture) and its instance-mode dataset mapper (``casnet.data``) are
imported, and so registered, when detectron2 is installed.
Importing the package registers ``add_casnet_config``.
"""

import importlib.util

from instseg.registry import METHOD_CONFIG_REGISTRY

from . import layers  # noqa: F401
from .config import add_casnet_config

METHOD_CONFIG_REGISTRY.register(add_casnet_config)

if importlib.util.find_spec("detectron2") is not None:
    from . import data, modeling  # noqa: F401

__all__ = ["add_casnet_config"]
