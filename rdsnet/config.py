"""``add_rdsnet_config``: the keys of RDSNet (``papers/rdsnet.txt``), paper values as defaults. The model arrives
with its issue; today the node holds the keys of the correlation + cropping op (``rdsnet.layers``)."""


def add_rdsnet_config(cfg) -> None:
    """Add ``MODEL.RDSNET`` (RDSNet, ``papers/rdsnet.txt``) to a detectron2 config."""
    from detectron2.config import CfgNode as CN

    cfg.MODEL.RDSNET = CN()
    _C = cfg.MODEL.RDSNET
    # Cropping module (Sec. 4, implementation details): each object's box, centre kept, is expanded in height and
    # width by this ratio before the mask is cropped: 1.5 in training (on the ground-truth boxes), 1.2 at inference
    _C.CROP_EXPAND_TRAIN = 1.5
    _C.CROP_EXPAND_TEST = 1.2
