#!/usr/bin/env python
"""Render a model's predictions (or a dataset's ground truth) on dataset images to one PNG grid.

    python tools/demo.py --config-file configs/Baselines/mask_rcnn_R_18_FPN_synthetic.yaml \
        --output demo.png MODEL.WEIGHTS output/make_train/model_final.pth
    python tools/demo.py --config-file <cfg> --ground-truth --output gt.png
"""

import argparse
import os
import sys

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SEGMENTATION_KEYS = ("sem_seg_file_name", "pan_seg_file_name", "segments_info")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--dataset", default=None, help="dataset name (default: the config's first test set)")
    p.add_argument("--num-images", type=int, default=8)
    p.add_argument("--columns", type=int, default=4)
    p.add_argument("--ground-truth", action="store_true", help="draw the annotations instead of predictions")
    p.add_argument("--score-threshold", type=float, default=0.5)
    p.add_argument("--output", default="demo.png")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import torch
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.engine import DefaultPredictor
    from detectron2.utils.visualizer import ColorMode, Visualizer

    import instseg.data  # noqa: F401
    from instseg.config import get_cfg
    from instseg.data.datasets import register_synthetic_from_cfg
    from instseg.engine.setup import merge_config

    cfg = get_cfg()
    merge_config(cfg, args.config_file, args.opts)
    if not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = args.score_threshold
    cfg.freeze()
    register_synthetic_from_cfg(cfg)
    name = args.dataset or cfg.DATASETS.TEST[0]
    dicts = DatasetCatalog.get(name)[: args.num_images]
    meta = MetadataCatalog.get(name)
    predictor = None if args.ground_truth else DefaultPredictor(cfg)
    tiles = []
    for d in dicts:
        img = cv2.imread(d["file_name"])
        vis = Visualizer(img[:, :, ::-1], meta, scale=2.0, instance_mode=ColorMode.IMAGE)
        if predictor is None:
            # the instances only: the synthetic dicts also name their stuff segmentation, which an instance
            # dataset's metadata has no classes for
            out = vis.draw_dataset_dict({k: v for k, v in d.items() if k not in SEGMENTATION_KEYS})
        else:
            out = vis.draw_instance_predictions(predictor(img)["instances"].to("cpu"))
        tiles.append(out.get_image()[:, :, ::-1])
    h, w = tiles[0].shape[:2]
    cols = min(args.columns, len(tiles))
    rows = (len(tiles) + cols - 1) // cols
    grid = np.zeros((rows * h, cols * w, 3), dtype=np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        grid[r * h : r * h + t.shape[0], c * w : c * w + t.shape[1]] = t
    cv2.imwrite(args.output, grid)
    print(f"wrote {args.output} ({len(tiles)} images of {name})")
    return grid


if __name__ == "__main__":
    main()
