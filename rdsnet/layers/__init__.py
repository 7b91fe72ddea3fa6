"""RDSNet layers, torch only: the correlation + cropping op (Sec. 3.2, Eq. 1), box expansion and the *direct* box,
the mask loss with OHEM (Sec. 3.2), and MBRM (Sec. 3.3, Eq. 2-7)."""

from .boxes import expand_boxes, mask_enclosing_boxes, profile_enclosing_boxes
from .correlation_crop import CorrelationCrop, correlation_crop, correlation_crop_reference
from .mask_loss import rdsnet_mask_loss
from .mbrm import MBRM

__all__ = [
    "MBRM",
    "CorrelationCrop",
    "correlation_crop",
    "correlation_crop_reference",
    "expand_boxes",
    "mask_enclosing_boxes",
    "profile_enclosing_boxes",
    "rdsnet_mask_loss",
]
