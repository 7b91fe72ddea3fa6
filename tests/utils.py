"""Helpers shared by the tests."""

import importlib.util

import pytest

HAS_DETECTRON2 = importlib.util.find_spec("detectron2") is not None
DETECTRON2_REASON = (
    "detectron2 is not installed: install it from its official source "
    "(pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git') "
    "or set DETECTRON2_SRC to a detectron2 checkout and run `make test`"
)

requires_detectron2 = pytest.mark.skipif(not HAS_DETECTRON2, reason=DETECTRON2_REASON)


def importorskip_detectron2():
    """Module-level skip for test files that import detectron2 at the top."""
    return pytest.importorskip("detectron2", reason=DETECTRON2_REASON)


def cuda_available():
    import torch

    return torch.cuda.is_available()


requires_cuda = pytest.mark.skipif(
    not importlib.util.find_spec("torch") or not cuda_available(), reason="no CUDA device on this machine"
)


# a tiny version of the default synthetic setting: 96 px images, 2 images per batch, a few iterations
TINY = [
    "DATASETS.SYNTHETIC.IMAGE_SIZE",
    "(96, 96)",
    "DATASETS.SYNTHETIC.NUM_TRAIN",
    "12",
    "DATASETS.SYNTHETIC.NUM_VAL",
    "4",
    "INPUT.MIN_SIZE_TRAIN",
    "(96,)",
    "INPUT.MAX_SIZE_TRAIN",
    "96",
    "INPUT.MIN_SIZE_TEST",
    "96",
    "INPUT.MAX_SIZE_TEST",
    "96",
    "SOLVER.IMS_PER_BATCH",
    "2",
    "SOLVER.WARMUP_ITERS",
    "1",
    "SOLVER.BASE_LR",
    "0.01",
    "SOLVER.STEPS",
    "()",
    "DATALOADER.NUM_WORKERS",
    "0",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
    "0.0",  # an untrained model still predicts something
    # BN everywhere: after 3 iterations the running statistics are far off; PreciseBN recomputes them
    "TEST.PRECISE_BN.ENABLED",
    "True",
    "TEST.PRECISE_BN.NUM_ITER",
    "4",
    "MODEL.DEVICE",
    "cpu",
]


def synthetic_batch(num_images=2, size=96, seed=11, empty=(1,)):
    """Model inputs (detectron2's list[dict] with "image" and "instances") rendered from the synthetic
    generator; the images whose index is in ``empty`` have no instance at all."""
    import numpy as np
    import torch
    from detectron2.structures import BitMasks, Boxes, Instances

    from instseg.data.synthetic import SyntheticSpec, render_scene

    spec = SyntheticSpec(num_images=num_images, height=size, width=size, seed=seed, empty_prob=0.0)
    batch = []
    for i in range(num_images):
        scene = render_scene(spec, i)
        inst = Instances((size, size))
        kept = [] if i in empty else [x for x in scene.instances if x.area > 0]
        inst.gt_boxes = Boxes(torch.tensor([x.bbox_xyxy for x in kept], dtype=torch.float32).reshape(-1, 4))
        inst.gt_classes = torch.tensor([x.category_id for x in kept], dtype=torch.int64)
        masks = np.stack([x.mask for x in kept]) if kept else np.zeros((0, size, size), bool)
        inst.gt_masks = BitMasks(torch.from_numpy(masks))
        image = torch.from_numpy(np.ascontiguousarray(scene.image.transpose(2, 0, 1)))
        batch.append({"image": image, "height": size, "width": size, "instances": inst})
    return batch


# CPU inference at the 96 px of synthetic_batch, for model tests built from a shipped config
SMALL_TEST = ["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "96"]


def config_from(path, opts=()):
    """instseg's config (every method's keys) from a shipped YAML, ``opts`` and ``SMALL_TEST``."""
    from instseg.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(path)
    cfg.merge_from_list(list(opts) + SMALL_TEST)
    return cfg


def seeded_model(path, opts=(), seed=0):
    """``build_model(config_from(path, opts))`` with the torch seed set first (the same weights for the same seed)."""
    import torch
    from detectron2.modeling import build_model

    torch.manual_seed(seed)
    return build_model(config_from(path, opts))


def predict_alike(*models, num_images=2):
    """Each model's ``Instances`` (eval mode, no grad) on the same ``synthetic_batch`` images, per image: a list of
    tuples (one ``Instances`` per model)."""
    import torch

    images = images_only(synthetic_batch(num_images, empty=()))
    with torch.no_grad():
        outputs = [m.eval()(images) for m in models]
    return [tuple(o["instances"] for o in per_image) for per_image in zip(*outputs)]


def images_only(batch):
    """The inference inputs of a ``synthetic_batch``: each dict without its "instances"."""
    return [{k: v for k, v in d.items() if k != "instances"} for d in batch]


def with_contour_targets(batch, cfg):
    """``gt_keypoints`` as Mask Point R-CNN's ContourPointDatasetMapper gives them, for batches fed to the model
    directly."""
    from maskpoint.modeling import contour_keypoints

    mp = cfg.MODEL.MASK_POINT
    for d in batch:
        inst = d["instances"]
        inst.gt_keypoints = contour_keypoints(
            inst.gt_masks, inst.image_size, mp.NUM_POINTS, mp.SAMPLING, mp.WITH_CENTER, mp.CENTER
        )
    return batch
