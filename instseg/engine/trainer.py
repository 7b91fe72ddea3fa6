"""The Trainer every method trains with: detectron2's DefaultTrainer plus evaluator selection, the dataset mapper
named by ``INPUT.DATASET_MAPPER_NAME`` and multi-process training on CPU-only machines."""

import contextlib
import logging

import detectron2.engine.defaults as d2_defaults
import torch
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer
from detectron2.solver.build import (
    _generate_optimizer_class_with_gradient_clipping,
    get_default_optimizer_params,
    maybe_add_gradient_clipping,
)
from detectron2.utils import comm

from instseg.data.mappers import build_augmentations, dataset_mapper_class

from .errors import UserError
from .evaluators import build_evaluator

logger = logging.getLogger(__name__)


def create_ddp_model(model, **kwargs):
    """detectron2's ``create_ddp_model``, but CPU modules get ``device_ids=None``.

    DistributedDataParallel refuses ``device_ids`` for CPU modules, which detectron2 always passes;
    ``launch`` already picks the gloo backend without a GPU, so this is all ``--num-gpus N`` needs on a CPU.
    """
    if comm.get_world_size() > 1 and "device_ids" not in kwargs:
        if next(model.parameters()).device.type == "cpu":
            kwargs["device_ids"] = None
    return _D2_CREATE_DDP_MODEL(model, **kwargs)


_D2_CREATE_DDP_MODEL = d2_defaults.create_ddp_model


@contextlib.contextmanager
def _cpu_aware_ddp():
    # DefaultTrainer.__init__ looks create_ddp_model up in its module; swap in ours while it runs.
    d2_defaults.create_ddp_model = create_ddp_model
    try:
        yield
    finally:
        d2_defaults.create_ddp_model = _D2_CREATE_DDP_MODEL


def build_mapper(cfg, is_train: bool):
    """The dataset mapper ``INPUT.DATASET_MAPPER_NAME`` names (``instseg.data.mappers``); an unknown name is a
    UserError."""
    try:
        cls = dataset_mapper_class(cfg)
    except ValueError as e:
        raise UserError(str(e)) from None
    if cfg.INPUT.CROP.AFTER_RESIZE:  # the crop after the resize (detectron2's mappers crop first)
        return cls(cfg, is_train, augmentations=build_augmentations(cfg, is_train))
    return cls(cfg, is_train)


class Trainer(DefaultTrainer):
    """DefaultTrainer with evaluators chosen by ``evaluator_type``, data loaders whose mapper is
    ``INPUT.DATASET_MAPPER_NAME``'s, and CPU-capable DDP."""

    def __init__(self, cfg):
        with _cpu_aware_ddp():
            super().__init__(cfg)

    def train(self):
        """Train; return the last evaluation's results (detectron2 returns them only with EXPECTED_RESULTS)."""
        results = super().train()
        if results is None:
            results = getattr(self, "_last_eval_results", None)
        return results

    @classmethod
    def build_optimizer(cls, cfg, model):
        """detectron2's SGD (or AdamW, ``SOLVER.OPTIMIZER``) with detectron2's parameter groups and gradient clipping,
        plus ``SOLVER.CLIP_GRADIENTS.CLIP_TYPE full_model``: the norm of all gradients together clipped at
        ``CLIP_VALUE`` (mmdetection's ``grad_clip``, as detectron2's ViTDet / DETR projects add it)."""
        name = cfg.SOLVER.OPTIMIZER
        if name not in ("SGD", "AdamW"):
            raise ValueError(f"SOLVER.OPTIMIZER must be 'SGD' or 'AdamW', got {name!r}")
        params = get_default_optimizer_params(
            model,
            base_lr=cfg.SOLVER.BASE_LR,
            weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
            bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
            weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
        )
        optimizer, kwargs = torch.optim.AdamW, {}
        if name == "SGD":
            optimizer, kwargs = torch.optim.SGD, {"momentum": cfg.SOLVER.MOMENTUM, "nesterov": cfg.SOLVER.NESTEROV}
        clip = cfg.SOLVER.CLIP_GRADIENTS
        if clip.ENABLED and clip.CLIP_TYPE == "full_model":
            value, norm_type = clip.CLIP_VALUE, clip.NORM_TYPE
            optimizer = _generate_optimizer_class_with_gradient_clipping(
                optimizer, global_clipper=lambda ps: torch.nn.utils.clip_grad_norm_(ps, value, norm_type)
            )
        else:
            optimizer = maybe_add_gradient_clipping(cfg, optimizer)
        return optimizer(params, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY, **kwargs)

    @classmethod
    def build_train_loader(cls, cfg):
        """detectron2's train loader with the mapper ``INPUT.DATASET_MAPPER_NAME`` names."""
        return build_detection_train_loader(cfg, mapper=build_mapper(cfg, is_train=True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        """detectron2's test loader with the mapper ``INPUT.DATASET_MAPPER_NAME`` names (in inference mode)."""
        return build_detection_test_loader(cfg, dataset_name, mapper=build_mapper(cfg, is_train=False))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluator(cfg, dataset_name, output_folder)
