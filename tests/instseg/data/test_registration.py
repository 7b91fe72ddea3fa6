"""The synthetic dataset through detectron2: catalog registration (instseg.data.datasets), DatasetMapper,
the COCO evaluator's conversion, and the Cityscapes-layout export (instseg.data.cityscapes) read back by
detectron2's Cityscapes loader."""

import os

from tests.utils import importorskip_detectron2

importorskip_detectron2()

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pycocotools.mask as mask_util  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog  # noqa: E402
from detectron2.data.datasets.coco import convert_to_coco_dict  # noqa: E402
from detectron2.data.datasets.coco_panoptic import load_coco_panoptic_json  # noqa: E402
from detectron2.structures import BoxMode  # noqa: E402

from instseg.data import datasets as syn_datasets  # noqa: E402
from instseg.data.cache import STUFF_IDS, THING_IDS, load_instances, split_dir  # noqa: E402
from instseg.data.cityscapes import (  # noqa: E402
    CITYSCAPES_THINGS,
    cityscapes_stem,
    export_and_register,
    export_cityscapes,
    register_cityscapes_export,
)
from instseg.data.synthetic import STUFF_CLASSES, THING_CLASSES, SyntheticSpec, render_scene  # noqa: E402

SPEC = SyntheticSpec(num_images=6, height=96, width=112, seed=11)
CITY_SPEC = SyntheticSpec(num_images=8, height=96, width=128, seed=3)
CITYSCAPES_THING_CLASSES = ["person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]


@pytest.fixture(autouse=True)
def _datasets_root(tmp_path, monkeypatch):
    root = tmp_path / "datasets"
    monkeypatch.setenv("DETECTRON2_DATASETS", str(root))
    return root


@pytest.fixture
def catalog():
    """Tests re-register the synthetic names; put the default registrations back afterwards."""
    yield
    syn_datasets.register_all_synthetic()
    for name in [n for n in DatasetCatalog.list() if n.startswith("test_cityscapes_export")]:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _decode(segm, h, w):
    if isinstance(segm, dict):
        return mask_util.decode(segm).astype(bool)
    rles = mask_util.frPyObjects(segm, h, w)
    return mask_util.decode(mask_util.merge(rles)).astype(bool)


# ---------------------------------------------------------------------------------------------
# synthetic registration
# ---------------------------------------------------------------------------------------------
def test_default_names_are_registered(catalog, _datasets_root):
    # importing instseg.data registers them (other tests may have re-registered them with other specs)
    for split in ("train", "val"):
        for kind in ("instances", "panoptic"):
            assert f"synthetic_{kind}_{split}" in DatasetCatalog.list()
    syn_datasets.register_all_synthetic()
    for split in ("train", "val"):
        for kind in ("instances", "panoptic"):
            assert MetadataCatalog.get(f"synthetic_{kind}_{split}").synthetic_spec == syn_datasets.DEFAULT_SPECS[split]
    # registration is lazy: nothing is generated until a loader is called
    assert not os.path.exists(_datasets_root)


def test_register_instances_split(catalog, _datasets_root):
    inst_name, pan_name = syn_datasets.register_synthetic("val", SPEC)
    assert (inst_name, pan_name) == ("synthetic_instances_val", "synthetic_panoptic_val")
    assert inst_name in DatasetCatalog.list() and pan_name in DatasetCatalog.list()

    dicts = DatasetCatalog.get(inst_name)
    assert len(dicts) == SPEC.num_images
    n = 0
    for d in dicts:
        assert os.path.isabs(d["file_name"]) and os.path.isfile(d["file_name"])
        assert d["file_name"].startswith(str(_datasets_root))
        assert os.path.isfile(d["sem_seg_file_name"])
        assert (d["height"], d["width"]) == (SPEC.height, SPEC.width)
        scene = render_scene(SPEC, d["image_id"])
        assert len(d["annotations"]) == len(scene.instances)
        for ann, inst in zip(d["annotations"], scene.instances):
            assert BoxMode(ann["bbox_mode"]) == BoxMode.XYXY_ABS
            assert tuple(ann["bbox"]) == inst.bbox_xyxy
            assert ann["category_id"] == inst.category_id
            np.testing.assert_array_equal(_decode(ann["segmentation"], SPEC.height, SPEC.width), inst.mask)
            n += 1
    assert n > 0

    meta = MetadataCatalog.get(inst_name)
    assert meta.evaluator_type == "coco"
    assert meta.thing_classes == THING_CLASSES
    assert len(meta.thing_colors) == len(THING_CLASSES)
    assert meta.synthetic_spec == SPEC
    assert os.path.isdir(meta.image_root)
    assert meta.image_root == os.path.join(split_dir("val", SPEC), "images")


def test_register_panoptic_split(catalog, tmp_path):
    _, pan_name = syn_datasets.register_synthetic("val", SPEC)
    dicts = DatasetCatalog.get(pan_name)
    assert len(dicts) == SPEC.num_images
    meta = MetadataCatalog.get(pan_name)
    assert meta.evaluator_type == "coco_panoptic_seg"
    # the files the COCO panoptic evaluator reads exist once the split has been loaded
    assert os.path.isdir(meta.panoptic_root)
    assert os.path.isfile(meta.panoptic_json)
    assert os.path.isdir(meta.sem_seg_root)
    assert meta.thing_dataset_id_to_contiguous_id == {d: i for i, d in enumerate(THING_IDS)}
    assert meta.stuff_dataset_id_to_contiguous_id == {d: i for i, d in enumerate(THING_IDS + STUFF_IDS)}
    assert meta.stuff_classes == THING_CLASSES + STUFF_CLASSES
    assert meta.label_divisor == 1000

    n_things = 0
    for d in dicts:
        for key in ("file_name", "pan_seg_file_name", "sem_seg_file_name"):
            assert os.path.isabs(d[key]) and os.path.isfile(d[key]), key
        assert os.path.dirname(d["pan_seg_file_name"]) == meta.panoptic_root
        scene = render_scene(SPEC, d["image_id"])
        rgb = cv2.imread(d["pan_seg_file_name"], cv2.IMREAD_COLOR)[..., ::-1].astype(np.int64)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
        things = [s for s in d["segments_info"] if s["isthing"]]
        assert len(things) == len(scene.instances)
        for s in d["segments_info"]:
            assert s["isthing"] == (s["category_id"] < len(THING_CLASSES))
            assert 0 <= s["category_id"] < len(THING_CLASSES) + len(STUFF_CLASSES)
        for s, inst in zip(things, scene.instances):
            assert s["category_id"] == inst.category_id
            np.testing.assert_array_equal(ids == s["id"], inst.mask)
            n_things += 1
    assert n_things > 0

    # detectron2's own COCO panoptic reader agrees on the segments. It assumes COCO's .jpg images and checks
    # that the first one exists, so point it at a folder holding that (empty) file.
    jpg_dir = tmp_path / "jpg"
    jpg_dir.mkdir()
    (jpg_dir / "000000.jpg").touch()
    d2 = load_coco_panoptic_json(meta.panoptic_json, str(jpg_dir), meta.panoptic_root, meta.as_dict())
    assert len(d2) == len(dicts)
    for a, b in zip(sorted(d2, key=lambda x: x["image_id"]), dicts):
        assert a["image_id"] == b["image_id"]
        assert a["pan_seg_file_name"] == b["pan_seg_file_name"]
        assert a["segments_info"] == b["segments_info"]


def test_dataset_mapper_gives_the_stored_masks(catalog):
    from instseg.config import get_cfg

    inst_name, _ = syn_datasets.register_synthetic("val", SPEC)
    cfg = get_cfg()
    cfg.MODEL.MASK_ON = True  # otherwise the mapper drops the masks
    cfg.INPUT.MASK_FORMAT = "bitmask"
    # keep the image size and orientation so the masks can be compared pixel for pixel
    cfg.INPUT.MIN_SIZE_TRAIN = (min(SPEC.height, SPEC.width),)
    cfg.INPUT.MAX_SIZE_TRAIN = 4 * max(SPEC.height, SPEC.width)
    cfg.INPUT.RANDOM_FLIP = "none"
    cfg.INPUT.CROP.ENABLED = False
    mapper = DatasetMapper(cfg, is_train=True)
    n = 0
    for d in DatasetCatalog.get(inst_name):
        out = mapper(d)
        scene = render_scene(SPEC, d["image_id"])
        image = out["image"]
        assert image.shape == (3, SPEC.height, SPEC.width)
        np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), scene.image)  # BGR, as stored
        inst = out["instances"]
        assert inst.image_size == (SPEC.height, SPEC.width)
        assert len(inst) == len(scene.instances)
        if len(inst) == 0:
            continue
        masks = inst.gt_masks.tensor
        assert masks.dtype == torch.bool
        for k, si in enumerate(scene.instances):
            np.testing.assert_array_equal(masks[k].numpy(), si.mask)
            assert tuple(inst.gt_boxes.tensor[k].tolist()) == si.bbox_xyxy
            assert int(inst.gt_classes[k]) == si.category_id
            n += 1
        # the semantic labels come along too
        sem = out["sem_seg"].numpy()
        for si in scene.instances:
            assert (sem[si.mask] == si.category_id).all()
    assert n > 0


def test_convert_to_coco_dict(catalog):
    inst_name, _ = syn_datasets.register_synthetic("val", SPEC)
    coco = convert_to_coco_dict(inst_name)
    assert [c["name"] for c in coco["categories"]] == THING_CLASSES
    assert len(coco["images"]) == SPEC.num_images
    scenes = {i: render_scene(SPEC, i) for i in range(SPEC.num_images)}
    assert len(coco["annotations"]) == sum(len(s.instances) for s in scenes.values())
    by_image = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    for image_id, anns in by_image.items():
        for ann, inst in zip(anns, scenes[image_id].instances):
            x0, y0, x1, y1 = inst.bbox_xyxy
            assert ann["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0])  # converted to XYWH
            assert ann["area"] == pytest.approx(inst.area)  # area of the RLE, not of the box
            assert ann["category_id"] == inst.category_id
            assert ann["iscrowd"] == 0
            np.testing.assert_array_equal(_decode(ann["segmentation"], SPEC.height, SPEC.width), inst.mask)


def test_coco_evaluator_scores_ground_truth_as_perfect(catalog, tmp_path):
    from detectron2.evaluation import COCOEvaluator
    from detectron2.structures import Boxes, Instances

    inst_name, _ = syn_datasets.register_synthetic("val", SPEC)
    evaluator = COCOEvaluator(
        inst_name, tasks=("bbox", "segm"), distributed=False, output_dir=str(tmp_path / "eval"), use_fast_impl=False
    )
    evaluator.reset()
    for d in DatasetCatalog.get(inst_name):
        scene = render_scene(SPEC, d["image_id"])
        pred = Instances((SPEC.height, SPEC.width))
        n = len(scene.instances)
        pred.pred_boxes = Boxes(torch.tensor([i.bbox_xyxy for i in scene.instances], dtype=torch.float32).reshape(n, 4))
        pred.scores = torch.ones(n)
        pred.pred_classes = torch.tensor([i.category_id for i in scene.instances], dtype=torch.int64)
        pred.pred_masks = torch.from_numpy(
            np.stack([i.mask for i in scene.instances]) if n else np.zeros((0, SPEC.height, SPEC.width), dtype=bool)
        )
        evaluator.process([d], [{"instances": pred}])
    results = evaluator.evaluate()
    assert results["segm"]["AP"] == pytest.approx(100.0)
    assert results["bbox"]["AP"] == pytest.approx(100.0)


def test_reregistering_replaces_the_old_spec(catalog):
    a = SyntheticSpec(num_images=3, height=64, width=64, seed=21)
    b = SyntheticSpec(num_images=5, height=64, width=80, seed=22)
    syn_datasets.register_synthetic("val", a)
    assert len(DatasetCatalog.get("synthetic_instances_val")) == 3
    inst_name, pan_name = syn_datasets.register_synthetic("val", b)
    assert DatasetCatalog.list().count(inst_name) == 1
    dicts = DatasetCatalog.get(inst_name)
    assert len(dicts) == 5 and all(d["width"] == 80 for d in dicts)
    assert len(DatasetCatalog.get(pan_name)) == 5
    assert MetadataCatalog.get(inst_name).synthetic_spec == b
    assert MetadataCatalog.get(pan_name).synthetic_spec == b
    assert MetadataCatalog.get(pan_name).panoptic_json == os.path.join(split_dir("val", b), "panoptic.json")
    assert [d["file_name"] for d in dicts] == [d["file_name"] for d in load_instances("val", b)]


def test_specs_from_cfg(catalog):
    from instseg.config import get_cfg

    cfg = get_cfg()
    assert syn_datasets.specs_from_cfg(cfg) == syn_datasets.DEFAULT_SPECS
    cfg.DATASETS.SYNTHETIC.IMAGE_SIZE = (64, 96)
    cfg.DATASETS.SYNTHETIC.NUM_TRAIN = 4
    cfg.DATASETS.SYNTHETIC.NUM_VAL = 2
    cfg.DATASETS.SYNTHETIC.SEED = 5
    specs = syn_datasets.specs_from_cfg(cfg)
    assert specs["train"] == SyntheticSpec(num_images=4, height=64, width=96, seed=5)
    assert specs["val"] == SyntheticSpec(num_images=2, height=64, width=96, seed=6)
    syn_datasets.register_synthetic_from_cfg(cfg)
    assert MetadataCatalog.get("synthetic_instances_train").synthetic_spec == specs["train"]
    assert len(DatasetCatalog.get("synthetic_panoptic_val")) == 2


# ---------------------------------------------------------------------------------------------
# Cityscapes export
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def city_export(tmp_path):
    return export_cityscapes(CITY_SPEC, str(tmp_path / "cityscapes"), split="val")


def _load_cityscapes(dirs, **kwargs):
    from detectron2.data.datasets.cityscapes import load_cityscapes_instances

    dicts = load_cityscapes_instances(dirs["image_dir"], dirs["gt_dir"], **kwargs)
    out = {}
    for d in dicts:
        stem = os.path.basename(d["file_name"])[: -len("_leftImg8bit.png")]
        idx = int(stem.split("_")[1])
        assert stem == cityscapes_stem("synthville", idx)
        out[idx] = d
    return out


def test_cityscapes_things_follow_detectron2_order():
    from cityscapesscripts.helpers.labels import name2label
    from detectron2.data.datasets.builtin_meta import _get_builtin_metadata

    assert len(CITYSCAPES_THINGS) == len(THING_CLASSES)
    thing_classes = _get_builtin_metadata("cityscapes")["thing_classes"]
    for k, (name, label_id) in enumerate(CITYSCAPES_THINGS):
        assert thing_classes[k] == name  # contiguous thing id k in detectron2
        assert name2label[name].id == label_id and name2label[name].hasInstances


def test_cityscapes_export_round_trips_through_detectron2(city_export):
    dicts = _load_cityscapes(city_export, from_json=False, to_polygons=False)
    assert sorted(dicts) == list(range(CITY_SPEC.num_images))
    n = 0
    for idx, d in dicts.items():
        scene = render_scene(CITY_SPEC, idx)
        h, w = CITY_SPEC.height, CITY_SPEC.width
        assert (d["height"], d["width"]) == (h, w)
        assert d["image_id"] == os.path.basename(d["file_name"])
        np.testing.assert_array_equal(cv2.imread(d["file_name"], cv2.IMREAD_COLOR), scene.image)
        # detectron2 drops masks that are one pixel wide or tall (its inclusive box is then empty)
        expected = [
            i for i in scene.instances if i.bbox_xyxy[2] - i.bbox_xyxy[0] > 1 and i.bbox_xyxy[3] - i.bbox_xyxy[1] > 1
        ]
        assert len(d["annotations"]) == len(expected)
        unmatched = list(expected)
        for ann in d["annotations"]:
            m = _decode(ann["segmentation"], h, w)
            match = [i for i in unmatched if np.array_equal(i.mask, m)]
            assert len(match) == 1, "a loaded mask matches no synthetic instance"
            inst = match[0]
            unmatched.remove(inst)
            assert ann["category_id"] == inst.category_id  # CITYSCAPES_THINGS order = contiguous ids
            assert not ann["iscrowd"]
            x0, y0, x1, y1 = inst.bbox_xyxy
            # the loader's box uses inclusive max coordinates
            assert tuple(float(v) for v in ann["bbox"]) == (x0, y0, x1 - 1, y1 - 1)
            assert BoxMode(ann["bbox_mode"]) == BoxMode.XYXY_ABS
            n += 1
        assert not unmatched
    assert n > 10


def _components(mask):
    n, _ = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    return n - 1


def _filled(mask):
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    out = np.zeros(mask.shape, dtype=np.uint8)
    cv2.drawContours(out, contours, -1, 1, thickness=-1)
    return out.astype(bool)


def test_cityscapes_export_json_polygons_load(city_export):
    pytest.importorskip(
        "shapely", reason="shapely is not installed: detectron2's Cityscapes json loader (from_json=True) needs it"
    )
    dicts = _load_cityscapes(city_export, from_json=True, to_polygons=True)
    assert sorted(dicts) == list(range(CITY_SPEC.num_images))
    clean_images = 0
    for idx, d in dicts.items():
        scene = render_scene(CITY_SPEC, idx)
        assert (d["height"], d["width"]) == (CITY_SPEC.height, CITY_SPEC.width)
        for ann in d["annotations"]:
            assert 0 <= ann["category_id"] < len(THING_CLASSES)
            assert isinstance(ann["segmentation"], list) and all(len(p) >= 6 for p in ann["segmentation"])
        # A polygon is one connected component's outer contour, so an instance split by occlusion gives
        # several annotations, and an instance seen only through a ring's hole is hidden by the ring's
        # filled outline: compare counts only where neither happens.
        fills = [_filled(i.mask) for i in scene.instances]
        split = any(_components(i.mask) != 1 for i in scene.instances)
        in_hole = any(
            (fills[a] & scene.instances[b].mask).any() for a in range(len(fills)) for b in range(len(fills)) if a != b
        )
        if split or in_hole:
            continue
        clean_images += 1
        assert len(d["annotations"]) == len(scene.instances)
        assert sorted(a["category_id"] for a in d["annotations"]) == sorted(i.category_id for i in scene.instances)
    assert clean_images >= 2


def test_register_cityscapes_export_metadata(catalog, city_export):
    name = register_cityscapes_export("test_cityscapes_export_val", **city_export)
    assert name in DatasetCatalog.list()
    meta = MetadataCatalog.get(name)
    assert meta.evaluator_type == "cityscapes_instance"
    assert meta.gt_dir == city_export["gt_dir"] and os.path.isdir(meta.gt_dir)
    assert meta.image_dir == city_export["image_dir"] and os.path.isdir(meta.image_dir)
    assert meta.thing_classes == CITYSCAPES_THING_CLASSES
    dicts = DatasetCatalog.get(name)  # from_json=False: exact masks as RLE
    assert len(dicts) == CITY_SPEC.num_images
    assert sum(len(d["annotations"]) for d in dicts) > 0
    assert all(isinstance(a["segmentation"], dict) for d in dicts for a in d["annotations"])


def test_export_is_cached_and_export_and_register(catalog, tmp_path, _datasets_root):
    spec = SyntheticSpec(num_images=2, height=64, width=64, seed=4)
    root = str(tmp_path / "cs")
    dirs = export_cityscapes(spec, root)
    img = os.path.join(dirs["image_dir"], "synthville", cityscapes_stem("synthville", 0) + "_leftImg8bit.png")
    stamp = os.path.getmtime(img)
    assert export_cityscapes(spec, root) == dirs
    assert os.path.getmtime(img) == stamp  # not rewritten
    gt = os.path.join(dirs["gt_dir"], "synthville", cityscapes_stem("synthville", 1))
    ids = cv2.imread(gt + "_gtFine_instanceIds.png", cv2.IMREAD_UNCHANGED)
    assert ids.dtype == np.uint16 and ids.shape == (64, 64)
    assert os.path.isfile(gt + "_gtFine_labelIds.png") and os.path.isfile(gt + "_gtFine_polygons.json")

    name = export_and_register(spec, name="test_cityscapes_export_auto")
    meta = MetadataCatalog.get(name)
    assert meta.image_dir.startswith(str(_datasets_root))
    assert len(DatasetCatalog.get(name)) == 2


def test_panoptic_evaluator_scores_ground_truth_as_perfect(catalog, tmp_path):
    """detectron2's COCOPanopticEvaluator, unchanged, on the synthetic panoptic split (panopticapi: ours when the
    package is absent): the ground truth given back as ``panoptic_seg`` scores PQ 100; one thing dropped does not."""
    from detectron2.evaluation import COCOPanopticEvaluator

    import instseg.engine.evaluators  # noqa: F401  (registers panopticapi when it is missing)

    _, pan_name = syn_datasets.register_synthetic("val", SPEC)
    results = []
    for drop in (False, True):
        evaluator = COCOPanopticEvaluator(pan_name, str(tmp_path / f"pan{drop}"))
        evaluator.reset()
        for i, d in enumerate(DatasetCatalog.get(pan_name)):
            rgb = cv2.imread(d["pan_seg_file_name"], cv2.IMREAD_COLOR)[..., ::-1].astype(np.int64)
            ids = rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
            segs = [{k: s[k] for k in ("id", "category_id", "isthing")} for s in d["segments_info"]]
            if drop and i == 0:
                gone = next(s for s in segs if s["isthing"])
                ids[ids == gone["id"]] = 0
                segs.remove(gone)
            evaluator.process([d], [{"panoptic_seg": (torch.from_numpy(ids).int(), segs)}])
        results.append(evaluator.evaluate()["panoptic_seg"])
    assert results[0]["PQ"] == pytest.approx(100.0) and results[0]["PQ_th"] == pytest.approx(100.0)
    assert results[0]["PQ_st"] == pytest.approx(100.0)
    assert results[1]["RQ_th"] < 100.0 and results[1]["PQ_st"] == pytest.approx(100.0)


def test_panoptic_mapper_gives_the_scene_instances_and_semantic_labels(catalog):
    """PanopticDatasetMapper on synthetic_panoptic: the instances are the scene's (masks, classes, tight boxes), the
    semantic labels the sem_seg PNG's (the two encodings agree), flipped together with the image."""
    from detectron2.data import transforms as T

    from instseg.data.mappers import PanopticDatasetMapper

    _, pan_name = syn_datasets.register_synthetic("val", SPEC)
    meta = MetadataCatalog.get(pan_name)
    for flip in (False, True):
        aug = [T.RandomFlip(prob=1.0)] if flip else []
        mapper = PanopticDatasetMapper(
            is_train=True, augmentations=aug, image_format="BGR", thing_ids=list(range(5)), ignore_label=255
        )
        for d in DatasetCatalog.get(pan_name)[:3]:
            out = mapper(d)
            scene = render_scene(SPEC, d["image_id"])
            sem = cv2.imread(d["sem_seg_file_name"], cv2.IMREAD_GRAYSCALE).astype(np.int64)
            image = cv2.imread(d["file_name"], cv2.IMREAD_COLOR)
            masks = [i.mask for i in scene.instances]
            if flip:
                sem, image, masks = sem[:, ::-1], image[:, ::-1], [m[:, ::-1] for m in masks]
            np.testing.assert_array_equal(out["sem_seg"].numpy(), sem)
            np.testing.assert_array_equal(out["image"].permute(1, 2, 0).numpy(), image)
            inst = out["instances"]
            assert inst.gt_classes.tolist() == [i.category_id for i in scene.instances]
            for k, m in enumerate(masks):
                np.testing.assert_array_equal(inst.gt_masks.tensor[k].numpy(), m)
                ys, xs = np.nonzero(m)
                assert inst.gt_boxes.tensor[k].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    assert meta.ignore_label == 255


def test_panoptic_mapper_crowd_void_and_thing_ids(tmp_path):
    """A hand-built panoptic PNG: void pixels are ignored in sem_seg; a crowd region has its class there but gives no
    instance; a thing's class is
    its index among the metadata's thing ids (Cityscapes-like: things are semantic ids 3 and 1 -> index 1 and 0);
    at test time only sem_seg is kept."""
    from instseg.data.mappers import PanopticDatasetMapper
    from instseg.data.panoptic import id2rgb

    ids = np.zeros((6, 8), np.int64)
    ids[:, :4] = 7  # stuff, semantic id 0
    ids[1:3, 1:3] = 9  # thing, semantic id 3
    ids[4:6, 5:8] = 11  # crowd thing, semantic id 1
    ids[0, 5:8] = 12  # thing, semantic id 1
    cv2.imwrite(str(tmp_path / "pan.png"), id2rgb(ids)[..., ::-1])
    cv2.imwrite(str(tmp_path / "img.png"), np.zeros((6, 8, 3), np.uint8))
    d = {
        "file_name": str(tmp_path / "img.png"),
        "height": 6,
        "width": 8,
        "image_id": 0,
        "pan_seg_file_name": str(tmp_path / "pan.png"),
        "segments_info": [
            {"id": 7, "category_id": 0, "isthing": False, "iscrowd": 0},
            {"id": 9, "category_id": 3, "isthing": True, "iscrowd": 0},
            {"id": 11, "category_id": 1, "isthing": True, "iscrowd": 1},
            {"id": 12, "category_id": 1, "isthing": True, "iscrowd": 0},
        ],
    }
    mapper = PanopticDatasetMapper(is_train=True, augmentations=[], image_format="BGR", thing_ids=[1, 3])
    out = mapper(d)
    want = np.full((6, 8), 255)
    want[:, :4] = 0
    want[1:3, 1:3] = 3
    want[0, 5:8] = 1
    want[4:6, 5:8] = 1
    np.testing.assert_array_equal(out["sem_seg"].numpy(), want)
    assert out["instances"].gt_classes.tolist() == [1, 0]
    assert out["instances"].gt_boxes.tensor.tolist() == [[1, 1, 3, 3], [5, 0, 8, 1]]
    test = PanopticDatasetMapper(is_train=False, augmentations=[], image_format="BGR", thing_ids=[1, 3])(d)
    assert "instances" not in test and torch.equal(test["sem_seg"], out["sem_seg"])
    with pytest.raises(ValueError, match="not in the metadata's things"):
        PanopticDatasetMapper(is_train=True, augmentations=[], image_format="BGR", thing_ids=[3])(
            {**d, "segments_info": [dict(x, isthing=True) for x in d["segments_info"]]}
        )
    # detectron2's Cityscapes panoptic loader gives no "isthing": the metadata's thing ids decide
    plain = {**d, "segments_info": [{k: v for k, v in x.items() if k != "isthing"} for x in d["segments_info"]]}
    again = mapper(plain)
    assert torch.equal(again["sem_seg"], out["sem_seg"])
    assert again["instances"].gt_classes.tolist() == [1, 0]


def test_crop_after_resize_puts_the_crop_between_resize_and_flip():
    """INPUT.CROP.AFTER_RESIZE (CASNet's Sec. IV: resize the short side, then crop): resize, crop, flip; detectron2's
    order otherwise (crop the original image first). The Trainer's mapper and PanopticDatasetMapper use it."""
    from detectron2.data import transforms as T

    from instseg.config import get_cfg
    from instseg.data.mappers import PanopticDatasetMapper, build_augmentations
    from instseg.engine.trainer import build_mapper

    cfg = get_cfg()
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE = "absolute", (640, 1280)
    kinds = lambda augs: [type(a) for a in augs]  # noqa: E731
    assert kinds(build_augmentations(cfg, True)) == [T.RandomCrop, T.ResizeShortestEdge, T.RandomFlip]
    cfg.INPUT.CROP.AFTER_RESIZE = True
    assert kinds(build_augmentations(cfg, True)) == [T.ResizeShortestEdge, T.RandomCrop, T.RandomFlip]
    assert kinds(build_augmentations(cfg, False)) == [T.ResizeShortestEdge]
    assert kinds(build_mapper(cfg, True).augmentations.augs) == [T.ResizeShortestEdge, T.RandomCrop, T.RandomFlip]
    cfg.DATASETS.TRAIN = ("synthetic_panoptic_train",)
    assert kinds(PanopticDatasetMapper(cfg, True).augmentations.augs)[:2] == [T.ResizeShortestEdge, T.RandomCrop]
