"""Config keys of the embedded synthetic dataset (``DATASETS.SYNTHETIC``)."""
from detectron2.config import CfgNode as CN

from .datasets import DEFAULT_SPECS


def add_synthetic_config(cfg) -> None:
    train, val = DEFAULT_SPECS["train"], DEFAULT_SPECS["val"]
    cfg.DATASETS.SYNTHETIC = CN()
    # (height, width) of every synthetic image
    cfg.DATASETS.SYNTHETIC.IMAGE_SIZE = (train.height, train.width)
    cfg.DATASETS.SYNTHETIC.NUM_TRAIN = train.num_images
    cfg.DATASETS.SYNTHETIC.NUM_VAL = val.num_images
    # the train split uses SEED, the val split SEED + 1
    cfg.DATASETS.SYNTHETIC.SEED = train.seed
    cfg.DATASETS.SYNTHETIC.MAX_INSTANCES = train.max_instances
