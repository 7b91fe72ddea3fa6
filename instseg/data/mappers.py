"""Dataset mappers by name: ``INPUT.DATASET_MAPPER_NAME`` picks the mapper of the Trainer's train and test loaders.

detectron2's ``DatasetMapper`` is registered as ``"DatasetMapper"``, the default. A method whose targets are made
per image after augmentation, in the data-loader workers (as detectron2 does for keypoints), registers a
``DatasetMapper`` subclass here when its package is imported, and its configs name it. This module knows no method.
"""

from detectron2.data import DatasetMapper
from detectron2.utils.registry import Registry

DATASET_MAPPER_REGISTRY = Registry("DATASET_MAPPER")
DATASET_MAPPER_REGISTRY.__doc__ = """
Registry for dataset mappers: callables ``mapper(dataset_dict) -> model input`` built as ``cls(cfg, is_train)``
(detectron2's ``DatasetMapper`` and its ``@configurable`` subclasses), chosen by ``INPUT.DATASET_MAPPER_NAME``.
"""
DATASET_MAPPER_REGISTRY.register(DatasetMapper)


def add_dataset_mapper_config(cfg) -> None:
    """``INPUT.DATASET_MAPPER_NAME``: the registered mapper of the train and test loaders."""
    cfg.INPUT.DATASET_MAPPER_NAME = "DatasetMapper"


def dataset_mapper_class(cfg):
    """The class ``INPUT.DATASET_MAPPER_NAME`` names; an unknown name is a ValueError listing the registered ones."""
    name = cfg.INPUT.DATASET_MAPPER_NAME
    if name not in DATASET_MAPPER_REGISTRY:
        known = ", ".join(sorted(k for k, _ in DATASET_MAPPER_REGISTRY))
        raise ValueError(
            f"INPUT.DATASET_MAPPER_NAME is {name!r}, which is not a registered dataset mapper (registered: {known}). "
            "A method's mapper is registered when its package is imported."
        )
    return DATASET_MAPPER_REGISTRY.get(name)
