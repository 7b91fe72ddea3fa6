"""``add_rdsnet_config``: the keys of RDSNet (``papers/rdsnet.txt``), paper values as defaults. The model (a RetinaNet
subclass) arrives with the next slice of issue 15; today the node holds the keys of the torch-only layers
(``rdsnet.layers``: correlation + cropping, the OHEM mask loss, MBRM)."""


def add_rdsnet_config(cfg) -> None:
    """Add ``MODEL.RDSNET`` (RDSNet, ``papers/rdsnet.txt``) to a detectron2 config."""
    from detectron2.config import CfgNode as CN

    cfg.MODEL.RDSNET = CN()
    _C = cfg.MODEL.RDSNET
    # Cropping module (Sec. 4.1): each object's box, centre kept, is expanded in height and width by this ratio
    # before the mask is cropped: 1.5 in training (on the ground-truth boxes, TE), 1.2 at inference (IE)
    _C.CROP_EXPAND_TRAIN = 1.5
    _C.CROP_EXPAND_TEST = 1.2
    # Mask loss (Sec. 3.2): OHEM of the background pixels inside each crop, negatives : positives = 1 : 1
    _C.OHEM = True
    _C.OHEM_NEG_POS_RATIO = 1.0
    # MBRM (Sec. 3.3, Fig. 5): s (the 1-D kernel is 2s + 1 wide) and gamma (sigma = gamma x box extent, >= 1 px);
    # one kernel per side (the paper's formulation) or one shared kernel mirrored (the authors' released code)
    _C.MBRM_S = 4
    _C.MBRM_GAMMA = 0.05
    _C.MBRM_SHARED_KERNEL = False
