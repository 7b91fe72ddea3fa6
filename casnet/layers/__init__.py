"""CASNet layers that need only torch: the IoU-vote clustering op and the post-processing around it (Sec. III-C),
and the training targets (Sec. III-A/B)."""

from .iou_vote import iou_vote, iou_vote_numpy, iou_vote_reference
from .losses import box_probability_loss
from .postprocess import SCORE_MODES, casnet_postprocess, instance_boxes, pixel_boxes, upsample_instance_ids
from .targets import attribute_targets, centre_targets, labels_at_stride, pixel_owners, semantic_from_instances

__all__ = [
    "SCORE_MODES",
    "attribute_targets",
    "box_probability_loss",
    "casnet_postprocess",
    "centre_targets",
    "iou_vote",
    "iou_vote_numpy",
    "iou_vote_reference",
    "labels_at_stride",
    "instance_boxes",
    "pixel_boxes",
    "pixel_owners",
    "semantic_from_instances",
    "upsample_instance_ids",
]
