"""``add_casnet_config``: the keys of CASNet (``papers/casnet.txt``), read by the ``CASNet`` meta-architecture (instance
mode; panoptic mode and the external / ground-truth semantic sources come with the next slice of issue 16) and its
torch-only layers. Values the paper does not give are ours, marked so."""


def add_casnet_config(cfg) -> None:
    """Add ``MODEL.CASNET`` (CASNet, ``papers/casnet.txt``) to a detectron2 config."""
    from detectron2.config import CfgNode as CN

    cfg.MODEL.CASNET = CN()
    _C = cfg.MODEL.CASNET
    # the heads' output stride (ours: 4, the middle of HRNet's 1/2, 1/4, 1/8 outputs); the attributes are divided by it
    _C.OUTPUT_STRIDE = 4
    # the backbone outputs fused HRNetV2-style (resized to the output stride, concatenated, 1x1 conv + norm + ReLU to
    # FUSE_CHANNELS), and the three FCN heads: HEAD_NUM_CONVS x (3x3 conv + norm + ReLU) of HEAD_CHANNELS, then 1x1
    _C.IN_FEATURES = ["s2", "s4", "s8"]
    _C.FUSE_CHANNELS = 256
    _C.HEAD_CHANNELS = 256
    _C.HEAD_NUM_CONVS = 2
    _C.NORM = "BN"
    # instance mode: the semantic head predicts these thing classes + background (Sec. III-A)
    _C.NUM_THING_CLASSES = 8
    # Eq. 3's targets: 1 within this many strides of a box's centre, clipped to the box (FCOS's centre sampling; ours)
    _C.CENTRE_RADIUS = 1.5
    # Eq. 4: L = ALPHA Lcls + BETA Lcommon + GAMMA Lprob (Sec. IV: all 1)
    _C.ALPHA = 1.0
    _C.BETA = 1.0
    _C.GAMMA = 1.0
    # post-processing (Sec. III-C): seeds above this centre probability (the paper's example, 0.5), then NMS (ours)
    _C.SEED_THRESHOLD = 0.5
    _C.SEED_NMS_THRESHOLD = 0.5
    # IoU-vote clustering (ours): a pixel joins no seed when its best IoU is <= IOU_VOTE_MIN_IOU; seeds whose IoU is
    # within IOU_VOTE_TIE_EPS of the best are "approximately the same": the centre decides
    _C.IOU_VOTE_MIN_IOU = 0.0
    _C.IOU_VOTE_TIE_EPS = 1e-3
    # instance scores (the paper is silent): "seed_x_semantic" (the seed's centre probability x the instance's mean
    # semantic probability of its class) or "seed"
    _C.SCORE_MODE = "seed_x_semantic"
