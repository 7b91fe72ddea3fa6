"""CASNet (``papers/casnet.txt``: semantic + common-attribute + box-probability heads, IoU-vote clustering) as a
detectron2 extension.

``casnet.layers`` (the IoU-vote clustering op) needs only torch. Importing the package registers
``add_casnet_config``; its detectron2 model (``casnet.modeling``) arrives with its issue.
"""

from instseg.registry import METHOD_CONFIG_REGISTRY

from . import layers  # noqa: F401
from .config import add_casnet_config

METHOD_CONFIG_REGISTRY.register(add_casnet_config)

__all__ = ["add_casnet_config"]
