#!/usr/bin/env python
"""Mask Point R-CNN's training step with its contour-point targets made in the step ("before": what the ROI heads
did until the targets moved to the data loader, sampling them from the device masks on every iteration, a
device->CPU copy included) and made by the data loader ("after": ``ContourPointDatasetMapper``, in the workers; the
step only crops and scales them). Both are timed in turns in one run, on the same batches, as a ratio after/before;
the mapper's cost per image (the work moved into the workers, which overlap the step) is timed against detectron2's
``DatasetMapper``.

    python tools/benchmark_train_step.py --json                            # synthetic config, 256 px, batch 4
    python tools/benchmark_train_step.py --device cuda --threads 1 --json
    python tools/benchmark_train_step.py --config configs/MaskPoint/mask_point_rcnn_R_18_FPN_synthetic.yaml \
        --size 512 --batch 2 MODEL.MASK_POINT.NUM_POINTS 50 MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS 51
"""

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools.bench.common import machine_name  # noqa: E402

CONFIG = "configs/MaskPoint/mask_point_rcnn_R_18_FPN_synthetic.yaml"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=CONFIG, help="a Mask Point config (default: the synthetic one)")
    p.add_argument("--size", type=int, default=256, help="side of the synthetic training images")
    p.add_argument("--batch", type=int, default=4, help="images per step")
    p.add_argument("--repeats", type=int, default=10, help="timed steps per variant (in turns)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--json", action="store_true")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return p.parse_args(argv)


def build_cfg(args):
    from instseg.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(args.config)
    n = args.batch * (args.warmup + args.repeats)
    cfg.merge_from_list(
        [
            "DATASETS.SYNTHETIC.IMAGE_SIZE",
            f"({args.size}, {args.size})",
            "DATASETS.SYNTHETIC.NUM_TRAIN",
            str(n),
            "INPUT.MIN_SIZE_TRAIN",
            f"({args.size},)",
            "INPUT.MAX_SIZE_TRAIN",
            str(args.size),
            "SOLVER.IMS_PER_BATCH",
            str(args.batch),
            "MODEL.DEVICE",
            args.device,
            *args.opts,
        ]
    )
    cfg.freeze()
    return cfg


def _timed(fn, sync):
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def main(argv=None):
    args = parse_args(argv)
    import torch
    from detectron2.data import DatasetCatalog, DatasetMapper
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    import instseg.data  # noqa: F401  (registers the synthetic datasets)
    from instseg.data.datasets import register_synthetic_from_cfg
    from instseg.engine import Trainer
    from instseg.engine.trainer import build_mapper
    from maskpoint.modeling import contour_keypoints

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = build_cfg(args)
    register_synthetic_from_cfg(cfg)
    dicts = DatasetCatalog.get(cfg.DATASETS.TRAIN[0])
    mapper = build_mapper(cfg, is_train=True)
    plain = cfg.clone()  # detectron2's mapper on the same data (KEYPOINT_ON would ask for annotated keypoints)
    plain.defrost()
    plain.MODEL.KEYPOINT_ON = False
    d2_mapper = DatasetMapper(plain, is_train=True)

    # the work moved into the workers: mapping an image with and without the contour points
    torch.manual_seed(0)
    mapped, t_mp, t_d2 = [], [], []
    for d in dicts:
        start = time.perf_counter()
        mapped.append(mapper(d))
        t_mp.append(time.perf_counter() - start)
        start = time.perf_counter()
        d2_mapper(d)
        t_d2.append(time.perf_counter() - start)
    batches = [mapped[i : i + args.batch] for i in range(0, len(mapped), args.batch)]

    device = torch.device(cfg.MODEL.DEVICE)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    optimizer = Trainer.build_optimizer(cfg, model)
    for group in optimizer.param_groups:
        # a full optimizer step, but the weights stay put: a model that learns between the timed steps would put
        # more foreground RoIs in the later ones, and both variants must do the same work on the same batch
        group["lr"] = 0.0
    mp = cfg.MODEL.MASK_POINT
    in_step = []

    def targets(batch, targets_in_step):
        """The model inputs with their targets on the device; before: with the contour points sampled from the
        device masks, as the ROI heads did in every step (a device->CPU copy of the masks included)."""
        inputs, sampling = [], 0.0
        for d in batch:
            inst = d["instances"].to(device)  # what GeneralizedRCNN does with the targets first
            if targets_in_step and inst.has("gt_masks"):
                inst.remove("gt_keypoints")
                start = time.perf_counter()
                inst.gt_keypoints = contour_keypoints(
                    inst.gt_masks, inst.image_size, mp.NUM_POINTS, mp.SAMPLING, mp.WITH_CENTER, mp.CENTER
                )
                sync()
                sampling += time.perf_counter() - start
            inputs.append(dict(d, instances=inst))
        if targets_in_step:
            in_step.append(sampling)
        return inputs

    def step(batch, targets_in_step, seed):
        inputs = targets(batch, targets_in_step)
        torch.manual_seed(seed)  # the same proposal sampling for both variants
        losses = model(inputs)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()

    def heads_targets(batch, proposals, targets_in_step, seed):
        """The ROI heads' target step alone: match, sample and label the proposals (and, before, sample the points)."""
        inputs = targets(batch, targets_in_step)
        torch.manual_seed(seed)
        model.roi_heads.label_and_sample_proposals(proposals, [x["instances"] for x in inputs])

    times = {"before": [], "after": [], "heads_before": [], "heads_after": []}
    with EventStorage(0):
        for i, batch in enumerate(batches):
            with torch.no_grad():
                inputs = targets(batch, False)
                images = model.preprocess_image(inputs)
                gt = [x["instances"] for x in inputs]
                proposals, _ = model.proposal_generator(images, model.backbone(images.tensor), gt)
            order = (("before", True), ("after", False))
            for name, targets_in_step in order if i % 2 == 0 else order[::-1]:  # ABBA: no order bias
                t = _timed(lambda b=batch, s=targets_in_step, i=i: step(b, s, i), sync)
                th = _timed(lambda b=batch, p=proposals, s=targets_in_step, i=i: heads_targets(b, p, s, i), sync)
                if i >= args.warmup:
                    times[name].append(t)
                    times["heads_" + name].append(th)
    med = {k: statistics.median(v) for k, v in times.items()}
    before, after = med["before"], med["after"]
    result = {
        "config": args.config,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "size": args.size,
        "batch": args.batch,
        "num_points": mp.NUM_POINTS,
        "repeats": len(times["after"]),
        "platform": machine_name(),
        "step_before_s": before,
        "step_after_s": after,
        "ratio_after_before": after / before,
        "targets_in_step_before_s": statistics.median(in_step),
        "heads_targets_before_s": med["heads_before"],
        "heads_targets_after_s": med["heads_after"],
        "heads_targets_ratio_after_before": med["heads_after"] / med["heads_before"],
        "mapper_s_per_image": {
            "DatasetMapper": statistics.median(t_d2),
            "ContourPointDatasetMapper": statistics.median(t_mp),
        },
        "mapper_ratio": statistics.median(t_mp) / statistics.median(t_d2),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{args.config} on {device} ({result['threads']} threads), {args.batch} x {args.size}^2, "
            f"k = {mp.NUM_POINTS}, median of {result['repeats']} steps each"
        )
        print(
            f"  step, targets in the step (before):  {before * 1e3:8.1f} ms "
            f"(sampling: {result['targets_in_step_before_s'] * 1e3:.1f} ms)"
        )
        print(
            f"  step, targets from the loader (after): {after * 1e3:8.1f} ms   after/before = "
            f"{result['ratio_after_before']:.3f}"
        )
        print(
            f"  ROI heads' target step: before {med['heads_before'] * 1e3:.1f} ms, after "
            f"{med['heads_after'] * 1e3:.1f} ms   after/before = {result['heads_targets_ratio_after_before']:.3f}"
        )
        print(
            f"  mapper per image: DatasetMapper {statistics.median(t_d2) * 1e3:.1f} ms, ContourPointDatasetMapper "
            f"{statistics.median(t_mp) * 1e3:.1f} ms (x{result['mapper_ratio']:.2f}, in the workers)"
        )
    return result


if __name__ == "__main__":
    main()
