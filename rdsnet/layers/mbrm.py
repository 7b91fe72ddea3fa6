"""Mask based boundary refinement module, MBRM (RDSNet Sec. 3.3, Eq. 2-7), torch only.

For each object and each box side, with M' its foreground probability map at the input resolution (h x w), here the
left side (the others by symmetry):

    m_i       = max_j M'_{j, i}                                   the projection of Eq. 4-5 (max over each column)
    P(M'|X=i) = sigmoid((k * m)_i)                                Eq. 5: a learnt 1-D conv, kernel 2s + 1 (s = 4)
    P(X=i)    = alpha exp(-(i - mu)^2 / (2 sigma^2))              Eq. 6, mu = the regressed coordinate,
                                                                  sigma = max(gamma * w_b, 1)   (Eq. 7, gamma = 0.05)
    P(X=i|M') = P(X=i) P(M'|X=i) / sum_t P(X=t) P(M'|X=t)         Eq. 3
    x         = argmax_i P(X=i|M')                                Eq. 2

Coordinates: index i of a left (top) side is the boundary at the left (top) edge of pixel i, x1 = i; of a right
(bottom) side the boundary at the right (bottom) edge of pixel i, x2 = i + 1. So mu is x1 (resp. x2 - 1) in pixel
units, and the refined box is integer. sigma is at least one pixel (a narrower prior would be a Dirac on a
sub-pixel mu, not a distribution over pixels). gamma = 0 switches the refinement off (Fig. 5: "the refinement module
is not activated"): the regressed boxes come back unchanged.

Kernels: ``shared_kernel=True`` is the authors' released code, one kernel for the four sides, mirrored for the right
and bottom sides (their profiles are read from the other end); False learns one kernel per side. The paper trains the
kernels with cross entropy of the posterior against the one-hot ground-truth coordinate, after the rest of the model
has converged (``boundary_loss``).
"""

import torch
from torch import nn
from torch.nn import functional as F

SIDES = ("left", "top", "right", "bottom")


class MBRM(nn.Module):
    def __init__(self, s: int = 4, gamma: float = 0.05, shared_kernel: bool = False):
        super().__init__()
        if s < 0:
            raise ValueError(f"MBRM: s must be >= 0, got {s}")
        if gamma < 0:
            raise ValueError(f"MBRM: gamma must be >= 0, got {gamma}")
        self.s, self.gamma, self.shared_kernel = int(s), float(gamma), bool(shared_kernel)
        n = 1 if shared_kernel else 4
        # one conv per side (or one shared), read from the outside in; starts as an edge detector: -1 on the s pixels
        # outside the boundary, +1 on the boundary pixel and the s inside it
        self.kernels = nn.Parameter(torch.zeros(n, 2 * s + 1))
        self.biases = nn.Parameter(torch.zeros(n))
        with torch.no_grad():
            self.kernels[:, :s] = -1.0
            self.kernels[:, s:] = 1.0

    def _kernel(self, side: int):
        """The kernel and bias applied, in reading order from the box's outside, to side ``side`` (SIDES order)."""
        k = 0 if self.shared_kernel else side
        return self.kernels[k], self.biases[k]

    def log_posteriors(self, probs: torch.Tensor, boxes: torch.Tensor):
        """
        Args:
            probs: (K, h, w) M', each object's foreground probability at the input resolution.
            boxes: (K, 4) the regressed boxes, XYXY in pixels of ``probs``.
        Returns:
            four (K, L) log P(X = i | M') (Eq. 3), L = w for left/right and h for top/bottom, in SIDES order.
        """
        if probs.dim() != 3 or boxes.shape != (probs.shape[0], 4):
            raise ValueError(
                f"MBRM: expected probs (K, h, w) and boxes (K, 4), got {tuple(probs.shape)}, {tuple(boxes.shape)}"
            )
        return self.log_posteriors_from_profiles(probs.max(dim=1).values, probs.max(dim=2).values, boxes)

    def log_posteriors_from_profiles(self, prof_x: torch.Tensor, prof_y: torch.Tensor, boxes: torch.Tensor):
        """``log_posteriors`` from the max-projections of M' (Eq. 4-5): ``prof_x`` (K, w) the max over each column,
        ``prof_y`` (K, h) the max over each row. Computed in float32 at least (the prior's squared distances)."""
        dtype = torch.promote_types(prof_x.dtype, torch.float32)
        prof_x, prof_y, boxes = prof_x.to(dtype), prof_y.to(dtype), boxes.to(dtype)
        bw = (boxes[:, 2] - boxes[:, 0]).clamp(min=0)
        bh = (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
        # (profile, mu in index units, box extent along the side's axis, mirrored?)
        specs = [
            (prof_x, boxes[:, 0], bw, False),
            (prof_y, boxes[:, 1], bh, False),
            (prof_x, boxes[:, 2] - 1, bw, True),
            (prof_y, boxes[:, 3] - 1, bh, True),
        ]
        out = []
        for side, (prof, mu, extent, mirrored) in enumerate(specs):
            kernel, bias = self._kernel(side)
            x = prof.flip(1) if mirrored else prof
            weight = kernel.view(1, 1, -1).to(dtype)
            logits = F.conv1d(x[:, None], weight, bias.view(1).to(dtype), padding=self.s)[:, 0]
            if mirrored:
                logits = logits.flip(1)
            i = torch.arange(prof.shape[1], device=prof.device, dtype=dtype)
            sigma = (self.gamma * extent).clamp(min=1.0)
            log_prior = -((i[None] - mu[:, None]) ** 2) / (2 * sigma[:, None] ** 2)
            log_post = log_prior + F.logsigmoid(logits)
            out.append(log_post - torch.logsumexp(log_post, dim=1, keepdim=True))  # Eq. 3's normalisation
        return out

    def forward(self, probs: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """The refined boxes (K, 4), XYXY (Eq. 2); see ``refine``."""
        if self.gamma == 0 or boxes.shape[0] == 0:
            return boxes.clone()
        return self.refine(probs.max(dim=1).values, probs.max(dim=2).values, boxes)

    def refine(self, prof_x: torch.Tensor, prof_y: torch.Tensor, boxes: torch.Tensor, min_peak: float = 0.0):
        """Eq. 2 from the max-projections. The regressed box comes back where the refinement is off (gamma = 0), where
        the mask is empty (no pixel reaches ``min_peak``, the mask threshold at inference, or every profile is 0),
        and, per axis, where the refined sides would cross (x2 <= x1: no box left)."""
        if self.gamma == 0 or boxes.shape[0] == 0:
            return boxes.clone()
        idx = [lp.argmax(dim=1).to(boxes.dtype) for lp in self.log_posteriors_from_profiles(prof_x, prof_y, boxes)]
        out = torch.stack([idx[0], idx[1], idx[2] + 1, idx[3] + 1], dim=1)
        peak = torch.minimum(prof_x.max(dim=1).values, prof_y.max(dim=1).values)
        empty = (peak <= 0) | (peak < min_peak)
        bad_x = empty | (out[:, 2] <= out[:, 0])
        bad_y = empty | (out[:, 3] <= out[:, 1])
        out[:, 0::2] = torch.where(bad_x[:, None], boxes[:, 0::2], out[:, 0::2])
        out[:, 1::2] = torch.where(bad_y[:, None], boxes[:, 1::2], out[:, 1::2])
        return out

    def boundary_loss(self, probs: torch.Tensor, boxes: torch.Tensor, gt_boxes: torch.Tensor) -> torch.Tensor:
        """L_refine (Sec. 3.3) from M' (K, h, w); see ``boundary_loss_from_profiles``."""
        return self.boundary_loss_from_profiles(probs.max(dim=1).values, probs.max(dim=2).values, boxes, gt_boxes)

    def boundary_loss_from_profiles(self, prof_x, prof_y, boxes, gt_boxes) -> torch.Tensor:
        """L_refine (Sec. 3.3): cross entropy of each side's posterior against its ground-truth coordinate (one-hot at
        the pixel of the ground-truth edge, clipped to the map), averaged over objects and sides."""
        if boxes.shape[0] == 0:
            return sum(p.sum() for p in self.parameters()) * 0.0
        h, w = prof_y.shape[1], prof_x.shape[1]
        gt = gt_boxes.round().long()
        targets = [
            gt[:, 0].clamp(0, w - 1),
            gt[:, 1].clamp(0, h - 1),
            (gt[:, 2] - 1).clamp(0, w - 1),
            (gt[:, 3] - 1).clamp(0, h - 1),
        ]
        lps = self.log_posteriors_from_profiles(prof_x, prof_y, boxes)
        return torch.stack([F.nll_loss(lp, t) for lp, t in zip(lps, targets)]).mean()
