"""``add_casnet_config``: the keys of CASNet (``papers/casnet.txt``), read by the ``CASNet`` meta-architecture (instance
and panoptic modes, the three semantic sources) and its torch-only layers. Values the paper does not give are ours,
marked so."""

SEMANTIC_SOURCES = ("predicted", "external", "ground_truth")


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
    # instance mode: the semantic head predicts these thing classes + background (Sec. III-A); panoptic mode: every
    # class of the dataset (its metadata's stuff_classes, detectron2's panoptic convention), this many being things
    _C.NUM_THING_CLASSES = 8
    # panoptic mode (Sec. III-C): also a panoptic_seg output, stuff segments from the semantic map; trains on a panoptic
    # dataset through INPUT.DATASET_MAPPER_NAME "PanopticDatasetMapper" (semantic labels and instances from the PNG)
    _C.PANOPTIC = False
    # panoptic mode: stuff regions smaller than this many output pixels are left void (ours; Panoptic-DeepLab's
    # Cityscapes value; detectron2's Panoptic FPN uses 4096 on COCO)
    _C.STUFF_AREA = 2048
    # where inference takes the semantic map from (Sec. IV, Tables III/IV): "predicted" (the semantic head, joint
    # training), "external" (separated mode: label PNGs in EXTERNAL_SEMANTIC_DIR named after the image, or another
    # detectron2 model: EXTERNAL_SEMANTIC_CONFIG + EXTERNAL_SEMANTIC_WEIGHTS), "ground_truth" (the inputs' sem_seg: the
    # upper bound). The labels are the dataset's semantic ids (its sem_seg convention).
    _C.SEMANTIC_SOURCE = "predicted"
    # instance mode: the label id of each thing class in the given labels (external / ground truth), in thing order;
    # empty: 0..K-1 (the synthetic data's). Cityscapes' semantic labels (trainIds) put the things at 11-18. Panoptic
    # mode reads them from the dataset's metadata.
    _C.THING_SEMANTIC_IDS = []
    _C.EXTERNAL_SEMANTIC_DIR = ""
    _C.EXTERNAL_SEMANTIC_CONFIG = ""
    _C.EXTERNAL_SEMANTIC_WEIGHTS = ""
    # Eq. 3's targets: 1 within this many strides of a box's centre, clipped to the box (FCOS's centre sampling; ours)
    _C.CENTRE_RADIUS = 1.5
    # Eq. 4: L = ALPHA Lcls + BETA Lcommon + GAMMA Lprob (Sec. IV: all 1)
    _C.ALPHA = 1.0
    _C.BETA = 1.0
    _C.GAMMA = 1.0
    # Eq. 3's weights w_n (the paper leaves them open): True (ours) gives the centre pixels and the others half of
    # L_prob each; False is the plain mean over pixels x thing classes (w_n = 1), under which the ~0.2 % positives of
    # the synthetic maps leave every centre probability below the 0.5 seed threshold early in training
    _C.PROB_BALANCED = True
    # post-processing (Sec. III-C): seeds above this centre probability (the paper's example, 0.5), then NMS (ours)
    _C.SEED_THRESHOLD = 0.5
    _C.SEED_NMS_THRESHOLD = 0.5
    # at most this many seeds (the most probable) enter the NMS and the vote (ours; the trained synthetic model fires up
    # to ~1700 per 256² image): a bound on the post-processing's cost whatever the image (noise: 332k at 800 x 1333)
    _C.SEED_TOPK = 5000
    # IoU-vote clustering (ours): a pixel joins no seed when its best IoU is <= IOU_VOTE_MIN_IOU; seeds whose IoU is
    # within IOU_VOTE_TIE_EPS of the best are "approximately the same": the centre decides
    _C.IOU_VOTE_MIN_IOU = 0.0
    _C.IOU_VOTE_TIE_EPS = 1e-3
    # instance scores (the paper is silent): "seed_x_semantic" (the seed's centre probability x the instance's mean
    # semantic probability of its class) or "seed"
    _C.SCORE_MODE = "seed_x_semantic"
