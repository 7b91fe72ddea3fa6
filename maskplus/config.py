"""``add_maskplus_config``: the keys of MaskPlus (``papers/maskplus.txt``), the paper's final MaskPlus as defaults, and
every row of Tables 1-6 as a set of key values (``TABLE_ROWS``, ``table_opts``), defined once for configs, tests and
benchmarks."""

# the five techniques switched off: Mask R-CNN (every table's first row)
ALL_OFF = {
    "CONTEXT_FUSION_ON": False,
    "DECONV_PYRAMID_ON": False,
    "BOUNDARY_REFINEMENT": "none",
    "QUASI_MULTITASK": "none",
    "BIASED_ALPHA": 1.0,
    "MASK_SCALE": "1x",
}

# Tables 1-6 (and Sec. 3.1's context stack), each row as the MODEL.MASKPLUS values that differ from ALL_OFF;
# "maskplus" is the paper's final model (Sec. 4.9: every technique in its best setting), the defaults below.
TABLE_ROWS = {
    "mask_rcnn": {},
    "table1_context_256_256": {"CONTEXT_FUSION_ON": True, "CONTEXT_CONV_DIMS": [256, 256]},
    "table1_context_256_256_256": {"CONTEXT_FUSION_ON": True, "CONTEXT_CONV_DIMS": [256, 256, 256]},
    "table1_context_720_512_512_256": {"CONTEXT_FUSION_ON": True, "CONTEXT_CONV_DIMS": [720, 512, 512, 256]},
    "sec31_context_512_256_256": {"CONTEXT_FUSION_ON": True, "CONTEXT_CONV_DIMS": [512, 256, 256]},
    # contextual fusion with the config's own widths (Table 1's best, 720-512-512-256, unless the config narrows
    # its heads: the synthetic configs scale them to their 64-channel FPN) from P2, and from P5: "FPN last-layer
    # features" read the other way (the synthetic ablation compares both)
    "context_fusion": {"CONTEXT_FUSION_ON": True, "CONTEXT_IN_FEATURE": "p2"},
    "context_p5": {"CONTEXT_FUSION_ON": True, "CONTEXT_IN_FEATURE": "p5"},
    "table2_deconv_pyramid": {"DECONV_PYRAMID_ON": True},
    "table3_original_refinement": {"BOUNDARY_REFINEMENT": "original"},
    "table3_improved_refinement": {"BOUNDARY_REFINEMENT": "improved"},
    "table4_half_mask": {"MASK_SCALE": "0.5x"},
    "table4_quasi_half": {"QUASI_MULTITASK": "0.5x"},
    "table4_quasi_double": {"QUASI_MULTITASK": "2x"},
    "table56_biased": {"BIASED_ALPHA": 1.5},
    # with the config's context widths and level (defaults: 720-512-512-256 from P2)
    "maskplus": {
        "CONTEXT_FUSION_ON": True,
        "DECONV_PYRAMID_ON": True,
        "BOUNDARY_REFINEMENT": "improved",
        "QUASI_MULTITASK": "0.5x",
        "BIASED_ALPHA": 1.5,
    },
}


def table_values(row: str) -> dict:
    """The ``MODEL.MASKPLUS`` values of a row of ``TABLE_ROWS``: the switches of ``ALL_OFF``, then the row's."""
    if row not in TABLE_ROWS:
        raise KeyError(f"unknown MaskPlus table row {row!r}; rows: {', '.join(TABLE_ROWS)}")
    return {**ALL_OFF, **TABLE_ROWS[row]}


def table_opts(row: str) -> list:
    """``KEY VALUE`` overrides (for ``cfg.merge_from_list`` or the command line) that set a row of ``TABLE_ROWS``."""
    return [x for k, v in table_values(row).items() for x in (f"MODEL.MASKPLUS.{k}", str(v))]


def add_maskplus_config(cfg) -> None:
    """Add ``MODEL.MASKPLUS`` (MaskPlus, ``papers/maskplus.txt``) to a detectron2 config.

    The keys are read by ``MaskPlusROIHeads`` / ``MaskPlusCascadeROIHeads`` (contextual fusion, biased training) and
    ``MaskPlusMaskHead`` (deconvolutional pyramid, boundary refinement, quasi-multitask, mask scale). Defaults: the
    paper's final MaskPlus. ``TABLE_ROWS["mask_rcnn"]`` (every technique off) is Mask R-CNN exactly."""
    from detectron2.config import CfgNode as CN

    cfg.MODEL.MASKPLUS = CN()
    _C = cfg.MODEL.MASKPLUS
    # Contextual fusion (Sec. 3.1, 4.4, Table 1): one full-image box per image, RoIAligned like the mask RoIs from
    # CONTEXT_IN_FEATURE, then 3x3 convs of these widths (Table 1's best: 720-512-512-256; the last must equal the
    # mask features' channels), added to every RoI's mask features of that image before the mask head's convs
    _C.CONTEXT_FUSION_ON = True
    _C.CONTEXT_CONV_DIMS = [720, 512, 512, 256]
    # "FPN last-layer features" (Sec. 3.1) is ambiguous: p2 (the top-down path's last output) or p5 (the coarsest);
    # the README's synthetic ablation compares the two
    _C.CONTEXT_IN_FEATURE = "p2"
    # Deconvolutional pyramid module (Sec. 3.2, 4.5, Table 2): two stride-2 deconvs then two stride-2 convs, added
    _C.DECONV_PYRAMID_ON = True
    # Boundary refinement on the mask logits (Sec. 3.3, 4.6, Table 3): "none", "original" (Peng et al.), "improved"
    _C.BOUNDARY_REFINEMENT = "improved"
    # Quasi-multitask learning (Sec. 3.4, 4.7, Table 4): "none", "0.5x" (a 14x14 branch) or "2x" (56x56); the branch
    # is trained with its own mask loss (loss_mask_quasi) and never runs at inference
    _C.QUASI_MULTITASK = "0.5x"
    # the main mask head's output: "1x" (Mask R-CNN's 28x28) or "0.5x" (without its deconv: 14x14, Table 4 row 2)
    _C.MASK_SCALE = "1x"
    # weight of the quasi-multitask branch's loss (the paper gives none: the same as the main mask loss)
    _C.QUASI_LOSS_WEIGHT = 1.0
    # Biased training (Sec. 3.5, 4.8, Tables 5-6): L = Lcls + Lbox + alpha * Lmask (every mask loss), alpha =
    # BIASED_ALPHA for the first BIASED_UNTIL of training (a fraction of SOLVER.MAX_ITER; 0.5: the paper's "first
    # half"), 1 after it. The trainer's iteration decides, so --resume continues the schedule
    _C.BIASED_ALPHA = 1.5
    _C.BIASED_UNTIL = 0.5
