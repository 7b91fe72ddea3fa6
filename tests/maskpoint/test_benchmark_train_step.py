"""tools/benchmark_train_step.py runs both code paths on the same batches and prints the ratio it promises."""

import json

import pytest

from tests.utils import importorskip_detectron2

importorskip_detectron2()


def test_benchmark_train_step_json(capsys, datasets_dir):
    from tools import benchmark_train_step

    benchmark_train_step.main(
        [
            "--size",
            "64",
            "--batch",
            "2",
            "--repeats",
            "2",
            "--warmup",
            "0",
            "--json",
            "MODEL.MASK_POINT.NUM_POINTS",
            "8",
            "MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS",
            "9",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert out["repeats"] == 2 and out["num_points"] == 8 and out["batch"] == 2
    assert out["ratio_after_before"] == pytest.approx(out["step_after_s"] / out["step_before_s"])
    # "before" samples the targets inside the step; that time is part of its step and of its heads' target step
    assert 0 < out["targets_in_step_before_s"] < out["step_before_s"]
    assert out["targets_in_step_before_s"] < out["heads_targets_before_s"]
    assert out["heads_targets_ratio_after_before"] == pytest.approx(
        out["heads_targets_after_s"] / out["heads_targets_before_s"]
    )
    mappers = out["mapper_s_per_image"]
    assert out["mapper_ratio"] == pytest.approx(mappers["ContourPointDatasetMapper"] / mappers["DatasetMapper"])
