"""One ``get_cfg()`` for every method: detectron2's defaults, instseg's own keys and the ``add_<method>_config`` of
every method package (registered in ``instseg.registry.METHOD_CONFIG_REGISTRY`` when the package is imported).
train_net.py, the tools and the tests build configs here."""

from detectron2.config import get_cfg as _d2_get_cfg

import instseg.modeling  # noqa: F401  (registers instseg's backbones)
from instseg.data.config import add_synthetic_config
from instseg.registry import METHOD_CONFIG_REGISTRY, load_methods


def method_config_functions():
    """The ``add_<method>_config`` functions of the shipped method packages (imported here if they were not)."""
    load_methods()
    return [fn for _, fn in sorted(METHOD_CONFIG_REGISTRY, key=lambda item: item[0])]


def add_instseg_config(cfg) -> None:
    """Keys instseg adds outside the method nodes."""
    from detectron2.config import CfgNode as CN

    # "SGD" (detectron2's optimizer) or "AdamW" (same parameter groups, lr and weight decay)
    cfg.SOLVER.OPTIMIZER = "SGD"
    # timm's HRNet as a backbone (instseg/modeling/hrnet.py): the model, the outputs kept (0: the stem at stride 2,
    # 1-4: the branches at strides 4-32), timm's ImageNet weights or not
    cfg.MODEL.HRNET = CN()
    cfg.MODEL.HRNET.NAME = "hrnet_w48"
    cfg.MODEL.HRNET.OUT_INDICES = [0, 1, 2]
    cfg.MODEL.HRNET.PRETRAINED = False


def get_cfg():
    """detectron2's default config extended with every key instseg knows."""
    cfg = _d2_get_cfg()
    add_instseg_config(cfg)
    add_synthetic_config(cfg)
    for fn in method_config_functions():
        fn(cfg)
    return cfg
