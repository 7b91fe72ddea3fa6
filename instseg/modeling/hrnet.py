"""HRNet as a detectron2 ``Backbone``: timm's implementation wrapped, never rewritten (``MODEL.BACKBONE.NAME:
build_timm_hrnet_backbone``, keys ``MODEL.HRNET``).

timm's ``features_only`` HRNet with ``feature_location=''`` returns the raw outputs: the stem (stride 2) and the four
parallel branches (strides 4, 8, 16, 32; ``hrnet_w18`` widths 18, 36, 72, 144, the stem 64). ``MODEL.HRNET.OUT_INDICES``
picks among them (index 0 is the stem); they are named ``"s<stride>"``. Weights: from scratch by default
(``MODEL.HRNET.PRETRAINED False``; nothing can be downloaded here); ``True`` asks timm for its ImageNet weights (they
expect RGB input normalised with ImageNet's mean and std: set ``INPUT.FORMAT RGB`` and ``MODEL.PIXEL_MEAN/STD`` to
match), or load a converted checkpoint with ``MODEL.WEIGHTS`` (keys under ``backbone.body.``).
"""

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

HRNET_MODELS = ("hrnet_w18_small", "hrnet_w18_small_v2", "hrnet_w18", "hrnet_w32", "hrnet_w48")


class TimmHRNet(Backbone):
    """timm's HRNet (``features_only``, raw branch outputs) with detectron2's ``Backbone`` interface."""

    def __init__(self, name: str = "hrnet_w48", out_indices=(0, 1, 2), pretrained: bool = False):
        super().__init__()
        import timm

        if name not in HRNET_MODELS:
            raise ValueError(f"MODEL.HRNET.NAME must be one of {HRNET_MODELS}, got {name!r}")
        out_indices = tuple(int(i) for i in out_indices)
        if not out_indices or any(not 0 <= i <= 4 for i in out_indices):
            raise ValueError(f"MODEL.HRNET.OUT_INDICES must be in 0..4 (stem, branches 1-4), got {out_indices}")
        try:
            self.body = timm.create_model(
                name, pretrained=pretrained, features_only=True, feature_location="", out_indices=out_indices
            )
        except Exception as e:
            if not pretrained:
                raise
            raise RuntimeError(
                f"MODEL.HRNET.PRETRAINED True: timm could not load {name}'s ImageNet weights ({type(e).__name__}: "
                f"{e}). Put them in timm's cache (HF_HOME) on a machine that reaches the Hugging Face hub, or set "
                "MODEL.HRNET.PRETRAINED False and load converted weights with MODEL.WEIGHTS"
            ) from e
        info = self.body.feature_info
        strides, channels = info.reduction(), info.channels()
        self._out_features = [f"s{s}" for s in strides]
        self._out_feature_strides = dict(zip(self._out_features, strides))
        self._out_feature_channels = dict(zip(self._out_features, channels))

    @property
    def size_divisibility(self) -> int:
        return 32  # the branches down-sample to 1/32 and are fused back by interpolation to exact sizes

    def forward(self, x):
        return dict(zip(self._out_features, self.body(x)))

    def output_shape(self):
        return {
            name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])
            for name in self._out_features
        }


@BACKBONE_REGISTRY.register()
def build_timm_hrnet_backbone(cfg, input_shape: ShapeSpec) -> TimmHRNet:
    """``TimmHRNet`` from ``MODEL.HRNET`` (NAME, OUT_INDICES, PRETRAINED)."""
    if input_shape.channels != 3:
        raise ValueError(f"timm's HRNet takes 3-channel images, got {input_shape.channels}")
    h = cfg.MODEL.HRNET
    return TimmHRNet(h.NAME, h.OUT_INDICES, h.PRETRAINED)
