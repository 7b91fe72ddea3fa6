#!/usr/bin/env python
"""Train or evaluate any instseg method (or a baseline) with detectron2's tools.

python train_net.py --config-file configs/Baselines/mask_rcnn_R_18_FPN_synthetic.yaml
python train_net.py --config-file <cfg> --eval-only MODEL.WEIGHTS <checkpoint.pth>
python train_net.py --config-file <cfg> --resume            # continue from OUTPUT_DIR/last_checkpoint
python train_net.py --config-file <cfg> --num-gpus 2        # also on a CPU-only machine (gloo)
"""

import sys

try:
    import detectron2  # noqa: F401
except ImportError:
    sys.exit(
        "train_net.py: detectron2 is not installed. Install it from its official source:\n"
        "    pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'\n"
        "or from a local checkout: DETECTRON2_SRC=/path/to/detectron2 make train (see README)."
    )

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import default_argument_parser, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm

import instseg.data  # noqa: F401  (registers the synthetic datasets)
from instseg.engine import Trainer, UserError, build_cfg, setup_cfg


def main(args):
    cfg = setup_cfg(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def run(argv=None):
    args = default_argument_parser().parse_args(argv)
    try:
        build_cfg(args)  # config and dataset mistakes surface here, once, before any worker starts
        if args.num_gpus * args.num_machines == 1:
            return main(args)  # what launch() does for one process, but keeping the results
        return launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except UserError as e:
        sys.exit(f"train_net.py: {e}")


if __name__ == "__main__":
    run()
