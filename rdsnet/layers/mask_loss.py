"""RDSNet's mask loss (Sec. 3.2, 3.4): pixel-wise cross entropy on the correlation map M_o of each positive object,
over the pixels of its expanded ground-truth box (pixels outside are ignored), with online hard example mining (OHEM)
of the background pixels. Torch only.

Per object o with P positive (foreground) pixels inside its crop, OHEM keeps the ``neg_pos_ratio`` x P background
pixels of the crop with the highest loss (1:1 in the paper); without OHEM every pixel of the crop counts. Each
object's loss is the mean over its kept pixels, and the mask loss the mean over the objects (objects without a kept
pixel, e.g. a mask with no foreground pixel at the pixel stream's stride under OHEM, are left out).
"""

import torch
from torch.nn import functional as F


def rdsnet_mask_loss(logits, targets, valid, ohem: bool = True, neg_pos_ratio: float = 1.0):
    """
    Args:
        logits: (K, h, w) z = l_fg - l_bg of Eq. 1 (softmax over the 2 channels = sigmoid of z), any value outside
            the crop (it is ignored).
        targets: (K, h, w) the objects' ground-truth masks at the pixel stream's resolution (bool or 0/1).
        valid: (K, h, w) bool, the pixels inside each object's expanded box.
        ohem (bool), neg_pos_ratio (float): keep only the hardest negatives, ``neg_pos_ratio`` per positive.
    Returns:
        the scalar loss (0, still connected to ``logits``, when no object has a kept pixel).
    """
    if logits.shape != targets.shape or logits.shape != valid.shape:
        raise ValueError(
            f"rdsnet_mask_loss: logits {tuple(logits.shape)}, targets {tuple(targets.shape)} and valid "
            f"{tuple(valid.shape)} must have one shape"
        )
    K = logits.shape[0]
    if K == 0:
        return logits.sum() * 0.0
    t = targets.to(logits.dtype)
    z = torch.where(valid, logits, torch.zeros_like(logits))  # -inf outside the crop would give nan gradients
    loss = F.binary_cross_entropy_with_logits(z, t, reduction="none")  # = 2-class softmax cross entropy
    pos = valid & (t > 0.5)
    neg = valid & ~(t > 0.5)
    keep = pos.clone()
    if ohem:
        num_neg = (pos.flatten(1).sum(1).to(torch.float64) * neg_pos_ratio).floor().long()  # (K,)
        neg_loss = torch.where(neg, loss.detach(), torch.full_like(loss, -1.0)).flatten(1)
        order = neg_loss.argsort(dim=1, descending=True)
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
        keep |= (rank < num_neg[:, None]).view_as(neg) & neg
    else:
        keep |= neg
    count = keep.flatten(1).sum(1)
    per_object = (loss * keep).flatten(1).sum(1) / count.clamp(min=1)
    has = count > 0
    if not bool(has.any()):
        return z.sum() * 0.0
    return per_object[has].mean()
