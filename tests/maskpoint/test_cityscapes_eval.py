"""Cityscapes runs report box AP next to the Cityscapes instance metrics (Table VII's AP_bb): the
``cityscapes_instance`` evaluator type adds COCO box AP, on data in the Cityscapes layout (the synthetic export read
by detectron2's Cityscapes loader), and a Mask Point model evaluates there through the Trainer."""

import pycocotools.mask as mask_util
import pytest
import torch

from tests.utils import TINY, importorskip_detectron2

importorskip_detectron2()

from detectron2.data import DatasetCatalog  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402

from instseg.config import get_cfg  # noqa: E402
from instseg.data.cityscapes import export_and_register  # noqa: E402
from instseg.data.synthetic import SyntheticSpec  # noqa: E402
from instseg.engine import Trainer, build_evaluator  # noqa: E402
from tests.maskpoint.test_roi_heads import CONFIG  # noqa: E402


@pytest.fixture
def cityscapes_val(tmp_path, datasets_dir, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # cityscapesscripts would write matches.json here
    return export_and_register(
        SyntheticSpec(num_images=3, height=96, width=96, seed=5), split="val", name="synthetic_cityscapes_table7_val"
    )


def _ground_truth_as_predictions(dicts, shift_boxes=False):
    outputs = []
    for d in dicts:
        anns = [a for a in d["annotations"] if not a.get("iscrowd", 0)]
        pred = Instances((d["height"], d["width"]))
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        if shift_boxes:  # by their own width: IoU 0 with every ground-truth box
            boxes[:, [0, 2]] += (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
        pred.pred_boxes = Boxes(boxes)
        pred.scores = torch.ones(len(anns))
        pred.pred_classes = torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)
        masks = [torch.from_numpy(mask_util.decode(a["segmentation"]).astype(bool)) for a in anns]
        pred.pred_masks = torch.stack(masks) if masks else torch.zeros((0, d["height"], d["width"]), dtype=torch.bool)
        outputs.append({"instances": pred})
    return outputs


def test_cityscapes_instance_evaluation_reports_box_ap(cityscapes_val, tmp_path):
    cfg = get_cfg()
    cfg.merge_from_file(CONFIG)
    dicts = DatasetCatalog.get(cityscapes_val)
    assert sum(len(d["annotations"]) for d in dicts) > 5
    results = {}
    for shift in (False, True):
        evaluator = build_evaluator(cfg, cityscapes_val, output_folder=str(tmp_path / f"eval_{shift}"))
        evaluator.reset()
        for d, out in zip(dicts, _ground_truth_as_predictions(dicts, shift), strict=True):
            evaluator.process([d], [out])
        results[shift] = evaluator.evaluate()
    exact, shifted = results[False], results[True]
    assert exact["bbox"]["AP"] == pytest.approx(100.0)  # COCO box AP of the ground truth itself
    assert shifted["bbox"]["AP"] == pytest.approx(0.0)  # boxes that overlap nothing
    # the Cityscapes metrics stay those of the masks, which did not move
    assert exact["segm"]["AP"] > 50 and shifted["segm"] == exact["segm"]


def test_mask_point_evaluates_on_cityscapes_through_the_trainer(cityscapes_val, tmp_path):
    cfg = get_cfg()
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list(TINY + ["DATASETS.TEST", f"('{cityscapes_val}',)", "OUTPUT_DIR", str(tmp_path / "o")])
    model = Trainer.build_model(cfg)
    # untrained BN layers (running statistics 0 / 1) let the keypoint logits reach several hundred, where
    # detectron2's heatmaps_to_keypoints overflows: flat heatmaps keep this test about the evaluation
    torch.nn.init.zeros_(model.roi_heads.keypoint_head.score_lowres.weight)
    res = Trainer.test(cfg, model)
    assert {"AP", "AP50"} <= set(res["segm"]) and {"AP", "AP50"} <= set(res["bbox"])
