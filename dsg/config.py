"""``add_dsg_config``: the keys of Deeply Shape-guided instance segmentation, paper values as defaults,
and Table 1's rows as switch settings (``TABLE1_ROWS``, ``table1_opts``)."""

# Table 1's switches, in the table's column order: mRPN, F_M, SgRA_B, F_B, SgRA_M
TABLE1_SWITCHES = ("MRPN_ON", "FUSE_MASK", "SG_ROI_ALIGN_BOX", "FUSE_BOX", "SG_ROI_ALIGN_MASK")
# Table 1, rows 0-5: each adds one component to the row above (row 0 is Mask R-CNN, row 4 the paper's DSG)
TABLE1_ROWS = tuple(tuple(i < n for i in range(len(TABLE1_SWITCHES))) for n in range(len(TABLE1_SWITCHES) + 1))


def table1_opts(row: int) -> list:
    """Config overrides (``KEY VALUE`` pairs) that set every ``MODEL.DSG`` switch to Table 1's row ``row``."""
    return [x for k, v in zip(TABLE1_SWITCHES, TABLE1_ROWS[row]) for x in (f"MODEL.DSG.{k}", str(v))]


def add_dsg_config(cfg) -> None:
    """Add ``MODEL.DSG`` (DSG, ``papers/dsg_deeply_shape_guided.txt``) to a detectron2 config.

    The five Table 1 switches default to the paper's final choice: mRPN, F_M, SgRA_B and F_B on, SgRA_M off.
    With all five off, DSGROIHeads is Mask R-CNN's StandardROIHeads (Table 1, row 0)."""
    from detectron2.config import CfgNode as CN

    cfg.MODEL.DSG = CN()
    _C = cfg.MODEL.DSG
    # Table 1 "mRPN": the RPN's RoIs also go through the Mask Proposal Network (MPN, Sec. 3.2), which
    # predicts a class-agnostic mask probability map P per RoI and keeps its intermediate features F_-
    _C.MRPN_ON = True
    # Table 1 "F_M": F_- -> conv -> summed with the mask head's RoI features F_m (Sec. 3.3)
    _C.FUSE_MASK = True
    # Table 1 "SgRA_B": the box head's RoI features come from Shape-guided RoIAlign guided by P (Sec. 3.4)
    _C.SG_ROI_ALIGN_BOX = True
    # Table 1 "F_B": F_- -> adaptive average pooling to the box resolution -> conv -> summed with F_b
    _C.FUSE_BOX = True
    # Table 1 "SgRA_M": the mask head's RoI features from SgRoIAlign too, guided by the P of the proposal each
    # detection was regressed from, re-expressed over the detection's box (Eq. 1 reads P relative to the RoI)
    _C.SG_ROI_ALIGN_MASK = False
    # "exact": Eq. 2 with our SgRoIAlign op (P sampled at every sampling point); "bin_approx": RoIAlign
    # features times (1 + P averaged over each bin), the approximation of the authors' later code
    _C.SG_MODE = "exact"
    # where the F_- (and P) the mask head gets at test time come from: "proposal" (Sec. 3.3: the proposal
    # each detection was regressed from, misaligned with the detection by the box regression, which the
    # paper accepts) or "detection" (the MPN runs once more, on the final detections; not for the cascade).
    # Training is the same either way: there the mask head's RoIs are the MPN's RoIs.
    _C.MASK_MPN_SOURCE = "proposal"
    # stop the gradient of the box (and mask) losses into the MPN through P
    _C.DETACH_PROBS = False
    # kernel size of the fusion convs: 1 as Sec. 3.3 says (Table 1's +0.59M per fusion matches 3x3 convs)
    _C.FUSION_KERNEL_SIZE = 1
    # the MPN: a mask-head-like FCN on RoIAlign features (Fig. 3). Output P is 2 x POOLER_RESOLUTION square;
    # F_- is the output of the last conv (POOLER_RESOLUTION square, CONV_DIM channels)
    _C.MPN_NUM_CONV = 4
    _C.MPN_CONV_DIM = 256
    _C.MPN_NORM = ""
    _C.MPN_POOLER_RESOLUTION = 14
    _C.MPN_POOLER_SAMPLING_RATIO = 0
    _C.MPN_POOLER_TYPE = "ROIAlignV2"
    # the MPN (and, in Cascade DSG, every stage's mask head) is trained with a binary mask loss on the RoIs with
    # IoU >= 0.5 against a ground truth (Sec. 4.1)
    _C.MPN_IOU_THRESHOLD = 0.5
    _C.MPN_LOSS_WEIGHT = 1.0
