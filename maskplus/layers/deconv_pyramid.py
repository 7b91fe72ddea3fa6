"""Deconvolutional pyramid module (MaskPlus Sec. 3.2, 4.5, Fig. 3, Table 2), torch only.

Sec. 4.5: "two deconvolutional layers are followed by two convolutional layers ... strides of 2 and filter size of
256. The features are added instead of concatenated." Sec. 3.2: it up-samples first, then down-samples (the reverse
of FPN). Our reading of Fig. 3 (the figure itself is not in the text we have), on the mask head's S x S features x
(after its convs, before its own 2x deconvolution and predictor, so the logits stay 2S x 2S):

    u1 = ReLU(deconv2x2_s2(x))          2S x 2S
    u2 = ReLU(deconv2x2_s2(u1))         4S x 4S
    d1 = ReLU(conv3x3_s2(u2)) + u1      2S x 2S   (added at the matching scale)
    d2 = ReLU(conv3x3_s2(d1)) + x       S x S     (added at the matching scale)

d2 replaces x: same shape, so the rest of the mask head is unchanged. All layers have ``channels`` (256) filters.
"""

import torch
from torch import nn


class DeconvPyramid(nn.Module):
    """The module above, ``channels`` in and out at every scale."""

    def __init__(self, channels: int = 256):
        super().__init__()
        self.up1 = nn.ConvTranspose2d(channels, channels, 2, stride=2)
        self.up2 = nn.ConvTranspose2d(channels, channels, 2, stride=2)
        self.down1 = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        self.down2 = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"DeconvPyramid: expected (R, C, S, S) features, got shape {tuple(x.shape)}")
        u1 = torch.relu(self.up1(x))
        u2 = torch.relu(self.up2(u1))
        d1 = torch.relu(self.down1(u2)) + u1
        return torch.relu(self.down2(d1)) + x
