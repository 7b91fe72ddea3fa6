"""DSG layers: Shape-guided RoIAlign (Sec. 3.4, Eq. 1-2) and, with detectron2, its multi-level pooler."""
import importlib.util

from .sg_roi_align import SgROIAlign, sg_roi_align, sg_roi_align_reference

__all__ = ["SgROIAlign", "sg_roi_align", "sg_roi_align_reference"]

if importlib.util.find_spec("detectron2") is not None:
    from .pooler import ShapeGuidedROIPooler  # noqa: F401

    __all__.append("ShapeGuidedROIPooler")
