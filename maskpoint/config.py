"""``add_maskpoint_config``: the keys of Mask Point R-CNN, each with the paper's value as default; and the one place
where the detectron2 keys its keypoint branch implies are derived from them and checked (``implied_keys``,
``check_maskpoint_config``)."""


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
    # train a mask head (fused with the contour points, Eq. 1-2). False is Table VII's "keypoint-only" row: box and
    # contour-point heads only; it needs MASK_FROM_CONTOUR True (its masks are the filled contour polygons)
    _C.MASK_HEAD = True
    # evaluate the contour keypoints too (Table VII's AP_keypoint), against contour points sampled from
    # the ground-truth masks; OKS sigmas: one per keypoint, or a single value used for all
    _C.EVAL_KEYPOINTS = False
    _C.OKS_SIGMAS = [0.025]


# The dataset mapper that samples the contour points in the data loader
# (maskpoint.modeling.ContourPointDatasetMapper), and the detectron2 keys that its keypoint branch implies.
MAPPER_NAME = "ContourPointDatasetMapper"


def implied_keys(cfg) -> dict:
    """The detectron2 keys Mask Point R-CNN's keypoint branch implies, derived from ``MODEL.MASK_POINT``:

    * ``MODEL.KEYPOINT_ON`` True — the ROI heads have detectron2's keypoint head (for the k+1 contour points);
    * ``MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS`` = k + 1 (``NUM_POINTS + WITH_CENTER``);
    * ``MODEL.ROI_KEYPOINT_HEAD.LOSS_WEIGHT`` = alpha (``KEYPOINT_LOSS_WEIGHT``, Eq. 3);
    * ``MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE`` 0 — the datasets have no keypoint annotations (the
      points are sampled from the masks), so detectron2 must not drop images for having none;
    * ``INPUT.DATASET_MAPPER_NAME`` — the mapper that samples the points after augmentation, in the workers.
    """
    mp = cfg.MODEL.MASK_POINT
    return {
        "MODEL.KEYPOINT_ON": True,
        "MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS": int(mp.NUM_POINTS) + int(mp.WITH_CENTER),
        "MODEL.ROI_KEYPOINT_HEAD.LOSS_WEIGHT": float(mp.KEYPOINT_LOSS_WEIGHT),
        "MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE": 0,
        "INPUT.DATASET_MAPPER_NAME": MAPPER_NAME,
    }


def _get(cfg, key):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def set_implied_keys(cfg) -> None:
    """Write :func:`implied_keys` into an unfrozen ``cfg`` (for configs built in code; the shipped YAMLs state them)."""
    cfg.merge_from_list([x for kv in implied_keys(cfg).items() for x in kv])


def check_maskpoint_config(cfg) -> None:
    """Refuse, with one message naming every fix, a config whose keys contradict ``MODEL.MASK_POINT`` or each other.

    Nothing is overridden silently: the config a run dumps describes the model it trains."""
    mp = cfg.MODEL.MASK_POINT
    if int(mp.NUM_POINTS) < 1:
        raise ValueError(f"MODEL.MASK_POINT.NUM_POINTS (k) must be >= 1, got {mp.NUM_POINTS}")
    why = {
        "MODEL.KEYPOINT_ON": "the contour points are a keypoint branch",
        "MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS": "NUM_POINTS + WITH_CENTER",
        "MODEL.ROI_KEYPOINT_HEAD.LOSS_WEIGHT": "alpha = KEYPOINT_LOSS_WEIGHT",
        "MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE": "no dataset has contour keypoints to count",
    }
    problems, fixes = [], []
    for key, want in implied_keys(cfg).items():
        have = _get(cfg, key)
        if key == "INPUT.DATASET_MAPPER_NAME":
            if not _is_contour_mapper(have):
                problems.append(f"{key} is {have!r}, which does not sample the contour-point targets")
                fixes += [key, want]
        elif have != want:
            problems.append(f"{key} is {have!r}, but Mask Point R-CNN needs {want!r} ({why[key]})")
            fixes += [key, str(want)]
    if not cfg.MODEL.MASK_ON:
        problems.append(
            "MODEL.MASK_ON is False, but Mask Point R-CNN learns its contour points from instance masks "
            "and predicts masks (Table VII's keypoint-only row, without a mask head, is "
            "MODEL.MASK_POINT.MASK_HEAD False)"
        )
        fixes += ["MODEL.MASK_ON", "True"]
    from .layers import CENTERS, SAMPLINGS

    if mp.SAMPLING not in SAMPLINGS:
        problems.append(f"MODEL.MASK_POINT.SAMPLING must be one of {SAMPLINGS}, got {mp.SAMPLING!r}")
        fixes += ["MODEL.MASK_POINT.SAMPLING", SAMPLINGS[0]]
    if mp.CENTER not in CENTERS:
        problems.append(f"MODEL.MASK_POINT.CENTER must be one of {CENTERS}, got {mp.CENTER!r}")
        fixes += ["MODEL.MASK_POINT.CENTER", CENTERS[0]]
    if mp.REDUCTION != "conv" and mp.FUSION_STRUCTURE in ("c", "d"):
        problems.append(
            f"MODEL.MASK_POINT.REDUCTION {mp.REDUCTION} reduces 56x56 heatmaps to 28x28 (Table III: "
            f"structures a and b); structure {mp.FUSION_STRUCTURE} does not reduce"
        )
        fixes += ["MODEL.MASK_POINT.REDUCTION", "conv"]
    if not mp.MASK_HEAD:
        unused = {"FUSION_STRUCTURE": "b", "REDUCTION": "conv", "FUSION": "mul"}
        for key, default in unused.items():
            if mp[key] != default:
                problems.append(
                    f"MODEL.MASK_POINT.{key} {mp[key]} shapes the fusion into the mask head, which "
                    "MASK_HEAD False does not have"
                )
                fixes += [f"MODEL.MASK_POINT.{key}", default]
    if not mp.MASK_HEAD and not mp.MASK_FROM_CONTOUR:
        problems.append(
            "MODEL.MASK_POINT.MASK_HEAD is False (no mask head), so the masks can only be the filled contour polygons"
        )
        fixes += ["MODEL.MASK_POINT.MASK_FROM_CONTOUR", "True"]
    if problems:
        raise ValueError(
            "Mask Point R-CNN (MODEL.MASK_POINT: NUM_POINTS={}, WITH_CENTER={}, KEYPOINT_LOSS_WEIGHT={}): {}. "
            "Set: {}".format(
                mp.NUM_POINTS, mp.WITH_CENTER, mp.KEYPOINT_LOSS_WEIGHT, "; ".join(problems), " ".join(fixes)
            )
        )


def _is_contour_mapper(name) -> bool:
    from instseg.data.mappers import DATASET_MAPPER_REGISTRY

    from .modeling import ContourPointDatasetMapper

    return name in DATASET_MAPPER_REGISTRY and issubclass(DATASET_MAPPER_REGISTRY.get(name), ContourPointDatasetMapper)
