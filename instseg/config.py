"""One ``get_cfg()`` for every method: detectron2's defaults, the synthetic dataset's keys and each
method package's ``add_<method>_config``. train_net.py, the tools and the tests build configs here."""
import importlib
import importlib.util

from detectron2.config import get_cfg as _d2_get_cfg

import instseg.modeling  # noqa: F401  (registers instseg's backbones)
from instseg.data.config import add_synthetic_config

# (package, function) of every method; packages that are not there yet are skipped
METHOD_CONFIGS = [
    ("maskpoint", "add_maskpoint_config"),
    ("maskplus", "add_maskplus_config"),
    ("dsg", "add_dsg_config"),
    ("rdsnet", "add_rdsnet_config"),
    ("casnet", "add_casnet_config"),
]


def method_config_functions():
    """The ``add_<method>_config`` functions of the method packages that provide one."""
    fns = []
    for package, fn_name in METHOD_CONFIGS:
        if importlib.util.find_spec(package) is None:
            continue
        module = importlib.import_module(package)
        fn = getattr(module, fn_name, None)
        if fn is not None:
            fns.append(fn)
    return fns


def add_instseg_config(cfg) -> None:
    """Keys instseg adds outside the method nodes."""
    # "SGD" (detectron2's optimizer) or "AdamW" (same parameter groups, lr and weight decay)
    cfg.SOLVER.OPTIMIZER = "SGD"


def get_cfg():
    """detectron2's default config extended with every key instseg knows."""
    cfg = _d2_get_cfg()
    add_instseg_config(cfg)
    add_synthetic_config(cfg)
    for fn in method_config_functions():
        fn(cfg)
    return cfg
