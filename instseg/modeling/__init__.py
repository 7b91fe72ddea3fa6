"""Model parts shared by the methods, registered in detectron2's registries on import."""

from .backbone import build_basic_resnet, build_basic_resnet_fpn_backbone

__all__ = ["build_basic_resnet", "build_basic_resnet_fpn_backbone"]
