"""Config setup for train_net.py and the tools, with one clear message for each user mistake."""

import difflib
import logging
import os

import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import default_setup

from instseg.config import get_cfg
from instseg.cpu import usable_cores
from instseg.data.datasets import register_synthetic_from_cfg

from .errors import UserError

logger = logging.getLogger(__name__)

# metadata keys that name files or folders a registered dataset reads
_PATH_KEYS = ("image_root", "json_file", "image_dir", "gt_dir", "panoptic_root", "panoptic_json", "sem_seg_root")


def merge_config(cfg, config_file=None, opts=()):
    """Merge a YAML file and ``KEY VALUE`` overrides into ``cfg``; bad keys become a UserError."""
    if config_file:
        if not os.path.isfile(config_file):
            raise UserError(f"Config file '{config_file}' does not exist.")
        try:
            cfg.merge_from_file(config_file)
        except KeyError as e:
            raise UserError(_bad_key_message(e, f"config file '{config_file}'")) from None
    if opts:
        if len(opts) % 2:
            raise UserError(f"Command-line overrides must be KEY VALUE pairs, got an odd list: {list(opts)}")
        try:
            cfg.merge_from_list(list(opts))
        except KeyError as e:
            raise UserError(_bad_key_message(e, "the command line")) from None
        except (ValueError, AssertionError) as e:
            if "Non-existent key" in str(e):  # yacs' merge_from_list asserts instead of raising KeyError
                raise UserError(_bad_key_message(e, "the command line")) from None
            raise UserError(f"Bad command-line override: {e}") from None
    return cfg


def _bad_key_message(err, where):
    msg = str(err.args[0]) if err.args else str(err)
    key = msg.split(":", 1)[-1].strip() if "Non-existent" in msg else msg
    return (
        f"Unknown config key '{key}' in {where}. Check its spelling against detectron2's defaults "
        "and the method's config.py (MODEL.<METHOD>.* keys); every key must exist before it is set."
    )


def check_datasets(cfg):
    """Every dataset the config names is registered and its files exist (synthetic ones are generated)."""
    registered = set(DatasetCatalog.list())
    for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
        if name not in registered:
            close = difflib.get_close_matches(name, sorted(registered), n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise UserError(
                f"Dataset '{name}' is not registered.{hint} Synthetic: synthetic_instances_{{train,val}}, "
                "synthetic_panoptic_{train,val}; COCO and Cityscapes use detectron2's builtin names "
                "(see README, 'Datasets')."
            )
        meta = MetadataCatalog.get(name)
        if meta.get("synthetic_spec", None) is not None:
            continue
        for key in _PATH_KEYS:
            path = meta.get(key, None)
            if path and not os.path.exists(path):
                root = os.environ.get("DETECTRON2_DATASETS", "datasets")
                raise UserError(
                    f"Dataset '{name}' needs {key}='{path}', which does not exist. Put the dataset under "
                    f"DETECTRON2_DATASETS (now '{root}') in detectron2's layout, or set DETECTRON2_DATASETS "
                    "to where it is (see README, 'Datasets')."
                )


def build_cfg(args, check=True):
    """The frozen config of train_net.py's arguments (no logging setup); raises UserError on mistakes."""
    cfg = get_cfg()
    merge_config(cfg, args.config_file, args.opts)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("No CUDA device: running on the CPU (MODEL.DEVICE=cpu).")
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    register_synthetic_from_cfg(cfg)
    if check:
        check_datasets(cfg)
    return cfg


def split_cpu_threads(cfg, num_local_processes):
    """On the CPU, give each of ``num_local_processes`` training processes its share of the cores.

    torch gives every process as many threads as the machine has cores, so N processes would run N times
    that many threads and fight over the cores. With ``OMP_NUM_THREADS`` set, the user's choice stands.
    Returns the number of threads this process uses.
    """
    if cfg.MODEL.DEVICE != "cpu" or num_local_processes <= 1 or os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    threads = max(1, usable_cores() // num_local_processes)
    torch.set_num_threads(threads)
    return threads


def setup_cfg(args, check=True):
    """:func:`build_cfg` plus detectron2's default_setup (logging, output dir, config dump); on the CPU,
    the processes of a ``--num-gpus N`` run share the cores (:func:`split_cpu_threads`)."""
    cfg = build_cfg(args, check)
    split_cpu_threads(cfg, getattr(args, "num_gpus", 1))
    default_setup(cfg, args)
    return cfg
