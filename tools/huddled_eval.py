#!/usr/bin/env python
"""Huddled-instance evaluation (DSG Appendix 6.1, Table 4): two (or more) models' COCO results compared on
the subsets of a dataset selected by T_O and T_P, AP as the mean over instances.

    python tools/huddled_eval.py --dataset synthetic_instances_val \
        --results maskrcnn=output/a/inference/synthetic_instances_val/coco_instances_results.json \
                  dsg=output/b/inference/synthetic_instances_val/coco_instances_results.json
    python tools/huddled_eval.py --gt-json instances_val2017.json --results a=A.json b=B.json --json

The table shows the second model minus the first (box / mask AP); --json prints every cell's numbers.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from instseg.evaluation.huddled import THRESHOLDS, format_grid, huddled_grid  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--gt-json", help="COCO-format ground-truth json")
    src.add_argument("--dataset", help="a registered detectron2 dataset (converted to COCO format)")
    p.add_argument(
        "--results",
        nargs="+",
        required=True,
        metavar="NAME=PATH",
        help="COCO results json per model (e.g. detectron2's coco_instances_results.json)",
    )
    p.add_argument("--thresholds", type=float, nargs="+", default=list(THRESHOLDS))
    p.add_argument("--json", action="store_true", help="print the grid as JSON")
    return p.parse_args(argv)


def load_gt(args) -> dict:
    if args.gt_json:
        with open(args.gt_json) as f:
            return json.load(f)
    from detectron2.data.datasets.coco import convert_to_coco_dict

    import instseg.data  # noqa: F401  (registers the synthetic datasets)

    return convert_to_coco_dict(args.dataset)


def main(argv=None):
    args = parse_args(argv)
    results = {}
    for item in args.results:
        name, sep, path = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"--results expects NAME=PATH, got {item!r}")
        if not os.path.isfile(path):
            raise SystemExit(f"results file not found: {path}")
        with open(path) as f:
            results[name] = json.load(f)
    rows = huddled_grid(load_gt(args), results, thresholds=tuple(args.thresholds))
    if args.json:
        print(json.dumps({"models": list(results), "rows": rows}, indent=1))
    else:
        names = list(results)
        if len(names) >= 2:
            print(format_grid(rows, names[0], names[1], thresholds=tuple(args.thresholds)))
        for r in rows:
            print(r)
    return rows


if __name__ == "__main__":
    main()
