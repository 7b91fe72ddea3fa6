"""``add_rdsnet_config``: the keys of RDSNet (``papers/rdsnet.txt``), paper values as defaults, and the rows of Tables 3
and 4 as key values (``TABLE3_ROWS``, ``TABLE4_ROWS``, ``table_opts``), defined once for configs, tests and benchmarks.
"""

# Table 3 (cropping module, on RDSNet_s): mask assembly (LC = YOLACT's linear combination, Corr = Eq. 1), expanded
# crops in training (TE), OHEM, expanded crops at inference (IE). Rows 2-7 use Corr. The text fixes the rows' marks:
# "row 2 v.s. row 3" is IE alone, "row 3 v.s. row 5" is TE (so row 5 = TE + IE, row 4 = TE), row 7 adds OHEM to row 5
# and row 6 is row 7 without IE.
TABLE3_ROWS = {
    1: {"MASK_ASSEMBLY": "lc", "TRAIN_EXPAND": False, "OHEM": False, "TEST_EXPAND": False},
    2: {"MASK_ASSEMBLY": "corr", "TRAIN_EXPAND": False, "OHEM": False, "TEST_EXPAND": False},
    3: {"MASK_ASSEMBLY": "corr", "TRAIN_EXPAND": False, "OHEM": False, "TEST_EXPAND": True},
    4: {"MASK_ASSEMBLY": "corr", "TRAIN_EXPAND": True, "OHEM": False, "TEST_EXPAND": False},
    5: {"MASK_ASSEMBLY": "corr", "TRAIN_EXPAND": True, "OHEM": False, "TEST_EXPAND": True},
    6: {"MASK_ASSEMBLY": "corr", "TRAIN_EXPAND": True, "OHEM": True, "TEST_EXPAND": False},
    7: {"MASK_ASSEMBLY": "corr", "TRAIN_EXPAND": True, "OHEM": True, "TEST_EXPAND": True},
}
# Table 4 (boxes): the regressed box ("baseline"), the mask's enclosing rectangle ("direct"), MBRM
TABLE4_ROWS = {
    "baseline": {"BOX_REFINEMENT": "none"},
    "direct": {"BOX_REFINEMENT": "direct"},
    "mbrm": {"BOX_REFINEMENT": "mbrm"},
}


def table_opts(table: int, row) -> list:
    """``KEY VALUE`` overrides (``cfg.merge_from_list`` or the command line) for a row of Table 3 or Table 4."""
    rows = {3: TABLE3_ROWS, 4: TABLE4_ROWS}[table]
    if row not in rows:
        raise KeyError(f"RDSNet Table {table} has no row {row!r}; rows: {list(rows)}")
    return [x for k, v in rows[row].items() for x in (f"MODEL.RDSNET.{k}", str(v))]


def add_rdsnet_config(cfg) -> None:
    """Add ``MODEL.RDSNET`` (RDSNet, ``papers/rdsnet.txt``) to a detectron2 config. ``MODEL.MASK_ON False`` is RetinaNet
    (the object stream alone)."""
    from detectron2.config import CfgNode as CN

    cfg.MODEL.RDSNET = CN()
    _C = cfg.MODEL.RDSNET
    # d (Sec. 4.1: 32): the object representation phi(v_o) is 2 x d per anchor (row 0 background, row 1 foreground),
    # the pixel representation Psi(U) d per pixel
    _C.REP_DIM = 32
    # object stream: the representation tower, 4 x conv3x3-256 (+ RETINANET.NORM, GN in the authors' config) + ReLU,
    # beside RetinaNet's cls and box towers (not shared), then a 3x3 conv to A x 2d
    _C.REP_NUM_CONVS = 4
    # pixel stream (Sec. 4.1): PanopticFPN's semantic branch on these levels, 256 channels, output stride 4, 1x1 to d
    _C.PIXEL_IN_FEATURES = ["p3", "p4", "p5"]
    _C.PIXEL_CONV_DIM = 256
    _C.PIXEL_NORM = "GN"
    _C.PIXEL_STRIDE = 4
    # Eq. 1 "corr" (2 x d object kernels, softmax over fg/bg) or Table 3 row 1's "lc" (YOLACT: d foreground-only
    # coefficients through tanh, linear combination of the d prototypes Psi(U), sigmoid)
    _C.MASK_ASSEMBLY = "corr"
    # cropping module (Sec. 3.2, 4.1): TE crops training masks with the ground-truth boxes x1.5 (else x1), IE crops
    # inference masks with the detections x1.2 (else x1); pixels outside the crop are ignored in the loss
    _C.TRAIN_EXPAND = True
    _C.CROP_EXPAND_TRAIN = 1.5
    _C.TEST_EXPAND = True
    _C.CROP_EXPAND_TEST = 1.2
    # mask loss (Sec. 3.2, 3.4): OHEM of background pixels inside the crop at negatives : positives = 1 : 1; only the
    # positive anchors' masks, at most MAX_MASKS_PER_IMAGE (sampled) per image; lambda_m of Eq. 8
    _C.OHEM = True
    _C.OHEM_NEG_POS_RATIO = 1.0
    _C.MAX_MASKS_PER_IMAGE = 100
    _C.MASK_LOSS_WEIGHT = 1.0
    # inference (Sec. 3.4): masks binarised at this threshold
    _C.MASK_THRESHOLD = 0.4
    # Table 4: the output boxes are the regressed ones ("none"), the masks' enclosing rectangles ("direct") or MBRM's.
    # "none" by default: MBRM is trained in its own stage after the rest has converged (MBRM_STAGE, Sec. 3.4) and is
    # switched on for that stage and for the models it produces (the paper's final RDSNet: "mbrm")
    _C.BOX_REFINEMENT = "none"
    # MBRM (Sec. 3.3, Fig. 5): s (kernel 2s + 1), gamma (sigma = gamma x box extent, >= 1 px); one kernel per side
    # (the paper) or one shared kernel mirrored (the authors' released code)
    _C.MBRM_S = 4
    _C.MBRM_GAMMA = 0.05
    _C.MBRM_SHARED_KERNEL = False
    # the MBRM stage (Sec. 3.4, 4.1): train only MBRM's kernels with L_refine, everything else frozen (load the
    # converged model with MODEL.WEIGHTS); 1k iterations in the paper
    _C.MBRM_STAGE = False
