"""The data side of Mask Point R-CNN: the contour-point targets, sampled per instance after augmentation in the
data-loader workers (importing this package with detectron2 registers ``ContourPointDatasetMapper`` in
``instseg.data.mappers.DATASET_MAPPER_REGISTRY``)."""
import importlib.util

__all__ = []

if importlib.util.find_spec("detectron2") is not None:
    from .dataset_mapper import ContourPointDatasetMapper

    __all__ += ["ContourPointDatasetMapper"]
