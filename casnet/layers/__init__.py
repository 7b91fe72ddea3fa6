"""CASNet layers that need only torch: the IoU-vote clustering op (Sec. III-C)."""

from .iou_vote import iou_vote, iou_vote_numpy, iou_vote_reference

__all__ = ["iou_vote", "iou_vote_reference", "iou_vote_numpy"]
