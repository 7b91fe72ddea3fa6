"""RDSNet layers: the correlation + cropping op (Sec. 3.2, Eq. 1); needs only torch."""

from .correlation_crop import CorrelationCrop, correlation_crop, correlation_crop_reference

__all__ = ["CorrelationCrop", "correlation_crop", "correlation_crop_reference"]
