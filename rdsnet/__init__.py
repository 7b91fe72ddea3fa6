"""RDSNet (``papers/rdsnet.txt``: object stream + pixel stream, correlation + cropping, MBRM) as a detectron2
extension.

``rdsnet.layers`` (the correlation + cropping op, box expansion, the OHEM mask loss, MBRM) needs only torch; the
detectron2 model (``rdsnet.modeling``: the ``RDSNet`` meta-architecture) is imported, and so registered, when detectron2
is installed. Importing the package registers ``add_rdsnet_config``.
"""

import importlib.util

from instseg.registry import METHOD_CONFIG_REGISTRY

from . import layers  # noqa: F401
from .config import add_rdsnet_config

METHOD_CONFIG_REGISTRY.register(add_rdsnet_config)

if importlib.util.find_spec("detectron2") is not None:
    from . import modeling  # noqa: F401

__all__ = ["add_rdsnet_config"]
