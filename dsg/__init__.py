"""Deeply Shape-guided instance segmentation (DSG, ``papers/dsg_deeply_shape_guided.txt``) as a detectron2
extension.

``dsg.layers`` (the Shape-guided RoIAlign op) needs only torch; the detectron2 parts (``dsg.modeling``: ROI heads,
MPN, cascade, the shape-guided poolers) are imported, and so registered, when detectron2 is installed. Importing the
package registers ``add_dsg_config``.
"""

import importlib.util

from instseg.registry import METHOD_CONFIG_REGISTRY

from . import layers  # noqa: F401
from .config import add_dsg_config

METHOD_CONFIG_REGISTRY.register(add_dsg_config)

if importlib.util.find_spec("detectron2") is not None:
    from . import modeling  # noqa: F401

__all__ = ["add_dsg_config"]
