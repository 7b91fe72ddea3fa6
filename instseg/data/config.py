"""Config keys of ``instseg.data``: the embedded synthetic dataset (``DATASETS.SYNTHETIC``) and the dataset
mapper of the train/test loaders (``INPUT.DATASET_MAPPER_NAME``, see ``instseg.data.mappers``)."""

from detectron2.config import CfgNode as CN

from .datasets import DEFAULT_SPECS
from .mappers import add_dataset_mapper_config


def add_synthetic_config(cfg) -> None:
    """The keys of ``instseg.data`` (``instseg.config.get_cfg`` calls this one function of the package)."""
    add_dataset_mapper_config(cfg)
    train, val = DEFAULT_SPECS["train"], DEFAULT_SPECS["val"]
    cfg.DATASETS.SYNTHETIC = CN()
    # (height, width) of every synthetic image
    cfg.DATASETS.SYNTHETIC.IMAGE_SIZE = (train.height, train.width)
    cfg.DATASETS.SYNTHETIC.NUM_TRAIN = train.num_images
    cfg.DATASETS.SYNTHETIC.NUM_VAL = val.num_images
    # the train split uses SEED, the val split SEED + 1
    cfg.DATASETS.SYNTHETIC.SEED = train.seed
    cfg.DATASETS.SYNTHETIC.MAX_INSTANCES = train.max_instances
