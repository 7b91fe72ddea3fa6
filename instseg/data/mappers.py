"""Dataset mappers by name: ``INPUT.DATASET_MAPPER_NAME`` picks the mapper of the Trainer's train and test loaders.

detectron2's ``DatasetMapper`` is registered as ``"DatasetMapper"``, the default. A method whose targets are made
per image after augmentation, in the data-loader workers (as detectron2 does for keypoints), registers a
``DatasetMapper`` subclass here when its package is imported, and its configs name it. This module knows no method;
it registers ``PanopticDatasetMapper``, for any panoptic dataset.
"""

import copy

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import DatasetMapper, MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Instances
from detectron2.utils.registry import Registry

from .panoptic import rgb2id

DATASET_MAPPER_REGISTRY = Registry("DATASET_MAPPER")
DATASET_MAPPER_REGISTRY.__doc__ = """
Registry for dataset mappers: callables ``mapper(dataset_dict) -> model input`` built as ``cls(cfg, is_train)``
(detectron2's ``DatasetMapper`` and its ``@configurable`` subclasses), chosen by ``INPUT.DATASET_MAPPER_NAME``.
"""
DATASET_MAPPER_REGISTRY.register(DatasetMapper)


def add_dataset_mapper_config(cfg) -> None:
    """``INPUT.DATASET_MAPPER_NAME``: the registered mapper of the train and test loaders. ``INPUT.CROP.AFTER_RESIZE``:
    crop the resized image (resize, crop, flip: the semantic / panoptic segmentation recipes, e.g. CASNet's Sec. IV)
    instead of detectron2's crop of the original image before the resize."""
    cfg.INPUT.DATASET_MAPPER_NAME = "DatasetMapper"
    cfg.INPUT.CROP.AFTER_RESIZE = False


def build_augmentations(cfg, is_train: bool) -> list:
    """detectron2's augmentations of ``DatasetMapper`` (resize, flip; ``INPUT.CROP`` in training), the crop placed
    after the resize when ``INPUT.CROP.AFTER_RESIZE``."""
    augs = utils.build_augmentation(cfg, is_train)
    if cfg.INPUT.CROP.ENABLED and is_train:
        crop = T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE)
        augs.insert(1 if cfg.INPUT.CROP.AFTER_RESIZE else 0, crop)  # augs[0] is the ResizeShortestEdge
    return augs


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


# ----------------------------------------------------------------------------------------------------------------------
# A dataset mapper for detectron2's panoptic dataset dicts
# ----------------------------------------------------------------------------------------------------------------------


def thing_semantic_ids(meta) -> list:
    """The semantic (contiguous) id of each thing class of a panoptic dataset's metadata, in thing-index order: the
    values of ``thing_dataset_id_to_contiguous_id`` (detectron2's COCO and Cityscapes panoptic conventions both give
    things their id in the semantic label space there)."""
    mapping = meta.get("thing_dataset_id_to_contiguous_id", None)
    if not mapping:
        raise ValueError(
            f"dataset metadata {meta.name!r} has no thing_dataset_id_to_contiguous_id: a panoptic model needs a "
            "registered panoptic dataset (DATASETS.TRAIN, or DATASETS.TEST for inference)"
        )
    return sorted(mapping.values())


@DATASET_MAPPER_REGISTRY.register()
class PanopticDatasetMapper(DatasetMapper):
    """``DatasetMapper`` for detectron2's panoptic dicts (``pan_seg_file_name`` + ``segments_info``, as the COCO and
    Cityscapes panoptic loaders and ``synthetic_panoptic_*`` give): the panoptic PNG goes through the same
    augmentation as the image (nearest), then

    * ``sem_seg``: each pixel's segment category (the dataset's contiguous semantic id; crowd regions too: they are
      of their class); void pixels get ``ignore_label``; every thing pixel gets ``sem_seg_things_label`` where the
      metadata names one (detectron2's separated convention, Panoptic FPN's); kept at test time too;
    * ``instances`` (training): one per non-crowd thing segment still visible: ``gt_masks`` (BitMasks),
      ``gt_boxes`` (the mask's tight box), ``gt_classes`` (the thing index, 0..K-1, in the order of
      ``thing_semantic_ids``).

    Dicts without ``pan_seg_file_name`` go to ``DatasetMapper`` unchanged."""

    @configurable
    def __init__(self, is_train: bool = True, *, thing_ids=(), ignore_label: int = 255, things_label=None, **kwargs):
        super().__init__(is_train, **kwargs)
        self.thing_index = {int(c): k for k, c in enumerate(thing_ids)}
        self.ignore_label = int(ignore_label)
        self.things_label = things_label

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        ret = super().from_config(cfg, is_train)
        ret["augmentations"] = build_augmentations(cfg, is_train)
        names = cfg.DATASETS.TRAIN if is_train or not cfg.DATASETS.TEST else cfg.DATASETS.TEST
        meta = MetadataCatalog.get(names[0])
        ret["thing_ids"] = thing_semantic_ids(meta)
        ret["ignore_label"] = meta.get("ignore_label", 255)
        ret["things_label"] = meta.get("sem_seg_things_label", None)
        return ret

    def __call__(self, dataset_dict):
        if "pan_seg_file_name" not in dataset_dict:
            return super().__call__(dataset_dict)
        d = copy.deepcopy(dataset_dict)
        segments = d.pop("segments_info")
        d.pop("sem_seg_file_name", None)  # the panoptic PNG gives the semantic labels too
        d.pop("annotations", None)
        image = utils.read_image(d["file_name"], format=self.image_format)
        utils.check_image_size(d, image)
        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        ids = rgb2id(transforms.apply_segmentation(utils.read_image(d.pop("pan_seg_file_name"), "RGB")))
        d["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        sem = np.full(ids.shape, self.ignore_label, dtype=np.int64)
        masks, classes = [], []
        for s in segments:
            m = ids == s["id"]
            # detectron2's COCO panoptic loader marks things; its Cityscapes one does not: the metadata's thing ids say
            isthing = s.get("isthing", s["category_id"] in self.thing_index)
            sem[m] = s["category_id"] if self.things_label is None or not isthing else self.things_label
            if isthing and not s.get("iscrowd", 0) and m.any():
                if s["category_id"] not in self.thing_index:
                    raise ValueError(
                        f"segment {s['id']}: thing category {s['category_id']} not in the metadata's things"
                    )
                masks.append(m)
                classes.append(self.thing_index[s["category_id"]])
        d["sem_seg"] = torch.as_tensor(sem)
        if not self.is_train:
            return d
        inst = Instances(ids.shape)
        bit = BitMasks(torch.from_numpy(np.stack(masks)) if masks else torch.zeros((0,) + ids.shape, dtype=torch.bool))
        inst.gt_masks = bit
        inst.gt_boxes = bit.get_bounding_boxes()
        inst.gt_classes = torch.tensor(classes, dtype=torch.int64)
        d["instances"] = inst
        return d
