"""Datasets: the embedded synthetic dataset (instances + panoptic), its Cityscapes-layout writer, and
registration in detectron2's catalogs.

``synthetic`` and ``cache`` need no detectron2; importing this package registers the synthetic names
when detectron2 is installed.
"""

import importlib.util

from .synthetic import STUFF_CLASSES, THING_CLASSES, SyntheticScene, SyntheticSpec, render_scene  # noqa: F401

if importlib.util.find_spec("detectron2") is not None:
    from instseg.compat import ensure_cityscapesscripts_alias

    ensure_cityscapesscripts_alias()  # detectron2's Cityscapes loaders/evaluators import an internal path
    from .datasets import (  # noqa: F401
        register_all_synthetic,
        register_synthetic,
        register_synthetic_from_cfg,
        specs_from_cfg,
    )
    from .mappers import DATASET_MAPPER_REGISTRY, dataset_mapper_class  # noqa: F401

    register_all_synthetic()
