"""DSG's torch-only layers: Shape-guided RoIAlign (Sec. 3.4, Eq. 1-2). Its multi-level pooler, which needs
detectron2, is ``dsg.modeling.ShapeGuidedROIPooler``."""

from .sg_roi_align import SgROIAlign, sg_roi_align, sg_roi_align_reference

__all__ = ["SgROIAlign", "sg_roi_align", "sg_roi_align_reference"]
