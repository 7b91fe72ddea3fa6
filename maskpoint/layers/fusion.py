"""Edge-feature fusion of Mask Point R-CNN (Sec. III-D Eq. 1-2, Sec. IV-C, Fig. 4, Tables II-IV).

The keypoint logits f_{k+1} (R, k+1, S, S) are reduced to one map O_k and fused into the mask logits
f_m (R, C, M, M), broadcast to every class channel:

    O_k = sum_{i=1}^{k+1} Conv3x3^{s=2}(f_{k+1})_i        (Eq. 1, structure b)
    O_m = O_k (x) f_m                                      (Eq. 2, fusion "mul")

Needs only torch (no detectron2), so it is usable and tested on its own.
"""

import torch
from torch import nn
from torch.nn import functional as F

STRUCTURES = ("a", "b", "c", "d")
REDUCTIONS = ("conv", "max", "avg")
FUSIONS = ("mul", "add", "max", "none")


class ContourFusion(nn.Module):
    """Fuse contour-keypoint logits into mask logits.

    Structures (Table II, Fig. 4), with keypoint logits of side S and mask logits of side M:
      * ``b`` (default, Eq. 1): S = 2M; reduce each of the k+1 maps 2x (3x3 stride 2), then sum the channels.
      * ``a``: S = 2M; sum the channels first, then reduce the single map 2x.
      * ``c``: S = 2M; sum the channels at S and upsample the mask logits to S with a 2x2 stride-2
        deconvolution: the fused mask output is S x S.
      * ``d``: S = M (the keypoint head skips its last 2x upsampling); sum the channels at M.
    Reductions (Table III), used by ``a``/``b`` only: ``conv`` (3x3 stride 2, no ReLU after it), ``max``
    or ``avg`` (3x3 stride-2 pooling).
    Fusions (Table IV): ``mul`` (Eq. 2), ``add``, ``max``, or ``none`` (multi-task only: the mask logits pass
    unchanged; the keypoint branch is still trained).

    The reduction conv starts at zero weight and a bias that makes O_k constant: 1 for ``mul`` and 0 for ``add``,
    where the fusion then starts as the identity, so training starts from the plain Mask R-CNN output and learns how
    much of the contour map to use; 0 for ``max`` too, which starts as max(0, f_m) (a lower start would keep O_k below
    f_m everywhere and the conv without gradient). The paper leaves the initialisation unspecified.

    For ``b`` with ``conv``, each of the k+1 maps has its own 3x3 kernel; since the channel sum of k+1
    per-channel convolutions is one (k+1)->1 convolution with those kernels and the summed bias, it is
    computed that way (same values and gradients as Eq. 1, 1/(k+1) of the work).
    """

    def __init__(
        self,
        num_keypoints: int,
        num_mask_channels: int,
        structure: str = "b",
        reduction: str = "conv",
        fusion: str = "mul",
    ):
        super().__init__()
        if structure not in STRUCTURES:
            raise ValueError(f"MODEL.MASK_POINT.FUSION_STRUCTURE must be one of {STRUCTURES}, got {structure!r}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"MODEL.MASK_POINT.REDUCTION must be one of {REDUCTIONS}, got {reduction!r}")
        if fusion not in FUSIONS:
            raise ValueError(f"MODEL.MASK_POINT.FUSION must be one of {FUSIONS}, got {fusion!r}")
        if num_keypoints < 1 or num_mask_channels < 1:
            raise ValueError(
                f"ContourFusion needs >= 1 keypoint and mask channel, got {num_keypoints}, {num_mask_channels}"
            )
        self.num_keypoints = num_keypoints
        self.structure = structure
        self.reduction = reduction
        self.fusion = fusion
        self.reduce_conv = None
        if fusion != "none" and structure in ("a", "b") and reduction == "conv":
            in_maps = num_keypoints if structure == "b" else 1
            # one 3x3 kernel per summed map (Eq. 1); bias per map, summed with them
            self.reduce_conv = nn.Conv2d(in_maps, in_maps, 3, stride=2, padding=1, groups=in_maps)
            nn.init.zeros_(self.reduce_conv.weight)
            nn.init.constant_(self.reduce_conv.bias, (1.0 if fusion == "mul" else 0.0) / in_maps)
        self.mask_upsample = None
        if structure == "c":
            self.mask_upsample = nn.ConvTranspose2d(num_mask_channels, num_mask_channels, 2, stride=2)
            # starts as nearest-neighbour upsampling of each class map
            with torch.no_grad():
                self.mask_upsample.weight.zero_()
                for ch in range(num_mask_channels):
                    self.mask_upsample.weight[ch, ch].fill_(1.0)
                self.mask_upsample.bias.zero_()

    @property
    def keypoint_upsample(self) -> bool:
        """Whether the keypoint head keeps its last 2x upsampling (all structures but ``d``)."""
        return self.structure != "d"

    def reduce(self, kp_logits: torch.Tensor) -> torch.Tensor:
        """O_k: the k+1 keypoint logit maps as one (R, 1, s, s) map at the mask resolution."""
        if self.structure in ("c", "d"):
            return kp_logits.sum(dim=1, keepdim=True)
        x = kp_logits if self.structure == "b" else kp_logits.sum(dim=1, keepdim=True)
        if self.reduction == "conv":
            conv = self.reduce_conv
            # sum_i conv_i(x_i) == one conv with the per-map kernels as input channels (Eq. 1)
            weight = conv.weight.reshape(1, x.shape[1], 3, 3)
            return F.conv2d(x, weight, conv.bias.sum().reshape(1), stride=2, padding=1)
        if self.reduction == "max":
            x = F.max_pool2d(x, 3, stride=2, padding=1)
        else:
            x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
        return x.sum(dim=1, keepdim=True)

    def forward(self, mask_logits: torch.Tensor, kp_logits: torch.Tensor) -> torch.Tensor:
        """Args: mask_logits (R, C, M, M), kp_logits (R, k+1, S, S). Returns fused mask logits
        (R, C, M, M), or (R, C, 2M, 2M) for structure ``c``."""
        if mask_logits.dim() != 4 or kp_logits.dim() != 4 or mask_logits.shape[0] != kp_logits.shape[0]:
            raise ValueError(
                f"ContourFusion: expected (R, C, M, M) mask logits and (R, k+1, S, S) keypoint "
                f"logits with the same R, got {tuple(mask_logits.shape)}, {tuple(kp_logits.shape)}"
            )
        if kp_logits.shape[1] != self.num_keypoints:
            raise ValueError(f"ContourFusion: expected {self.num_keypoints} keypoint maps, got {kp_logits.shape[1]}")
        if self.fusion == "none":
            return mask_logits
        if self.mask_upsample is not None:
            mask_logits = self.mask_upsample(mask_logits)
        o_k = self.reduce(kp_logits)
        if o_k.shape[-2:] != mask_logits.shape[-2:]:
            raise ValueError(
                f"ContourFusion (structure {self.structure}): the reduced keypoint map is "
                f"{tuple(o_k.shape[-2:])} but the mask logits are {tuple(mask_logits.shape[-2:])}; "
                "structures a/b/c need keypoint heatmaps twice the mask side, d the same side"
            )
        if self.fusion == "mul":
            return o_k * mask_logits
        if self.fusion == "add":
            return o_k + mask_logits
        return torch.maximum(o_k.expand_as(mask_logits), mask_logits)
