"""RDSNet's detectron2 parts, registered on import: the ``RDSNet`` meta-architecture (a ``RetinaNet``), its head
(``RDSNetHead``: RetinaNet's towers + the representation tower) and the pixel stream."""

from .heads import MASK_ASSEMBLIES, PixelStream, RDSNetHead
from .meta_arch import BOX_REFINEMENTS, RDSNet, check_rdsnet_config

__all__ = ["BOX_REFINEMENTS", "MASK_ASSEMBLIES", "PixelStream", "RDSNet", "RDSNetHead", "check_rdsnet_config"]
