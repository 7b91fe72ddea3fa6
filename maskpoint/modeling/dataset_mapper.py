"""``ContourPointDatasetMapper``: detectron2's ``DatasetMapper`` plus the contour-point targets of every instance."""

import torch
from detectron2.config import configurable
from detectron2.data import DatasetMapper
from detectron2.structures import Keypoints

from instseg.data.mappers import DATASET_MAPPER_REGISTRY

from .targets import contour_keypoints


@DATASET_MAPPER_REGISTRY.register()
class ContourPointDatasetMapper(DatasetMapper):
    """detectron2's ``DatasetMapper`` that also gives every training instance its k contour points and centre
    (Sec. III-C), sampled from its mask after augmentation, as ``instances.gt_keypoints`` (detectron2's keypoint
    target format, (N, k+1, 3) in image coordinates). It runs in the data-loader workers, as detectron2's keypoint
    handling does, so the ROI heads only crop and scale the points; flips, resizes and crops need no flip map.

    A dataset's own keypoint annotations, if any, are not used. Inference (``is_train=False``) is
    ``DatasetMapper``'s."""

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        num_points: int,
        sampling: str = "uniform",
        with_center: bool = True,
        center: str = "mass",
        **kwargs,
    ):
        """
        Args:
            is_train, kwargs: as for detectron2's ``DatasetMapper`` (``use_instance_mask`` must be True).
            num_points: k, contour points per instance (``MODEL.MASK_POINT.NUM_POINTS``).
            sampling, with_center, center: as for :func:`maskpoint.sample_contour_points`.
        """
        super().__init__(is_train, **kwargs)
        if is_train and not self.use_instance_mask:
            raise ValueError(
                "ContourPointDatasetMapper samples the contour points from the instance masks: it needs "
                "MODEL.MASK_ON True (use_instance_mask)"
            )
        self.num_points = int(num_points)
        self.sampling = sampling
        self.with_center = with_center
        self.center = center

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        # DatasetMapper reads MODEL.KEYPOINT_ON as "the dataset has keypoint annotations" (it then needs their flip
        # map in the metadata); the contour points come from the masks instead, so build it as for keypoints off.
        if cfg.MODEL.ROI_HEADS.NAME != "MaskPointROIHeads":
            raise ValueError(
                f"INPUT.DATASET_MAPPER_NAME {cfg.INPUT.DATASET_MAPPER_NAME} gives Mask Point R-CNN's "
                f"contour-point targets, but MODEL.ROI_HEADS.NAME is {cfg.MODEL.ROI_HEADS.NAME!r}: use "
                "MaskPointROIHeads, or INPUT.DATASET_MAPPER_NAME DatasetMapper"
            )
        d2_cfg = cfg.clone()
        d2_cfg.defrost()
        d2_cfg.MODEL.KEYPOINT_ON = False
        ret = super().from_config(d2_cfg, is_train)
        mp = cfg.MODEL.MASK_POINT
        ret.update(num_points=mp.NUM_POINTS, sampling=mp.SAMPLING, with_center=mp.WITH_CENTER, center=mp.CENTER)
        return ret

    def _transform_annotations(self, dataset_dict, transforms, image_shape):
        super()._transform_annotations(dataset_dict, transforms, image_shape)
        instances = dataset_dict["instances"]
        k = self.num_points + int(self.with_center)
        if len(instances) == 0:
            instances.gt_keypoints = Keypoints(torch.zeros((0, k, 3)))
            return
        if not instances.has("gt_masks"):
            raise ValueError(
                f"Mask Point R-CNN samples its contour points from instance masks, but the annotations of "
                f"{dataset_dict.get('file_name', 'an image')} have no 'segmentation': train on a dataset with masks"
            )
        instances.gt_keypoints = contour_keypoints(
            instances.gt_masks, image_shape, self.num_points, self.sampling, self.with_center, self.center
        )
