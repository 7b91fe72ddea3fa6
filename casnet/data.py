"""CASNet's instance-mode dataset mapper: detectron2's ``DatasetMapper`` that also keeps the crowd regions.

In instance mode the semantic targets come from the instance masks (things over background). detectron2's mapper
drops the crowd annotations (COCO's ``iscrowd``, Cityscapes' ``*group`` regions), so a crowd of cars would be taught
as background. ``CASNetInstanceMapper`` adds, in training, ``crowd_mask``: the (H, W) bool union of the crowd
annotations' masks after the same augmentation; the model ignores the semantic loss there (where no instance owns
the pixel). The paper trains on Cityscapes' panoptic labels, where crowd pixels are of their class; this is ours.
"""

from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils

from instseg.data.mappers import DATASET_MAPPER_REGISTRY


@DATASET_MAPPER_REGISTRY.register()
class CASNetInstanceMapper(DatasetMapper):
    def _transform_annotations(self, dataset_dict, transforms, image_shape):
        # copies: the parent pops "segmentation" without USE_INSTANCE_MASK; a crowd's keypoints are of no use here
        crowd = [
            {k: v for k, v in a.items() if k != "keypoints"}
            for a in dataset_dict["annotations"]
            if a.get("iscrowd", 0) and a.get("segmentation")
        ]
        super()._transform_annotations(dataset_dict, transforms, image_shape)
        if crowd:
            annos = [utils.transform_instance_annotations(a, transforms, image_shape) for a in crowd]
            masks = utils.annotations_to_instances(annos, image_shape, mask_format="bitmask").gt_masks.tensor
            dataset_dict["crowd_mask"] = masks.any(dim=0)
