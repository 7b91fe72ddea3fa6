"""Model parts shared by the methods, registered in detectron2's registries on import."""

from .backbone import build_basic_resnet, build_basic_resnet_fpn_backbone
from .hrnet import HRNET_MODELS, TimmHRNet, build_timm_hrnet_backbone

__all__ = [
    "HRNET_MODELS",
    "TimmHRNet",
    "build_basic_resnet",
    "build_basic_resnet_fpn_backbone",
    "build_timm_hrnet_backbone",
]
