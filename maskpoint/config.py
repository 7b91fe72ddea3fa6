"""``add_maskpoint_config``: the keys of Mask Point R-CNN, each with the paper's value as default."""


def add_maskpoint_config(cfg) -> None:
    """Add ``MODEL.MASK_POINT`` (Mask Point R-CNN, ``papers/mask_point_rcnn.txt``) to a detectron2 config."""
    from detectron2.config import CfgNode as CN

    cfg.MODEL.MASK_POINT = CN()
    _C = cfg.MODEL.MASK_POINT
    # k, the number of contour points (Sec. IV-B: 100; Table V: 50 / 100)
    _C.NUM_POINTS = 100
    # add the object's centre as keypoint k+1 (Table VII: "without center point" is False)
    _C.WITH_CENTER = True
    # the centre point: "mass" (the mask's centroid) or "box" (the centre of its tight box)
    _C.CENTER = "mass"
    # contour sampling (Table VI): "uniform" (equal arc-length spacing) or "corner" (polygon vertices)
    _C.SAMPLING = "uniform"
    # where the keypoint and mask logits meet (Table II, Fig. 4): "a", "b" (Eq. 1), "c" or "d"
    _C.FUSION_STRUCTURE = "b"
    # how the 56x56 keypoint maps are brought to 28x28 (Table III): "conv" (3x3 s2), "max" or "avg"
    _C.REDUCTION = "conv"
    # how O_k meets the mask logits (Table IV, Eq. 2): "mul", "add", "max", or "none" (multi-task only)
    _C.FUSION = "mul"
    # alpha of Eq. 3, the weight of the keypoint loss (Table VII: 0.5)
    _C.KEYPOINT_LOSS_WEIGHT = 0.5
    # Sec. IV-E: masks made only by filling the polygon of the predicted contour points
    _C.MASK_FROM_CONTOUR = False
    # evaluate the contour keypoints too (Table VII's AP_keypoint), against contour points sampled from
    # the ground-truth masks; OKS sigmas: one per keypoint, or a single value used for all
    _C.EVAL_KEYPOINTS = False
    _C.OKS_SIGMAS = [0.025]
