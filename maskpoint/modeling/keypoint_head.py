"""The contour-point keypoint head: detectron2's keypoint head predicting k+1 heatmaps."""

from detectron2.config import configurable
from detectron2.layers import interpolate
from detectron2.modeling.roi_heads import ROI_KEYPOINT_HEAD_REGISTRY, KRCNNConvDeconvUpsampleHead


@ROI_KEYPOINT_HEAD_REGISTRY.register()
class ContourPointHead(KRCNNConvDeconvUpsampleHead):
    """detectron2's keypoint head (3x3 convs, a stride-2 deconvolution, then 2x bilinear upsampling: 56x56
    heatmaps from 14x14 RoI features) for the k+1 contour points. Fusion structure ``d`` drops the last 2x
    upsampling (28x28 heatmaps, fused at the mask resolution)."""

    @configurable
    def __init__(self, input_shape, *, upsample: bool = True, **kwargs):
        """
        Args:
            input_shape (ShapeSpec): the RoI features (14x14 with ``ROI_KEYPOINT_HEAD.POOLER_RESOLUTION`` 14).
            upsample (bool): keep detectron2's last 2x bilinear upsampling (56x56 heatmaps); False for fusion
                structure ``d`` (28x28, the mask resolution).
            kwargs: as ``KRCNNConvDeconvUpsampleHead``: ``num_keypoints`` (k + 1), ``conv_dims``, ``loss_weight`` (α),
                ``loss_normalizer``.
        """
        super().__init__(input_shape, **kwargs)
        self.up_scale = 2.0 if upsample else 1.0

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["upsample"] = cfg.MODEL.MASK_POINT.FUSION_STRUCTURE != "d"
        return ret

    def layers(self, x):
        for layer in self:
            x = layer(x)
        if self.up_scale != 1.0:
            x = interpolate(x, scale_factor=self.up_scale, mode="bilinear", align_corners=False)
        return x
