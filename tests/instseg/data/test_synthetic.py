"""The synthetic dataset: generator (instseg.data.synthetic) and on-disk cache (instseg.data.cache).

No detectron2 needed. Every split is written under a pytest tmp_path (DETECTRON2_DATASETS)."""

import json
import os

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest

from instseg.data import cache, synthetic
from instseg.data.cache import (
    IGNORE_LABEL,
    STUFF_IDS,
    THING_IDS,
    ensure_split,
    load_instances,
    panoptic_categories,
    split_dir,
)
from instseg.data.synthetic import (
    STUFF_CLASSES,
    THING_CLASSES,
    SyntheticSpec,
    mask_to_box,
    render_scene,
    scene_stats,
)

SMALL = SyntheticSpec(num_images=40, height=128, width=128, seed=0)


@pytest.fixture(autouse=True)
def _datasets_root(tmp_path, monkeypatch):
    root = tmp_path / "datasets"
    monkeypatch.setenv("DETECTRON2_DATASETS", str(root))
    return root


@pytest.fixture(scope="module")
def scenes():
    return [render_scene(SMALL, i) for i in range(SMALL.num_images)]


def _tight_box(mask):
    ys, xs = np.nonzero(mask)
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


def _rgb2id(path):
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    assert bgr is not None, path
    rgb = bgr[..., ::-1].astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


# ---------------------------------------------------------------------------------------------
# determinism
# ---------------------------------------------------------------------------------------------
def _assert_same_scene(a, b):
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.stuff, b.stuff)
    assert len(a.instances) == len(b.instances)
    for ia, ib in zip(a.instances, b.instances):
        assert ia.category_id == ib.category_id
        np.testing.assert_array_equal(ia.mask, ib.mask)
        np.testing.assert_array_equal(ia.full_mask, ib.full_mask)


def test_same_spec_and_index_give_identical_scene():
    spec = SyntheticSpec(num_images=4, height=96, width=112, seed=7)
    for idx in range(4):
        a = render_scene(spec, idx)
        # a spec built independently with the same values renders the same scene
        b = render_scene(SyntheticSpec(num_images=4, height=96, width=112, seed=7), idx)
        _assert_same_scene(a, b)
        assert a.image.shape == (96, 112, 3) and a.image.dtype == np.uint8
        assert a.stuff.shape == (96, 112)
        for inst in a.instances:
            assert inst.mask.shape == (96, 112) and inst.mask.dtype == bool


def test_different_seed_or_index_gives_different_image():
    a = render_scene(SyntheticSpec(height=96, width=96, seed=0), 0)
    b = render_scene(SyntheticSpec(height=96, width=96, seed=1), 0)
    c = render_scene(SyntheticSpec(height=96, width=96, seed=0), 1)
    assert not np.array_equal(a.image, b.image)
    assert not np.array_equal(a.image, c.image)
    # the split size does not change the images: image i is a function of (seed, i) only
    d = render_scene(SyntheticSpec(num_images=3, height=96, width=96, seed=0), 0)
    _assert_same_scene(a, d)


def test_spec_key_identifies_the_spec():
    assert SyntheticSpec(seed=3).key() == SyntheticSpec(seed=3).key()
    assert SyntheticSpec(seed=3).key() != SyntheticSpec(seed=4).key()
    assert SyntheticSpec(height=64).key() != SyntheticSpec(height=65).key()
    a, b = SyntheticSpec(seed=3), SyntheticSpec(seed=4)
    assert split_dir("val", a, "/r") != split_dir("val", b, "/r")
    assert split_dir("val", a, "/r") != split_dir("train", a, "/r")


# ---------------------------------------------------------------------------------------------
# masks and boxes
# ---------------------------------------------------------------------------------------------
def test_mask_to_box_is_pixel_edge_xyxy():
    m = np.zeros((10, 12), dtype=bool)
    m[2:5, 3:7] = True  # rows 2..4, cols 3..6
    assert mask_to_box(m) == (3.0, 2.0, 7.0, 5.0)
    m[:] = False
    m[9, 11] = True  # single pixel in the corner: box of size 1x1 ending at the image edge
    assert mask_to_box(m) == (11.0, 9.0, 12.0, 10.0)
    assert mask_to_box(np.zeros((4, 4), dtype=bool)) == (0.0, 0.0, 0.0, 0.0)


def test_bbox_is_tight_box_of_visible_mask(scenes):
    n = 0
    for s in scenes:
        for inst in s.instances:
            n += 1
            assert inst.area > 0
            box = inst.bbox_xyxy
            assert box == _tight_box(inst.mask)
            x0, y0, x1, y1 = (int(v) for v in box)
            assert 0 <= x0 < x1 <= SMALL.width and 0 <= y0 < y1 <= SMALL.height
            crop = inst.mask[y0:y1, x0:x1]
            assert crop.sum() == inst.area  # nothing outside the box
            # tight: every border row/column of the box touches the mask
            assert crop[0].any() and crop[-1].any() and crop[:, 0].any() and crop[:, -1].any()
    assert n > 50


def test_instances_json_rle_decodes_to_the_masks():
    spec = SyntheticSpec(num_images=8, height=96, width=128, seed=2)
    dicts = load_instances("val", spec)
    assert len(dicts) == 8
    n = 0
    for d in dicts:
        scene = render_scene(spec, d["image_id"])
        assert (d["height"], d["width"]) == (96, 128)
        assert len(d["annotations"]) == len(scene.instances)
        for ann, inst in zip(d["annotations"], scene.instances):
            n += 1
            m = mask_util.decode(ann["segmentation"]).astype(bool)
            np.testing.assert_array_equal(m, inst.mask)
            assert ann["bbox_mode"] == 0  # BoxMode.XYXY_ABS
            assert tuple(ann["bbox"]) == mask_to_box(m) == _tight_box(m)
            assert ann["category_id"] == inst.category_id
            assert ann["area"] == int(m.sum())
            assert ann["iscrowd"] == 0
            assert int(mask_util.area(ann["segmentation"])) == ann["area"]
    assert n > 0


# ---------------------------------------------------------------------------------------------
# occlusion
# ---------------------------------------------------------------------------------------------
def test_visible_masks_are_disjoint_and_inside_full_masks(scenes):
    for s in scenes:
        for i, a in enumerate(s.instances):
            assert not (a.mask & ~a.full_mask).any(), "visible part outside the full mask"
            assert a.area >= SMALL.min_visible_area
            for b in s.instances[i + 1 :]:
                # b is painted after a (in front): no pixel is visible in both, and b's whole shape
                # is removed from a
                assert not (a.mask & b.mask).any()
                assert not (a.mask & b.full_mask).any()


def test_occluded_instances_exist(scenes):
    stats = scene_stats(scenes)
    occluded = [inst for s in scenes for inst in s.instances if inst.area < int(inst.full_mask.sum())]
    assert stats["occluded_instances"] == len(occluded)
    assert len(occluded) >= 10
    assert stats["instances"] == sum(len(s.instances) for s in scenes)


def test_visible_is_full_minus_later_full_masks():
    # With min_visible_area=1 an instance is dropped only when a later instance covers it entirely, so
    # the kept instances alone describe the occlusion exactly.
    spec = SyntheticSpec(num_images=20, height=128, width=128, seed=3, min_visible_area=1)
    n_occluded = 0
    for idx in range(spec.num_images):
        s = render_scene(spec, idx)
        front = np.zeros((spec.height, spec.width), dtype=bool)
        for inst in reversed(s.instances):
            np.testing.assert_array_equal(inst.mask, inst.full_mask & ~front)
            n_occluded += int(inst.area < inst.full_mask.sum())
            front |= inst.full_mask
    assert n_occluded > 0


def test_image_pixels_of_a_visible_mask_are_painted_by_that_instance(monkeypatch):
    """Replace the textures by flat colours (the generator's random draws are kept, so the geometry is
    unchanged): each pixel then shows the colour of the instance that painted it last."""
    spec = SyntheticSpec(num_images=12, height=96, width=96, seed=5, max_instances=8)
    orig_thing, orig_stuff = synthetic._thing_texture, synthetic._stuff_texture
    calls = []  # (box of the painted shape, colour), in painting order

    def flat_stuff(rng, kind, h, w):
        orig_stuff(rng, kind, h, w)
        return np.zeros((h, w, 3), dtype=np.float32)

    def flat_thing(rng, h, w, y0=0, x0=0, under=None):
        orig_thing(rng, h, w, y0, x0, under)  # same random draws as the real texture
        k = len(calls)
        colour = np.array([15 + 30 * k, 200, 100], dtype=np.float32)
        calls.append(((float(x0), float(y0), float(x0 + w), float(y0 + h)), colour))
        return np.broadcast_to(colour, (h, w, 3)).copy()

    monkeypatch.setattr(synthetic, "_stuff_texture", flat_stuff)
    monkeypatch.setattr(synthetic, "_thing_texture", flat_thing)
    checked = 0
    for idx in range(spec.num_images):
        calls.clear()
        s = render_scene(spec, idx)
        assert len(calls) >= len(s.instances) and len(calls) <= spec.max_instances
        # match kept instances (back to front) to painting calls (back to front) by the full-mask box
        j = 0
        img = s.image.astype(np.int32)
        for inst in s.instances:
            while calls[j][0] != mask_to_box(inst.full_mask):
                j += 1
            colour = calls[j][1].astype(np.int32)
            j += 1
            px = img[inst.mask]  # (n, 3)
            # global noise has sigma 4: the median is exact to a few units, almost all pixels within 4 sigma
            assert np.abs(np.median(px, axis=0) - colour).max() <= 3
            assert (np.abs(px - colour).max(axis=1) <= 16).mean() >= 0.99
            checked += 1
        # background: no instance painted there
        union = np.zeros(s.stuff.shape, dtype=bool)
        for inst in s.instances:
            union |= inst.full_mask
        bg = img[~union]
        assert (bg[:, 1] <= 16).mean() >= 0.99  # stuff is flat black here, instances have G=200
    assert checked > 20


# ---------------------------------------------------------------------------------------------
# categories and counts
# ---------------------------------------------------------------------------------------------
def test_categories_in_range_and_all_classes_appear(scenes):
    assert len(THING_CLASSES) == 5 and len(STUFF_CLASSES) == 3
    seen = set()
    for s in scenes:
        assert len(s.instances) <= SMALL.max_instances
        for inst in s.instances:
            assert 0 <= inst.category_id < len(THING_CLASSES)
            seen.add(inst.category_id)
        assert s.stuff.min() >= 0 and s.stuff.max() < len(STUFF_CLASSES)
    assert seen == set(range(len(THING_CLASSES)))
    stats = scene_stats(scenes)
    assert all(stats[f"class_{c}"] > 0 for c in THING_CLASSES)
    assert sum(stats[f"class_{c}"] for c in THING_CLASSES) == stats["instances"]
    assert stats["images"] == len(scenes)
    assert 0 < stats["empty_images"] < len(scenes)  # default empty_prob=0.06 over 40 images


def test_every_stuff_class_appears(scenes):
    seen = set()
    for s in scenes:
        seen |= set(np.unique(s.stuff).tolist())
    assert seen == {0, 1, 2}


def test_max_instances_is_honoured():
    spec = SyntheticSpec(num_images=20, height=64, width=64, seed=1, max_instances=2, empty_prob=0.0)
    counts = [len(render_scene(spec, i).instances) for i in range(spec.num_images)]
    assert max(counts) <= 2
    assert max(counts) == 2


def test_max_instances_zero_gives_no_instances():
    spec = SyntheticSpec(num_images=8, height=64, width=64, seed=1, max_instances=0)
    stats = scene_stats([render_scene(spec, i) for i in range(spec.num_images)])
    assert stats["instances"] == 0 and stats["empty_images"] == 8


def test_empty_prob_one_gives_only_empty_images():
    spec = SyntheticSpec(num_images=8, height=64, width=64, seed=1, empty_prob=1.0)
    for i in range(spec.num_images):
        assert render_scene(spec, i).instances == []


def test_num_images_is_honoured_by_the_cache(tmp_path):
    spec = SyntheticSpec(num_images=5, height=64, width=80, seed=4)
    dicts = load_instances("train", spec)
    assert [d["image_id"] for d in dicts] == list(range(5))
    path = split_dir("train", spec)
    assert path.startswith(str(tmp_path))  # DETECTRON2_DATASETS is used
    assert len(os.listdir(os.path.join(path, "images"))) == 5
    assert len(os.listdir(os.path.join(path, "panoptic"))) == 5
    assert len(os.listdir(os.path.join(path, "sem_seg"))) == 5
    for d in dicts:
        assert os.path.isabs(d["file_name"]) and os.path.isfile(d["file_name"])
        assert os.path.isabs(d["sem_seg_file_name"]) and os.path.isfile(d["sem_seg_file_name"])
        img = cv2.imread(d["file_name"], cv2.IMREAD_COLOR)
        assert img.shape == (64, 80, 3) == (d["height"], d["width"], 3)
        # the PNG is lossless: exactly the rendered (BGR) image
        np.testing.assert_array_equal(img, render_scene(spec, d["image_id"]).image)
    # an empty split is fine too
    assert load_instances("train", SyntheticSpec(num_images=0, height=64, width=64)) == []


def test_cache_is_reused_and_keyed_by_spec():
    spec = SyntheticSpec(num_images=2, height=64, width=64, seed=9)
    path = ensure_split("val", spec)
    stamp = os.path.getmtime(os.path.join(path, "instances.json"))
    assert ensure_split("val", spec) == path
    assert os.path.getmtime(os.path.join(path, "instances.json")) == stamp
    other = ensure_split("val", SyntheticSpec(num_images=3, height=64, width=64, seed=9))
    assert other != path
    assert len(load_instances("val", SyntheticSpec(num_images=3, height=64, width=64, seed=9))) == 3
    # no temporary folder is left behind
    assert sorted(os.listdir(os.path.dirname(path))) == sorted([os.path.basename(path), os.path.basename(other)])


def test_small_objects_exist(scenes):
    areas = np.array([inst.area for s in scenes for inst in s.instances])
    assert (areas < 32 * 32).sum() >= 10
    # at the default size some objects are small and some are not (COCO's small/medium split)
    spec = SyntheticSpec(num_images=10, height=256, width=256, seed=0)
    big = [inst.area for i in range(spec.num_images) for inst in render_scene(spec, i).instances]
    assert min(big) < 32 * 32 <= max(big)


def test_unoccluded_rings_have_a_hole(scenes):
    rings = 0
    for s in scenes:
        h, w = s.stuff.shape
        for inst in s.instances:
            if inst.category_id != THING_CLASSES.index("ring"):
                continue
            if not np.array_equal(inst.mask, inst.full_mask):
                continue  # occluded: the hole may be covered
            x0, y0, x1, y1 = inst.bbox_xyxy
            if x0 == 0 or y0 == 0 or x1 == w or y1 == h:
                continue  # cut by the image border: the hole may open onto it
            _, hier = cv2.findContours(inst.mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
            assert (hier[0][:, 3] != -1).any(), "an unoccluded ring has no hole"
            rings += 1
    assert rings >= 3


# ---------------------------------------------------------------------------------------------
# bad specs
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_images": -1}, "num_images"),
        ({"height": 16}, "at least 32x32"),
        ({"width": 8}, "at least 32x32"),
        ({"max_instances": -2}, "max_instances"),
        ({"empty_prob": 1.5}, "empty_prob"),
        ({"small_prob": -0.1}, "small_prob"),
        ({"huddle_prob": 2.0}, "huddle_prob"),
        ({"min_visible_area": 0}, "min_visible_area"),
        ({"min_visible_area": -5}, "min_visible_area"),
    ],
)
def test_bad_spec_values_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SyntheticSpec(**kwargs)


def test_boundary_spec_values_are_accepted():
    SyntheticSpec(
        num_images=0,
        height=32,
        width=32,
        max_instances=0,
        empty_prob=0.0,
        small_prob=1.0,
        huddle_prob=1.0,
        min_visible_area=1,
    )


# ---------------------------------------------------------------------------------------------
# panoptic and semantic PNGs
# ---------------------------------------------------------------------------------------------
def test_panoptic_png_and_json_describe_the_scene():
    spec = SyntheticSpec(num_images=10, height=96, width=112, seed=6)
    path = ensure_split("val", spec)
    with open(os.path.join(path, "panoptic.json")) as f:
        pan = json.load(f)
    assert pan["categories"] == panoptic_categories()
    cats = {c["id"]: c for c in pan["categories"]}
    assert [cats[i]["name"] for i in THING_IDS] == THING_CLASSES
    assert [cats[i]["name"] for i in STUFF_IDS] == STUFF_CLASSES
    assert all(cats[i]["isthing"] == 1 for i in THING_IDS)
    assert all(cats[i]["isthing"] == 0 for i in STUFF_IDS)
    assert [im["id"] for im in pan["images"]] == list(range(10))
    assert [a["image_id"] for a in pan["annotations"]] == list(range(10))

    n_things = 0
    for im, ann in zip(pan["images"], pan["annotations"]):
        assert (im["height"], im["width"]) == (96, 112)
        assert os.path.isfile(os.path.join(path, "images", im["file_name"]))
        scene = render_scene(spec, ann["image_id"])
        ids = _rgb2id(os.path.join(path, "panoptic", ann["file_name"]))
        assert ids.shape == (96, 112)
        segs = ann["segments_info"]
        seg_ids = [s["id"] for s in segs]
        assert len(set(seg_ids)) == len(seg_ids), "segment ids not unique"
        assert 0 not in seg_ids
        # every pixel belongs to exactly one listed segment: the label map only holds listed ids and
        # the areas add up to the image
        assert set(np.unique(ids).tolist()) == set(seg_ids)
        assert sum(s["area"] for s in segs) == 96 * 112
        for s in segs:
            m = ids == s["id"]
            assert s["area"] == int(m.sum()) > 0
            ys, xs = np.nonzero(m)
            assert s["bbox"] == [
                int(xs.min()),
                int(ys.min()),
                int(xs.max() - xs.min() + 1),
                int(ys.max() - ys.min() + 1),
            ]
            assert s["iscrowd"] == 0

        things = [s for s in segs if s["category_id"] in THING_IDS]
        stuff = [s for s in segs if s["category_id"] in STUFF_IDS]
        assert len(things) + len(stuff) == len(segs)
        # thing segments are the visible instance masks, in order
        assert len(things) == len(scene.instances)
        thing_union = np.zeros(ids.shape, dtype=bool)
        for s, inst in zip(things, scene.instances):
            np.testing.assert_array_equal(ids == s["id"], inst.mask)
            assert s["category_id"] == THING_IDS[inst.category_id]
            thing_union |= inst.mask
            n_things += 1
        # stuff segments: one per stuff class present, the stuff region not covered by a visible thing
        assert len({s["category_id"] for s in stuff}) == len(stuff)
        for s in stuff:
            k = STUFF_IDS.index(s["category_id"])
            np.testing.assert_array_equal(ids == s["id"], (scene.stuff == k) & ~thing_union)

        # semantic PNG agrees with the panoptic labels (contiguous ids: things, then stuff)
        sem = cv2.imread(
            os.path.join(path, "sem_seg", os.path.splitext(ann["file_name"])[0] + ".png"), cv2.IMREAD_UNCHANGED
        )
        assert sem.shape == (96, 112) and sem.dtype == np.uint8
        assert not (sem == IGNORE_LABEL).any()  # every pixel is labelled
        for s in segs:
            contiguous = (THING_IDS + STUFF_IDS).index(s["category_id"])
            assert (sem[ids == s["id"]] == contiguous).all()
    assert n_things > 0


def test_panoptic_of_an_empty_image_is_stuff_only():
    spec = SyntheticSpec(num_images=2, height=64, width=64, seed=0, empty_prob=1.0)
    path = ensure_split("val", spec)
    with open(os.path.join(path, "panoptic.json")) as f:
        pan = json.load(f)
    for ann in pan["annotations"]:
        assert all(s["category_id"] in STUFF_IDS for s in ann["segments_info"])
        ids = _rgb2id(os.path.join(path, "panoptic", ann["file_name"]))
        assert set(np.unique(ids).tolist()) == {s["id"] for s in ann["segments_info"]}
    for d in load_instances("val", spec):
        assert d["annotations"] == []


def test_id2rgb_round_trips():
    ids = np.array([[0, 1, 255], [256, 1000 + 2, 256 * 256 + 7]], dtype=np.int64)
    rgb = cache.id2rgb(ids).astype(np.int64)
    np.testing.assert_array_equal(rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2], ids)
