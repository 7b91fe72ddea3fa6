"""``add_maskplus_config``: the keys of MaskPlus (``papers/maskplus.txt``), the paper's final MaskPlus as defaults.

Issue 14 lands in slices: this one has the torch-only blocks (``maskplus.layers``); the ROI heads that read every key
below arrive with the next slice.
"""


def add_maskplus_config(cfg) -> None:
    """Add ``MODEL.MASKPLUS`` (MaskPlus, ``papers/maskplus.txt``) to a detectron2 config."""
    from detectron2.config import CfgNode as CN

    cfg.MODEL.MASKPLUS = CN()
    _C = cfg.MODEL.MASKPLUS
    # Contextual fusion (Sec. 3.1, Table 1): one full-image box per image pooled from CONTEXT_IN_FEATURE, then 3x3
    # convs of these widths (Table 1's best: 720-512-512-256), added to every RoI's mask features
    _C.CONTEXT_FUSION_ON = True
    _C.CONTEXT_CONV_DIMS = [720, 512, 512, 256]
    # "FPN last-layer features" (Sec. 3.1) is ambiguous: p2 (the top-down path's last output) or p5 (the coarsest)
    _C.CONTEXT_IN_FEATURE = "p2"
    # Deconvolutional pyramid module (Sec. 3.2, Table 2): two stride-2 deconvs then two stride-2 convs, added
    _C.DECONV_PYRAMID_ON = True
    # Boundary refinement on the mask logits (Sec. 3.3, Table 3): "none", "original" (Peng et al.), "improved"
    _C.BOUNDARY_REFINEMENT = "improved"
    # Quasi-multitask learning (Sec. 3.4, Table 4): "none", "0.5x" (a 14x14 branch) or "2x" (56x56), training only
    _C.QUASI_MULTITASK = "0.5x"
    # Biased training (Sec. 3.5, Tables 5-6): L = Lcls + Lbox + alpha * Lmask with alpha = BIASED_ALPHA until
    # iteration BIASED_UNTIL (a fraction < 1 of SOLVER.MAX_ITER, or an iteration count), then 1
    _C.BIASED_ALPHA = 1.5
    _C.BIASED_UNTIL = 0.5
