"""RDSNet (``papers/rdsnet.txt``: object stream + pixel stream, correlation + cropping) as a detectron2 extension.

``rdsnet.layers`` (the correlation + cropping op, box expansion, the OHEM mask loss, MBRM) needs only torch. Importing
the package registers ``add_rdsnet_config``; its detectron2 model (``rdsnet.modeling``) arrives with issue 15's next
slice.
"""

from instseg.registry import METHOD_CONFIG_REGISTRY

from . import layers  # noqa: F401
from .config import add_rdsnet_config

METHOD_CONFIG_REGISTRY.register(add_rdsnet_config)

__all__ = ["add_rdsnet_config"]
