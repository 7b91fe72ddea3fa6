"""ResNet-18/34 of any width, with FPN (``MODEL.BACKBONE.NAME: build_basic_resnet_fpn_backbone``).

detectron2's ``build_resnet_backbone`` fixes the basic-block ResNets to 64 channels in res2. The CPU-friendly
synthetic configs train from scratch on two cores, where the backbone is most of a step: a half-width
ResNet-18 (``MODEL.RESNETS.RES2_OUT_CHANNELS: 32``) costs a quarter of the multiply-adds. The stages are
detectron2's own ``BasicStem``, ``BasicBlock`` and ``ResNet``; res(k+1) has twice the channels of res(k).
"""

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, ResNet

BLOCKS_PER_STAGE = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3]}


def build_basic_resnet(cfg, input_shape: ShapeSpec) -> ResNet:
    r = cfg.MODEL.RESNETS
    if r.DEPTH not in BLOCKS_PER_STAGE:
        raise ValueError(
            f"build_basic_resnet_fpn_backbone builds basic-block ResNets (MODEL.RESNETS.DEPTH 18 or 34), got "
            f"DEPTH {r.DEPTH}; use detectron2's build_resnet_fpn_backbone for bottleneck ResNets"
        )
    if r.RES2_OUT_CHANNELS < 1 or r.STEM_OUT_CHANNELS < 1:
        raise ValueError(
            f"MODEL.RESNETS.RES2_OUT_CHANNELS and STEM_OUT_CHANNELS must be >= 1, got "
            f"{r.RES2_OUT_CHANNELS} and {r.STEM_OUT_CHANNELS}"
        )
    stem = BasicStem(in_channels=input_shape.channels, out_channels=r.STEM_OUT_CHANNELS, norm=r.NORM)
    stages, in_channels = [], r.STEM_OUT_CHANNELS
    for i, n in enumerate(BLOCKS_PER_STAGE[r.DEPTH]):
        out_channels = r.RES2_OUT_CHANNELS * 2**i
        stages.append(
            ResNet.make_stage(
                block_class=BasicBlock,
                num_blocks=n,
                stride_per_block=[1 if i == 0 else 2] + [1] * (n - 1),
                in_channels=in_channels,
                out_channels=out_channels,
                norm=r.NORM,
            )
        )
        in_channels = out_channels
    return ResNet(stem, stages, out_features=r.OUT_FEATURES, freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT)


@BACKBONE_REGISTRY.register()
def build_basic_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """:func:`build_basic_resnet` + detectron2's FPN with a max-pooled P6, as ``build_resnet_fpn_backbone``."""
    return FPN(
        bottom_up=build_basic_resnet(cfg, input_shape),
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
