"""The embedded default dataset: synthetic scenes of huddled, occluding instances on textured stuff.

Every image is a pure function of ``(seed, index)`` and the :class:`SyntheticSpec`, so a split is
reproducible bit for bit and can be cached on disk. A scene has

* three *stuff* regions (``sky``, ``wall``, ``ground``) separated by wavy boundaries, each with its
  own texture: they cover the background (used by the panoptic variant);
* zero or more *thing* instances of five geometries that the papers care about: a convex ``disc``, a
  concave ``star``, a thin ``bar``, a ``ring`` with a hole and a rotated ``rect``. Instances are painted
  back to front, often in clusters ("huddled"), so later ones occlude earlier ones; each instance's
  mask is its *visible* part, and the background shows through a ring's hole. Some instances are
  small, some images have no instance at all.

Colours are drawn independently of the class, so the class is carried by geometry only.
"""

import dataclasses
import hashlib
import json
from typing import Dict, List, Tuple

import cv2
import numpy as np

THING_CLASSES = ["disc", "star", "bar", "ring", "rect"]
STUFF_CLASSES = ["sky", "wall", "ground"]

# Version of the generator: part of the cache key, bump it whenever the output of `render_scene` changes.
GENERATOR_VERSION = 6


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
    """What a synthetic split looks like. All fields enter the cache key."""

    num_images: int = 1000
    height: int = 256
    width: int = 256
    seed: int = 0
    max_instances: int = 8
    # Probability that an image has no instance at all.
    empty_prob: float = 0.06
    # Probability that an instance is small (radius 6–12 px at 256 px: COCO 'small', area < 32²).
    small_prob: float = 0.2
    # Probability that an instance is placed next to an earlier one (huddled / occluding).
    huddle_prob: float = 0.6
    # Instances whose visible part is smaller than this many pixels are dropped (fully occluded).
    min_visible_area: int = 12

    def __post_init__(self):
        if self.num_images < 0:
            raise ValueError(f"SyntheticSpec.num_images must be >= 0, got {self.num_images}")
        if self.height < 32 or self.width < 32:
            raise ValueError(f"SyntheticSpec image size must be at least 32x32, got {self.height}x{self.width}")
        if self.max_instances < 0:
            raise ValueError(f"SyntheticSpec.max_instances must be >= 0, got {self.max_instances}")
        if self.min_visible_area < 1:
            # 0 would keep fully occluded instances: empty masks with zero-area boxes
            raise ValueError(f"SyntheticSpec.min_visible_area must be >= 1, got {self.min_visible_area}")
        for name in ("empty_prob", "small_prob", "huddle_prob"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"SyntheticSpec.{name} must be in [0, 1], got {v}")

    def key(self) -> str:
        blob = json.dumps({**dataclasses.asdict(self), "version": GENERATOR_VERSION}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:10]


@dataclasses.dataclass
class SyntheticInstance:
    category_id: int  # contiguous thing id, index into THING_CLASSES
    mask: np.ndarray  # (H, W) bool, the visible part
    full_mask: np.ndarray  # (H, W) bool, before occlusion

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    @property
    def bbox_xyxy(self) -> Tuple[float, float, float, float]:
        """Tight box of the visible mask in pixel-edge coordinates (XYXY_ABS)."""
        return mask_to_box(self.mask)


@dataclasses.dataclass
class SyntheticScene:
    image: np.ndarray  # (H, W, 3) uint8, BGR as detectron2 reads images
    stuff: np.ndarray  # (H, W) int64, index into STUFF_CLASSES for every pixel
    instances: List[SyntheticInstance]


def mask_to_box(mask: np.ndarray) -> Tuple[float, float, float, float]:
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    if len(xs) == 0:
        return (0.0, 0.0, 0.0, 0.0)
    return (float(xs[0]), float(ys[0]), float(xs[-1] + 1), float(ys[-1] + 1))


# ---------------------------------------------------------------------------------------------
# textures
# ---------------------------------------------------------------------------------------------
def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a random grid upsampled bicubically."""
    grid = rng.random((cells + 1, cells + 1)).astype(np.float32)
    return np.clip(cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC), 0.0, 1.0)


def _stuff_texture(rng: np.random.Generator, kind: int, h: int, w: int) -> np.ndarray:
    """An (h, w, 3) float texture for one stuff class."""
    base = rng.uniform(40, 215, size=3).astype(np.float32)
    yy, xx = np.ogrid[0:h, 0:w]
    yy, xx = yy.astype(np.float32), xx.astype(np.float32)
    if kind == 0:  # sky: vertical gradient plus soft clouds
        t = (yy / h)[..., None] * rng.uniform(-60, 60, size=3).astype(np.float32)
        t = t + 25 * _smooth_noise(rng, h, w, 3)[..., None]
    elif kind == 1:  # wall: brick lines
        period = int(rng.integers(10, 20))
        rows = (yy % period) < 2
        offset = ((yy // period) % 2) * period
        cols = ((xx + offset) % (2 * period)) < 2
        t = -20 * (rows | cols).astype(np.float32)[..., None] + 10 * _smooth_noise(rng, h, w, 8)[..., None]
    else:  # ground: grainy noise
        grain = rng.random((h, w), dtype=np.float32) - 0.5
        t = (25 * grain + 30 * _smooth_noise(rng, h, w, 6))[..., None]
    return base + t


# Minimum distance (L2 over BGR) between an instance's base colour and the mean colour under it, so that
# every instance is visible against what it covers (colours stay independent of the class).
MIN_CONTRAST = 90.0


def _thing_texture(
    rng: np.random.Generator, h: int, w: int, y0: int = 0, x0: int = 0, under: np.ndarray = None
) -> np.ndarray:
    """An (h, w, 3) striped texture of one instance; (y0, x0) is its offset in the image and ``under``
    the mean colour of what it covers (the base colour is moved away from it if they are too close)."""
    base = rng.uniform(0, 255, size=3).astype(np.float32)
    if under is not None and np.linalg.norm(base - under) < MIN_CONTRAST:
        base = np.where(under > 127, under - 110, under + 110).astype(np.float32)
    yy, xx = np.ogrid[y0 : y0 + h, x0 : x0 + w]
    angle = rng.uniform(0, np.pi)
    freq = rng.uniform(0.3, 0.9)
    stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * freq).astype(np.float32)
    return base + np.float32(rng.uniform(5, 30)) * stripes[..., None]


# ---------------------------------------------------------------------------------------------
# shapes: each returns a full-resolution bool mask of one instance
# ---------------------------------------------------------------------------------------------
def _draw(h: int, w: int, fn) -> np.ndarray:
    canvas = np.zeros((h, w), dtype=np.uint8)
    fn(canvas)
    return canvas.astype(bool)


SHIFT = 4  # cv2 fixed-point bits: sub-pixel shapes
_S = float(1 << SHIFT)


def _pts(points: np.ndarray) -> np.ndarray:
    return np.round(points * _S).astype(np.int32).reshape(-1, 1, 2)


def _shape_mask(rng: np.random.Generator, cls: int, cx: float, cy: float, r: float, h: int, w: int) -> np.ndarray:
    theta = rng.uniform(0, 2 * np.pi)
    if cls == 0:  # disc: a convex ellipse
        ax = (r, r * rng.uniform(0.7, 1.0))
        return _draw(
            h,
            w,
            lambda c: cv2.ellipse(
                c,
                (int(cx * _S), int(cy * _S)),
                (int(ax[0] * _S), int(ax[1] * _S)),
                np.degrees(theta),
                0,
                360,
                1,
                -1,
                cv2.LINE_8,
                SHIFT,
            ),
        )
    if cls == 1:  # star: concave polygon
        n = int(rng.integers(5, 8))
        inner = rng.uniform(0.38, 0.55)
        ang = theta + np.arange(2 * n) * np.pi / n
        rad = np.where(np.arange(2 * n) % 2 == 0, r, r * inner)
        pts = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], axis=1)
        return _draw(h, w, lambda c: cv2.fillPoly(c, [_pts(pts)], 1, cv2.LINE_8, SHIFT))
    if cls == 2:  # bar: thin, long rotated rectangle
        length = 2.0 * r * rng.uniform(1.2, 1.8)
        thick = rng.uniform(5.0, 8.0) * max(1.0, r / 30.0)
        return _rotated_rect(cx, cy, length, thick, theta, h, w)
    if cls == 3:  # ring: ellipse with a hole
        ratio = rng.uniform(0.8, 1.0)
        hole = rng.uniform(0.45, 0.6)
        outer = _draw(
            h,
            w,
            lambda c: cv2.ellipse(
                c,
                (int(cx * _S), int(cy * _S)),
                (int(r * _S), int(r * ratio * _S)),
                np.degrees(theta),
                0,
                360,
                1,
                -1,
                cv2.LINE_8,
                SHIFT,
            ),
        )
        inner = _draw(
            h,
            w,
            lambda c: cv2.ellipse(
                c,
                (int(cx * _S), int(cy * _S)),
                (int(r * hole * _S), int(r * ratio * hole * _S)),
                np.degrees(theta),
                0,
                360,
                1,
                -1,
                cv2.LINE_8,
                SHIFT,
            ),
        )
        return outer & ~inner
    # rect: rotated rectangle of moderate aspect ratio
    aspect = rng.uniform(0.45, 0.8)
    return _rotated_rect(cx, cy, 2 * r, 2 * r * aspect, theta, h, w)


def _rotated_rect(cx, cy, length, thick, theta, h, w) -> np.ndarray:
    d = np.array([np.cos(theta), np.sin(theta)])
    n = np.array([-d[1], d[0]])
    c = np.array([cx, cy])
    pts = np.stack(
        [
            c + d * length / 2 + n * thick / 2,
            c - d * length / 2 + n * thick / 2,
            c - d * length / 2 - n * thick / 2,
            c + d * length / 2 - n * thick / 2,
        ]
    )
    return _draw(h, w, lambda cv: cv2.fillPoly(cv, [_pts(pts)], 1, cv2.LINE_8, SHIFT))


# ---------------------------------------------------------------------------------------------
# scenes
# ---------------------------------------------------------------------------------------------
def _stuff_layout(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Three bands (sky above wall above ground) with wavy boundaries; band widths vary per image."""
    xs = np.arange(w, dtype=np.float32)
    y1 = h * rng.uniform(0.15, 0.45) + rng.uniform(2, 10) * np.sin(xs * rng.uniform(0.02, 0.08) + rng.uniform(0, 6))
    y2 = h * rng.uniform(0.55, 0.85) + rng.uniform(2, 10) * np.sin(xs * rng.uniform(0.02, 0.08) + rng.uniform(0, 6))
    yy = np.arange(h, dtype=np.float32)[:, None]
    stuff = np.full((h, w), 2, dtype=np.int64)
    stuff[yy < y2[None, :]] = 1
    stuff[yy < y1[None, :]] = 0
    return stuff


def render_scene(spec: SyntheticSpec, index: int) -> SyntheticScene:
    """Render image ``index`` of the split described by ``spec`` (pure function of both)."""
    rng = np.random.default_rng([spec.seed, index, GENERATOR_VERSION])
    h, w = spec.height, spec.width
    scale = min(h, w) / 256.0

    stuff = _stuff_layout(rng, h, w)
    image = _stuff_texture(rng, 0, h, w)
    for k in range(1, len(STUFF_CLASSES)):
        image = np.where((stuff == k)[..., None], _stuff_texture(rng, k, h, w), image)

    if spec.max_instances == 0 or rng.random() < spec.empty_prob:
        n = 0
    else:
        n = int(rng.integers(1, spec.max_instances + 1))

    full_masks: List[np.ndarray] = []
    classes: List[int] = []
    centers: List[Tuple[float, float, float]] = []
    for _ in range(n):
        cls = int(rng.integers(0, len(THING_CLASSES)))
        small = rng.random() < spec.small_prob
        r = (rng.uniform(6, 12) if small else rng.uniform(14, 42)) * scale
        if cls == 2:  # bars are thin, make them long enough to be seen
            r = max(r, 8 * scale)
        if centers and rng.random() < spec.huddle_prob:
            # huddle: next to a previous instance, overlapping it partly
            px, py, pr = centers[int(rng.integers(0, len(centers)))]
            ang = rng.uniform(0, 2 * np.pi)
            dist = rng.uniform(0.4, 1.1) * (pr + r)
            cx, cy = px + dist * np.cos(ang), py + dist * np.sin(ang)
        else:
            cx, cy = rng.uniform(0.05, 0.95) * w, rng.uniform(0.05, 0.95) * h
        cx, cy = float(np.clip(cx, 0, w - 1)), float(np.clip(cy, 0, h - 1))
        m = _shape_mask(rng, cls, cx, cy, r, h, w)
        if not m.any():
            continue
        x0, y0, x1, y1 = (int(v) for v in mask_to_box(m))
        crop = m[y0:y1, x0:x1]
        under = image[y0:y1, x0:x1][crop].mean(axis=0)
        tex = _thing_texture(rng, y1 - y0, x1 - x0, y0, x0, under)
        image[y0:y1, x0:x1][crop] = tex[crop]
        full_masks.append(m)
        classes.append(cls)
        centers.append((cx, cy, r))

    # visible masks: what later (front) instances leave uncovered
    instances: List[SyntheticInstance] = []
    covered = np.zeros((h, w), dtype=bool)
    for m, cls in zip(reversed(full_masks), reversed(classes)):
        visible = m & ~covered
        covered |= m
        if visible.sum() >= spec.min_visible_area:
            instances.append(SyntheticInstance(category_id=cls, mask=visible, full_mask=m))
    instances.reverse()  # back to front, as painted

    # mild global noise so flat regions are not perfectly flat
    image += 4.0 * rng.standard_normal(size=image.shape, dtype=np.float32)
    image = np.clip(image, 0, 255).astype(np.uint8)
    return SyntheticScene(image=image, stuff=stuff, instances=instances)


def scene_stats(scenes) -> Dict[str, float]:
    """Counts that describe a set of scenes (used by tests and the dataset README table)."""
    n_inst = [len(s.instances) for s in scenes]
    per_class = np.zeros(len(THING_CLASSES), dtype=np.int64)
    occluded = 0
    for s in scenes:
        for inst in s.instances:
            per_class[inst.category_id] += 1
            occluded += int(inst.area < inst.full_mask.sum())
    return {
        "images": len(n_inst),
        "empty_images": int(sum(1 for k in n_inst if k == 0)),
        "instances": int(sum(n_inst)),
        "occluded_instances": occluded,
        **{f"class_{c}": int(per_class[i]) for i, c in enumerate(THING_CLASSES)},
    }
