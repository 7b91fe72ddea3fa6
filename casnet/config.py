"""``add_casnet_config``: the keys of CASNet (``papers/casnet.txt``). The model arrives with its issue; today the
node holds the keys of the IoU-vote clustering op (``casnet.layers.iou_vote``)."""


def add_casnet_config(cfg) -> None:
    """Add ``MODEL.CASNET`` (CASNet, ``papers/casnet.txt``) to a detectron2 config."""
    from detectron2.config import CfgNode as CN

    cfg.MODEL.CASNET = CN()
    _C = cfg.MODEL.CASNET
    # IoU-vote clustering (Sec. III-C, "Post processing"); the paper gives no values, these are ours:
    # a pixel joins no seed when its best IoU is <= IOU_VOTE_MIN_IOU
    _C.IOU_VOTE_MIN_IOU = 0.0
    # seeds whose IoU is within IOU_VOTE_TIE_EPS of the best are "approximately the same": the centre decides
    _C.IOU_VOTE_TIE_EPS = 1e-3
