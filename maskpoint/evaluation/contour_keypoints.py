"""Contour-keypoint AP (Table VII's AP_keypoint): COCO keypoint evaluation of the predicted contour points
against contour points sampled, the same way as the training targets, from the ground-truth masks."""

import copy

import numpy as np
from detectron2.evaluation import COCOEvaluator

from ..layers import sample_contour_points


class ContourKeypointEvaluator(COCOEvaluator):
    """detectron2's COCOEvaluator on the "keypoints" task, whose ground truth gets k (+ centre) contour
    keypoints per instance from its mask (crowd and empty instances get none and are ignored). OKS sigmas
    come from ``MODEL.MASK_POINT.OKS_SIGMAS`` (one per keypoint, or one for all). Results are reported
    under "keypoints"."""

    def __init__(
        self,
        dataset_name,
        *,
        num_points,
        sampling="uniform",
        with_center=True,
        center="mass",
        oks_sigmas=(0.025,),
        output_dir=None,
        **kwargs,
    ):
        k = num_points + int(with_center)
        sigmas = list(oks_sigmas)
        if len(sigmas) == 1:
            sigmas = sigmas * k
        if len(sigmas) != k:
            raise ValueError(f"MODEL.MASK_POINT.OKS_SIGMAS needs 1 or {k} values (k + centre), got {len(sigmas)}")
        super().__init__(dataset_name, tasks=("keypoints",), kpt_oks_sigmas=sigmas, output_dir=output_dir, **kwargs)
        self._sample = dict(num_points=num_points, sampling=sampling, with_center=with_center, center=center)
        self._coco_api = self._with_contour_keypoints(self._coco_api, k)

    @classmethod
    def from_config(cls, cfg, dataset_name, output_dir=None):
        mp = cfg.MODEL.MASK_POINT
        return cls(
            dataset_name,
            num_points=mp.NUM_POINTS,
            sampling=mp.SAMPLING,
            with_center=mp.WITH_CENTER,
            center=mp.CENTER,
            oks_sigmas=mp.OKS_SIGMAS,
            output_dir=output_dir,
        )

    def _with_contour_keypoints(self, coco_api, k):
        from pycocotools.coco import COCO

        dataset = copy.deepcopy(coco_api.dataset)
        for cat in dataset["categories"]:
            cat["keypoints"] = [f"contour_{i}" for i in range(self._sample["num_points"])] + (
                ["center"] if self._sample["with_center"] else []
            )
            cat["skeleton"] = []
        for ann in dataset["annotations"]:
            kps = np.zeros((k, 3), dtype=np.float64)
            mask = coco_api.annToMask(ann) if not ann.get("iscrowd", 0) and ann.get("segmentation") else None
            if mask is not None and mask.any():
                pts = sample_contour_points(mask, **self._sample)
                kps[:, :2] = pts - 0.5  # COCO keypoints are pixel indices (detectron2 adds 0.5 on loading)
                kps[:, 2] = 2
            ann["keypoints"] = kps.reshape(-1).tolist()
            ann["num_keypoints"] = int((kps[:, 2] > 0).sum())
        api = COCO()
        api.dataset = dataset
        api.createIndex()
        return api


def contour_keypoint_evaluators(cfg, dataset_name, output_folder=None):
    """The evaluators Mask Point R-CNN adds (``instseg.registry.METHOD_EVALUATOR_REGISTRY``): Table VII's
    AP_keypoint when ``MODEL.MASK_POINT.EVAL_KEYPOINTS`` is on."""
    if "MASK_POINT" in cfg.MODEL and cfg.MODEL.MASK_POINT.EVAL_KEYPOINTS:
        return [ContourKeypointEvaluator.from_config(cfg, dataset_name, output_folder)]
    return []
