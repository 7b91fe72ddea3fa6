"""CASNet's panoptic mode and semantic sources (Sec. III-C, Sec. IV's joint / separated / ground-truth modes): training
on the panoptic mapper's targets, ``panoptic_seg`` in detectron2's format (PQ 100 through detectron2's evaluator for a
perfect prediction), the stuff-area rule, ground-truth and external semantic labels."""

import json
import os

import cv2
import numpy as np
import pytest
import torch
from torch.nn import functional as F

from tests.utils import TINY, config_from, importorskip_detectron2

importorskip_detectron2()
pytest.importorskip("timm", reason="timm is in requirements.txt (make venv installs it)")

from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from instseg.data.datasets import register_synthetic_from_cfg  # noqa: E402
from instseg.data.mappers import PanopticDatasetMapper  # noqa: E402
from instseg.registry import load_methods  # noqa: E402

load_methods()

PAN = "configs/CASNet/casnet_hrnet_w18_small_synthetic.yaml"


@pytest.fixture
def pan_cfg(datasets_dir):
    cfg = config_from(PAN, TINY)
    register_synthetic_from_cfg(cfg)
    return cfg


def _model(cfg, opts=()):
    cfg = cfg.clone()
    cfg.merge_from_list(list(opts))
    torch.manual_seed(0)
    return build_model(cfg)


def _mapped(cfg, is_train, n=2):
    mapper = PanopticDatasetMapper(cfg, is_train)
    return [mapper(d) for d in DatasetCatalog.get(cfg.DATASETS.TEST[0])[:n]]


def test_panoptic_mode_reads_the_classes_from_the_metadata(pan_cfg):
    model = _model(pan_cfg)
    assert model.thing_ids == [0, 1, 2, 3, 4] and model.stuff_ids == [5, 6, 7]
    assert model.sem_head[-1].out_channels == 8 and model.prob_head[-1].out_channels == 5
    with pytest.raises(ValueError, match="set NUM_THING_CLASSES 5"):
        _model(pan_cfg, ["MODEL.CASNET.NUM_THING_CLASSES", "4"])
    with pytest.raises(ValueError, match="SEMANTIC_SOURCE must be one of"):
        _model(pan_cfg, ["MODEL.CASNET.SEMANTIC_SOURCE", "oracle"])
    with pytest.raises(ValueError, match="needs exactly one of EXTERNAL_SEMANTIC_DIR"):
        _model(pan_cfg, ["MODEL.CASNET.SEMANTIC_SOURCE", "external"])


def test_eq1_panoptic_targets_are_the_dataset_classes_and_training_runs(pan_cfg):
    """Eq. 1 in panoptic mode: the semantic targets are the PNG's classes (stuff too) read at the stride's centres;
    the attributes follow the instances. An image whose things are all gone trains too."""
    model = _model(pan_cfg)
    batch = _mapped(pan_cfg, True)
    d = batch[0]
    labels, dist, valid, centres, inside = model.targets(d["instances"], (96, 96), (96, 96), d["sem_seg"])
    np.testing.assert_array_equal(labels.numpy(), d["sem_seg"][2::4, 2::4].numpy())
    assert set(labels.unique().tolist()) & {5, 6, 7}  # stuff is learnt
    assert (labels[valid] < 5).all() and valid.any()
    # no things at all: sem_seg keeps the stuff, the things' pixels become void (ignored)
    empty = dict(batch[1])
    inst = empty["instances"]
    sem = empty["sem_seg"].clone()
    sem[sem < 5] = 255
    empty["instances"], empty["sem_seg"] = inst[torch.zeros(len(inst), dtype=torch.bool)], sem
    model.train()
    with EventStorage(0):
        losses = model([batch[0], empty])
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    with EventStorage(0), pytest.raises(ValueError, match="PanopticDatasetMapper"):
        model([{k: v for k, v in batch[0].items() if k != "sem_seg"}])


def _grid_scene():
    """A 32 x 32 panoptic image whose segments follow the stride-4 grid (so the stride loses nothing): stuff 5 on top,
    stuff 6 below, a thing of class 1 and one of class 3, and a 4 x 4 stuff-7 patch (16 pixels)."""
    ids = np.zeros((32, 32), np.int64)
    ids[:16] = 50
    ids[16:] = 60
    ids[4:12, 4:20] = 1
    ids[16:28, 20:28] = 2
    ids[28:32, 0:4] = 70
    segments = [
        {"id": 50, "category_id": 5, "isthing": False, "iscrowd": 0},
        {"id": 60, "category_id": 6, "isthing": False, "iscrowd": 0},
        {"id": 1, "category_id": 1, "isthing": True, "iscrowd": 0},
        {"id": 2, "category_id": 3, "isthing": True, "iscrowd": 0},
        {"id": 70, "category_id": 7, "isthing": False, "iscrowd": 0},
    ]
    return ids, segments


def _perfect_maps(model, ids, segments, num_classes=8):
    from detectron2.structures import BitMasks, Instances

    sem = torch.zeros(ids.shape, dtype=torch.int64)
    masks, classes = [], []
    for s in segments:
        sem[torch.from_numpy(ids == s["id"])] = s["category_id"]
        if s["isthing"]:
            masks.append(torch.from_numpy(ids == s["id"]))
            classes.append(s["category_id"])
    inst = Instances(ids.shape)
    inst.gt_masks = BitMasks(torch.stack(masks))
    inst.gt_boxes = inst.gt_masks.get_bounding_boxes()
    inst.gt_classes = torch.tensor([model.thing_ids.index(c) for c in classes])  # the mapper's thing index
    labels, dist, valid, centres, inside = model.targets(inst, ids.shape, ids.shape, sem)
    return F.one_hot(labels, num_classes).permute(2, 0, 1).float() * 20, dist, (centres * 2 - 1) * 20, sem


def test_sec3c_panoptic_seg_of_a_perfect_prediction_scores_pq_100(pan_cfg, tmp_path):
    """The targets of a grid-aligned image as predictions (the semantic map given, as in the ground-truth mode, so
    no bilinear up-sampling blurs the 16-pixel patch): panoptic_seg gives back every segment (things first, then stuff)
    and detectron2's COCOPanopticEvaluator scores it PQ 100. With STUFF_AREA above 16 the small stuff patch is void
    instead, and PQ_st drops (one FN of three stuff classes)."""
    from detectron2.evaluation import COCOPanopticEvaluator

    import instseg.engine.evaluators  # noqa: F401  (panopticapi: ours when missing)
    from instseg.data.panoptic import id2rgb

    ids, segments = _grid_scene()
    root = tmp_path / "pan"
    root.mkdir()
    cv2.imwrite(str(root / "a.png"), id2rgb(ids)[..., ::-1])
    name = "test_casnet_grid_panoptic"
    base = MetadataCatalog.get(pan_cfg.DATASETS.TEST[0])
    cats = [{"id": i + 1, "name": n, "isthing": int(i < 5)} for i, n in enumerate(base.stuff_classes)]
    ann = {
        "image_id": 0,
        "file_name": "a.png",
        "segments_info": [{**s, "category_id": s["category_id"] + 1} for s in segments],
    }
    for s in ann["segments_info"]:
        s.pop("isthing")
    (tmp_path / "pan.json").write_text(
        json.dumps({"images": [{"id": 0, "file_name": "a.png"}], "annotations": [ann], "categories": cats})
    )
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: [])
    MetadataCatalog.get(name).set(
        panoptic_root=str(root),
        panoptic_json=str(tmp_path / "pan.json"),
        thing_dataset_id_to_contiguous_id=base.thing_dataset_id_to_contiguous_id,
        stuff_dataset_id_to_contiguous_id=base.stuff_dataset_id_to_contiguous_id,
    )
    pq = {}
    for area in (16, 17):
        model = _model(pan_cfg, ["MODEL.CASNET.STUFF_AREA", str(area), "MODEL.CASNET.SEED_NMS_THRESHOLD", "0.95"])
        sem, dist, prob, labels = _perfect_maps(model, ids, segments)
        out = model.inference_single(sem, dist, prob, (32, 32), (32, 32), labels)
        pan, info = out["panoptic_seg"]
        assert [s["isthing"] for s in info][:2] == [True, True] and not any(s["isthing"] for s in info[2:])
        if area == 16:
            assert len(info) == 5
            for s in info:  # every predicted segment is exactly one ground-truth segment
                gt_ids = np.unique(ids[pan.numpy() == s["id"]])
                assert len(gt_ids) == 1 and s["category_id"] == next(
                    g["category_id"] for g in segments if g["id"] == gt_ids[0]
                )
                assert (pan.numpy() == s["id"]).sum() == (ids == gt_ids[0]).sum()
        else:
            assert len(info) == 4 and (pan[28:, :4] == 0).all()
        ev = COCOPanopticEvaluator(name, str(tmp_path / f"ev{area}"))
        ev.reset()
        ev.process([{"image_id": 0, "file_name": "a.png"}], [out])
        pq[area] = ev.evaluate()["panoptic_seg"]
    assert pq[16]["PQ"] == pytest.approx(100.0)
    assert pq[17]["PQ_th"] == pytest.approx(100.0) and pq[17]["PQ_st"] == pytest.approx(100 * 2 / 3)


def test_sec3c_cityscapes_ids_things_are_train_ids_11_to_18(pan_cfg):
    """detectron2's Cityscapes panoptic metadata (19 classes; things are the semantic ids 11-18, stuff 0-10): the head
    predicts 19 classes, the box-probability head 8; a grid-aligned perfect prediction of a person (11) and a car (13)
    on road (0) and sky (10) comes back with pred_classes and panoptic category ids in the semantic ids."""
    model = _model(
        pan_cfg,
        [
            "DATASETS.TRAIN",
            "('cityscapes_fine_panoptic_train',)",
            "MODEL.CASNET.NUM_THING_CLASSES",
            "8",
            "MODEL.CASNET.STUFF_AREA",
            "1",
            "MODEL.CASNET.SEED_NMS_THRESHOLD",
            "0.95",
        ],
    )
    assert model.thing_ids == list(range(11, 19)) and model.stuff_ids == list(range(11))
    assert model.sem_head[-1].out_channels == 19 and model.prob_head[-1].out_channels == 8
    ids, segments = _grid_scene()
    cityscapes = {5: 0, 6: 10, 7: 2, 1: 11, 3: 13}  # synthetic id -> a Cityscapes trainId
    segments = [{**x, "category_id": cityscapes[x["category_id"]]} for x in segments]
    sem, dist, prob, labels = _perfect_maps(model, ids, segments, num_classes=19)
    out = model.inference_single(sem, dist, prob, (32, 32), (32, 32), labels)
    assert sorted(out["instances"].pred_classes.tolist()) == [11, 13]
    pan, info = out["panoptic_seg"]
    assert sorted((x["category_id"], x["isthing"]) for x in info) == [
        (0, False),
        (2, False),
        (10, False),
        (11, True),
        (13, True),
    ]
    for x in info:
        gt = next(g for g in segments if g["category_id"] == x["category_id"])
        assert torch.equal(pan == x["id"], torch.from_numpy(ids == gt["id"]))


def test_sec3c_combine_things_first_then_stuff_above_the_area():
    """The combiner on hand-built maps: instances take their pixels first; each stuff class of the free pixels is a
    segment when it has at least STUFF_AREA pixels; free pixels of thing classes and smaller stuff are void. An
    instance without pixels (the second by score) gets no segment; segment ids run 1, 2, ... in that order."""
    from detectron2.structures import Instances

    model = _model_no_data()
    ids = torch.full((6, 6), -1)
    ids[0:2, 0:2] = 2  # instance 2 (third by score; instance 1 has no pixels)
    ids[4:6, 4:6] = 0
    sem = torch.full((6, 6), 5)
    sem[0:3, 0:3] = 2  # thing class: (0..1, 0..1) is instance 2's, the rest of the 3 x 3 free -> void
    sem[3:6, 0:2] = 7  # 6 pixels of stuff 7
    sem[4:6, 4:6] = 6  # under instance 0: instances win
    inst = Instances((6, 6))
    inst.pred_classes = torch.tensor([3, 4, 2])
    inst.scores = torch.tensor([0.9, 0.85, 0.8])
    for area, want_stuff in [(6, {5: 36 - 4 - 4 - 5 - 6, 7: 6}), (7, {5: 17})]:
        model.stuff_area = area
        pan, info = model.combine(ids, inst, sem)
        assert [(s["category_id"], s["isthing"], s["instance_id"]) for s in info[:2]] == [(3, True, 0), (2, True, 2)]
        assert [s["id"] for s in info] == list(range(1, len(info) + 1)) and pan.dtype == torch.int32
        assert (pan[4:6, 4:6] == info[0]["id"]).all() and (pan[0:2, 0:2] == info[1]["id"]).all()
        assert {s["category_id"]: s["area"] for s in info[2:]} == want_stuff
        assert (pan[(sem == 2) & (ids < 0)] == 0).all() and int((pan == 0).sum()) == 36 - 8 - sum(want_stuff.values())


def _model_no_data():
    """A panoptic CASNet's combiner needs only its stuff classes: the synthetic ids (things 0-4, stuff 5-7)."""
    from casnet.modeling import CASNet

    model = CASNet.__new__(CASNet)
    model.stuff_ids, model.stuff_area, model.num_sem = [5, 6, 7], 0, 8
    return model


def test_ground_truth_and_external_label_sources_agree(pan_cfg, tmp_path):
    """SEMANTIC_SOURCE ground_truth reads the inputs' sem_seg; external reads label PNGs named after the image (here
    the same labels, at the original size): same outputs. Thing pixels of the instances are thing pixels of the
    given map; sem_seg is the given map; no semantic head output is used (its weights do not matter)."""
    inputs = _mapped(pan_cfg, False)
    folder = tmp_path / "labels"
    folder.mkdir()
    for x in inputs:
        stem = os.path.splitext(os.path.basename(x["file_name"]))[0]
        cv2.imwrite(str(folder / f"{stem}.png"), x["sem_seg"].numpy().astype(np.uint8))
    outs = {}
    for src, opts in [("ground_truth", []), ("external", ["MODEL.CASNET.EXTERNAL_SEMANTIC_DIR", str(folder)])]:
        model = _model(pan_cfg, ["MODEL.CASNET.SEMANTIC_SOURCE", src, "MODEL.CASNET.SEED_THRESHOLD", "0.0", *opts])
        model.attr_head[-1].bias.data.fill_(3.0)  # untrained: boxes of some size everywhere, so that pixels vote
        model.eval()
        with torch.no_grad():
            outs[src] = model(inputs)
    assert sum(len(o["instances"]) for o in outs["ground_truth"]) > 0
    for a, b, x in zip(outs["ground_truth"], outs["external"], inputs):
        gt = x["sem_seg"]
        assert torch.equal(a["sem_seg"].argmax(0)[gt != 255], gt[gt != 255])
        assert torch.equal(a["panoptic_seg"][0], b["panoptic_seg"][0])
        assert torch.equal(a["instances"].pred_masks, b["instances"].pred_masks)
        for k in range(len(a["instances"])):
            c = int(a["instances"].pred_classes[k])
            assert (gt[a["instances"].pred_masks[k]] == c).all()
    with pytest.raises(ValueError, match="reads each input's 'sem_seg'"):
        model = _model(pan_cfg, ["MODEL.CASNET.SEMANTIC_SOURCE", "ground_truth"]).eval()
        model([{k: v for k, v in inputs[0].items() if k != "sem_seg"}])
    with pytest.raises(ValueError, match="is not a folder"):
        _model(pan_cfg, ["MODEL.CASNET.SEMANTIC_SOURCE", "external", "MODEL.CASNET.EXTERNAL_SEMANTIC_DIR", "/nope"])


def test_external_label_pngs_palette_and_original_size(pan_cfg, tmp_path):
    """Label PNGs as semantic models save them (palette mode, at the original image size) while the model runs at
    another size: the class ids are read as stored (not as grey levels), and sem_seg / the stuff come from them at the
    output size without a round trip through the input size."""
    from PIL import Image

    cfg = pan_cfg.clone()
    cfg.merge_from_list(["INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64"])
    inputs = _mapped(cfg, False, n=1)
    x = inputs[0]
    assert tuple(x["image"].shape[1:]) == (64, 64) and (x["height"], x["width"]) == (96, 96)
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 8, (96, 96), generator=g)
    labels[:8, :8] = 255
    png = Image.fromarray(labels.numpy().astype(np.uint8), mode="P")
    png.putpalette([v for i in range(256) for v in (i * 37 % 256, i * 91 % 256, i * 53 % 256)])
    folder = tmp_path / "labels"
    folder.mkdir()
    png.save(folder / (os.path.splitext(os.path.basename(x["file_name"]))[0] + ".png"))
    model = _model(cfg, ["MODEL.CASNET.SEMANTIC_SOURCE", "external", "MODEL.CASNET.EXTERNAL_SEMANTIC_DIR", str(folder)])
    model.eval()
    with torch.no_grad():
        out = model(inputs)[0]
    sem = out["sem_seg"]
    assert sem.shape == (8, 96, 96)
    known = labels != 255
    assert torch.equal(sem.argmax(0)[known], labels[known]) and (sem[:, ~known] == 0).all()
    Image.fromarray(np.zeros((96, 96, 3), np.uint8)).save(folder / "rgb.png")
    with pytest.raises(ValueError, match="single-channel class ids"):
        model.given_labels([{**x, "file_name": "images/rgb.png"}])


def test_instance_mode_given_labels_use_thing_semantic_ids(pan_cfg):
    """Instance mode with given labels in another convention (things at 11 and 13, as Cityscapes' trainIds):
    THING_SEMANTIC_IDS maps them to the thing classes, every other id to background."""
    inst_cfg = config_from("configs/CASNet/casnet_hrnet_w18_small_synthetic_instance.yaml", TINY)
    model = _model(inst_cfg, ["MODEL.CASNET.NUM_THING_CLASSES", "2", "MODEL.CASNET.THING_SEMANTIC_IDS", "[11, 13]"])
    lut = model.sem_lut
    assert lut[11] == 0 and lut[13] == 1 and lut[0] == 2 and lut[12] == 2 and lut[255] == 2
    with pytest.raises(ValueError, match="one label id"):
        _model(inst_cfg, ["MODEL.CASNET.NUM_THING_CLASSES", "2", "MODEL.CASNET.THING_SEMANTIC_IDS", "[11]"])


def test_external_model_gives_the_labels_and_is_not_part_of_the_model(pan_cfg, tmp_path):
    """Separated mode with a model: another detectron2 model's sem_seg argmax is the semantic map (resized to the
    input); that model is frozen and outside the state dict (CASNet's checkpoints stay its own)."""
    from detectron2.checkpoint import DetectionCheckpointer

    other = _model(pan_cfg)
    torch.manual_seed(3)
    for p in other.sem_head.parameters():
        p.data.normal_()
    DetectionCheckpointer(other, save_dir=str(tmp_path)).save("sem")
    cfg_file = tmp_path / "sem.yaml"
    cfg_file.write_text(pan_cfg.dump())
    external = ["MODEL.CASNET.SEMANTIC_SOURCE", "external", "MODEL.CASNET.EXTERNAL_SEMANTIC_CONFIG", str(cfg_file)]
    external += ["MODEL.CASNET.EXTERNAL_SEMANTIC_WEIGHTS", str(tmp_path / "sem.pth")]
    model = _model(pan_cfg, external)
    assert not any(k.startswith("external") for k in model.state_dict())
    assert not any(p.requires_grad for p in model.external_model.parameters())
    model.eval()
    other.eval()
    inputs = _mapped(pan_cfg, False, n=1)
    with torch.no_grad():
        want = other(inputs)[0]["sem_seg"].argmax(0)
        got = model.given_labels(inputs)[0]
    assert torch.equal(got, want) and len(want.unique()) > 1
    # the other model reads RGB where CASNet reads BGR: it gets its images with the channels flipped
    rgb = pan_cfg.clone()
    rgb.INPUT.FORMAT = "RGB"
    cfg_file.write_text(rgb.dump())
    flipped = _model(pan_cfg, external)
    assert flipped.external_flip_channels and not model.external_flip_channels
    with torch.no_grad():
        want = other([{**inputs[0], "image": inputs[0]["image"].flip(0)}])[0]["sem_seg"].argmax(0)
        assert torch.equal(flipped.given_labels(inputs)[0], want)


def test_train_net_panoptic_trains_and_reports_pq_miou_and_mask_ap(tmp_path, datasets_dir):
    import train_net

    res = train_net.run(["--config-file", PAN, *TINY, "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", str(tmp_path / "out")])
    pan, inst = res["synthetic_panoptic_val"], res["synthetic_instances_val"]
    assert {"PQ", "PQ_th", "PQ_st", "SQ", "RQ"} <= set(pan["panoptic_seg"]) and "mIoU" in pan["sem_seg"]
    assert {"segm", "bbox"} <= set(inst)


def test_panoptic_fpn_baseline_trains_on_the_separated_ids_and_reports_pq(tmp_path, datasets_dir):
    """configs/Baselines/panoptic_fpn_R_18_FPN_synthetic.yaml: detectron2's PanopticFPN on the separated ids (every
    thing pixel labelled 0 by the mapper), PQ through detectron2's evaluator, box and mask AP on the instance view."""
    import train_net

    no_flip = [*TINY, "INPUT.RANDOM_FLIP", "none"]
    cfg = config_from("configs/Baselines/panoptic_fpn_R_18_FPN_synthetic.yaml", no_flip)
    register_synthetic_from_cfg(cfg)
    d = PanopticDatasetMapper(cfg, True)(DatasetCatalog.get("synthetic_panoptic_separated_train")[0])
    std = PanopticDatasetMapper(config_from(PAN, no_flip), True)(DatasetCatalog.get("synthetic_panoptic_train")[0])
    assert torch.equal(d["image"], std["image"]) and torch.equal(d["instances"].gt_classes, std["instances"].gt_classes)
    want = torch.where(std["sem_seg"] < 5, 0, std["sem_seg"] - 4)  # things -> 0, stuff 5..7 -> 1..3
    want[std["sem_seg"] == 255] = 255
    assert torch.equal(d["sem_seg"], want)
    res = train_net.run(
        [
            "--config-file",
            "configs/Baselines/panoptic_fpn_R_18_FPN_synthetic.yaml",
            *TINY,
            "SOLVER.MAX_ITER",
            "2",
            "OUTPUT_DIR",
            str(tmp_path / "out"),
        ]
    )
    assert "PQ" in res["synthetic_panoptic_separated_val"]["panoptic_seg"]
    assert {"segm", "bbox"} <= set(res["synthetic_instances_val"])


def test_default_predictor_and_visualizer_take_the_panoptic_output(pan_cfg):
    """DefaultPredictor on the panoptic config, and detectron2's Visualizer drawing its panoptic_seg with the
    dataset's metadata, unchanged (Sec. III-C's output in detectron2's format)."""
    from detectron2.engine import DefaultPredictor
    from detectron2.utils.visualizer import Visualizer

    cfg = pan_cfg.clone()
    cfg.merge_from_list(["MODEL.CASNET.SEED_THRESHOLD", "0.0", "MODEL.CASNET.STUFF_AREA", "1"])
    image = cv2.imread(DatasetCatalog.get("synthetic_panoptic_val")[0]["file_name"])
    out = DefaultPredictor(cfg)(image)
    pan, info = out["panoptic_seg"]
    assert pan.shape == image.shape[:2] and info, "an untrained model still gives stuff segments at STUFF_AREA 1"
    assert {s["id"] for s in info} == set(pan.unique().tolist()) - {0}
    meta = MetadataCatalog.get("synthetic_panoptic_val")
    drawn = Visualizer(image[:, :, ::-1], meta).draw_panoptic_seg(pan, info).get_image()
    assert drawn.shape == image.shape and drawn.dtype == np.uint8
