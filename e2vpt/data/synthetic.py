"""Procedural stand-ins for VTAB's structured tasks, rendered with numpy in about a second.

VTAB's structured group (dSprites location/orientation, CLEVR counting) tests whether a frozen
backbone plus prompts can read geometry rather than texture. The real data are gigabytes; these
tasks keep that character, need no download and are identical on every machine for a given seed:

- `dsprites-loc`: one white sprite (square, ellipse or heart; random scale, rotation and height) on
  black; label = which of 16 equal-width bins the sprite's x centre falls in (VTAB dSprites-loc).
- `dsprites-ori`: one white narrow isosceles "pointer" triangle at a random position and size; label = which
  of 16 bins of 22.5 degrees its apex direction falls in (counter-clockwise from +x, y up). The
  shape is chosen asymmetric so that the orientation is defined over the full 360 degrees, which
  dSprites' squares and ellipses are not.
- `clevr-count`: 3 to 10 non-touching shaded circles, squares and triangles in CLEVR's colours on
  a plain grey background; label = count - 3 (VTAB CLEVR-count), so 8 classes.

Labels are balanced (`arange(n) % K`, shuffled); every other factor is drawn per image.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

SYNTHETIC_TASKS = {
    "dsprites-loc": "dSprites-style sprite; class = x-position bin (16), like VTAB dSprites-loc",
    "dsprites-ori": "asymmetric sprite; class = orientation bin (16 x 22.5 deg), like VTAB dSprites-ori",
    "clevr-count": "3-10 coloured shapes on grey; class = count - 3 (8), like VTAB CLEVR-count",
}
NUM_CLASSES = {"dsprites-loc": 16, "dsprites-ori": 16, "clevr-count": 8}
RENDER_SIZE = {"dsprites-loc": 64, "dsprites-ori": 64, "clevr-count": 80}

# dSprites-loc: sprite half-size (px at 64) and the x range its centre may take.
_LOC_SCALE = (4.0, 7.0)
_LOC_MARGIN = 11.0
# dSprites-ori: pointer length (anchor to apex) and the margin that keeps it inside the canvas.
_ORI_LENGTH = (14.0, 20.0)
_ORI_MARGIN = 21.0
# CLEVR-count: object "radius" (px at 80) and the gap kept between bounding circles.
_CLEVR_RADIUS = (3.5, 6.0)
_CLEVR_GAP = 2.0
_CLEVR_COLORS = np.array([  # CLEVR's palette without its grey, which would vanish on the background
    (173, 35, 35), (42, 75, 215), (29, 105, 20), (129, 74, 25),
    (129, 38, 192), (41, 208, 208), (255, 238, 51),
], dtype=np.float32)
_CLEVR_BACKGROUND = (100, 140)


@dataclass
class SyntheticSet:
    """Rendered images and the factors that produced them (tests check labels against these).

    Attributes:
        images: uint8 `(N, S, S, 3)` at the task's render size.
        labels: int64 `(N,)`.
        factors: per-image generating factors, each an array of length N (e.g. `x`, `y`, `angle`,
            `count`, `shape`); object lists for CLEVR are in `objects`.
    """

    images: np.ndarray
    labels: np.ndarray
    factors: dict[str, np.ndarray] = field(default_factory=dict)
    objects: list = field(default_factory=list)


def _rng(task: str, seed: int) -> np.random.Generator:
    """A generator per (task, seed): tasks never share random streams."""
    return np.random.default_rng([seed, zlib.crc32(task.encode())])


def _balanced_labels(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    return rng.permutation(np.arange(n) % k).astype(np.int64)


def _local_coords(size: int, cx: float, cy: float, half: float):
    """Pixel-centre coordinates of the bounding box around (cx, cy), plus its slices."""
    x0, x1 = max(0, int(np.floor(cx - half))), min(size, int(np.ceil(cx + half)) + 1)
    y0, y1 = max(0, int(np.floor(cy - half))), min(size, int(np.ceil(cy + half)) + 1)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
    return (slice(y0, y1), slice(x0, x1)), xx - cx, yy - cy


def _sprite_mask(shape: int, dx: np.ndarray, dy: np.ndarray, scale: float, angle: float) -> np.ndarray:
    """dSprites shapes as implicit functions: 0 square, 1 ellipse, 2 heart (y up, rotated by angle)."""
    c, s = np.cos(angle), np.sin(angle)
    up = -dy  # image rows grow downwards; shapes are defined with y up
    u = (c * dx + s * up) / scale
    v = (-s * dx + c * up) / scale
    if shape == 0:
        return np.maximum(np.abs(u), np.abs(v)) <= 1.0
    if shape == 1:
        return u ** 2 + (v / 0.6) ** 2 <= 1.0
    u, v = u / 1.15, v / 1.15 + 0.1  # the classic heart curve, centred and sized like the others
    return (u ** 2 + v ** 2 - 1.0) ** 3 - u ** 2 * v ** 3 <= 0.0


def _triangle_mask(dx: np.ndarray, dy: np.ndarray, verts: np.ndarray) -> np.ndarray:
    """Pixels inside a triangle given by 3 (x, y) vertices relative to the same origin as dx, dy."""
    def edge(a, b):
        return (b[0] - a[0]) * (dy - a[1]) - (b[1] - a[1]) * (dx - a[0])
    e0, e1, e2 = edge(verts[0], verts[1]), edge(verts[1], verts[2]), edge(verts[2], verts[0])
    return ((e0 >= 0) & (e1 >= 0) & (e2 >= 0)) | ((e0 <= 0) & (e1 <= 0) & (e2 <= 0))


def _dsprites_loc(n: int, seed: int) -> SyntheticSet:
    size, k = RENDER_SIZE["dsprites-loc"], NUM_CLASSES["dsprites-loc"]
    rng = _rng("dsprites-loc", seed)
    labels = _balanced_labels(rng, n, k)
    width = (size - 2 * _LOC_MARGIN) / k
    xs = _LOC_MARGIN + (labels + rng.uniform(0.0, 1.0, n)) * width
    ys = rng.uniform(_LOC_MARGIN, size - _LOC_MARGIN, n)
    scales = rng.uniform(*_LOC_SCALE, n)
    angles = rng.uniform(0.0, 2 * np.pi, n)
    shapes = rng.integers(0, 3, n)
    images = np.zeros((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        box, dx, dy = _local_coords(size, xs[i], ys[i], 1.5 * scales[i])
        images[i][box][_sprite_mask(int(shapes[i]), dx, dy, scales[i], angles[i])] = 255
    return SyntheticSet(images, labels, {"x": xs, "y": ys, "scale": scales, "angle": angles, "shape": shapes})


def _dsprites_ori(n: int, seed: int) -> SyntheticSet:
    size, k = RENDER_SIZE["dsprites-ori"], NUM_CLASSES["dsprites-ori"]
    rng = _rng("dsprites-ori", seed)
    labels = _balanced_labels(rng, n, k)
    angles = (labels + rng.uniform(0.0, 1.0, n)) * (2 * np.pi / k)
    xs = rng.uniform(_ORI_MARGIN, size - _ORI_MARGIN, n)
    ys = rng.uniform(_ORI_MARGIN, size - _ORI_MARGIN, n)
    lengths = rng.uniform(*_ORI_LENGTH, n)
    images = np.zeros((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        d = np.array([np.cos(angles[i]), -np.sin(angles[i])])  # apex direction in image (x, y-down)
        p = np.array([-d[1], d[0]])
        half_base = 0.3 * lengths[i]  # narrow, so the apex end is unmistakable
        verts = np.stack([lengths[i] * d, half_base * p, -half_base * p])  # base through the anchor
        box, dx, dy = _local_coords(size, xs[i], ys[i], lengths[i] + 1.0)
        images[i][box][_triangle_mask(dx, dy, verts)] = 255
    return SyntheticSet(images, labels, {"x": xs, "y": ys, "length": lengths, "angle": angles})


def _place_objects(rng: np.random.Generator, count: int, size: int):
    """Rejection-sample non-touching objects; shrink and retry when a layout gets too crowded."""
    shrink = 1.0
    while True:
        placed = []  # (x, y, bounding radius, radius, kind)
        for _ in range(count):
            kind = int(rng.integers(0, 3))  # 0 circle, 1 square, 2 triangle
            radius = rng.uniform(*_CLEVR_RADIUS) * shrink
            bound = radius * (1.0, 1.42, 1.3)[kind]  # triangles get a larger circumradius: similar area
            for _try in range(100):
                x, y = rng.uniform(bound + 1, size - bound - 1, 2)
                if all((x - px) ** 2 + (y - py) ** 2 >= (bound + pb + _CLEVR_GAP) ** 2
                       for px, py, pb, _, _ in placed):
                    placed.append((x, y, bound, radius, kind))
                    break
            else:
                break
        if len(placed) == count:
            return placed
        shrink *= 0.9


def _clevr_count(n: int, seed: int) -> SyntheticSet:
    size, k = RENDER_SIZE["clevr-count"], NUM_CLASSES["clevr-count"]
    rng = _rng("clevr-count", seed)
    labels = _balanced_labels(rng, n, k)
    counts = labels + 3
    backgrounds = rng.uniform(*_CLEVR_BACKGROUND, n).astype(np.float32)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    objects = []
    for i in range(n):
        canvas = np.full((size, size, 3), backgrounds[i], dtype=np.float32)
        placed = _place_objects(rng, int(counts[i]), size)
        for x, y, bound, radius, kind in placed:
            box, dx, dy = _local_coords(size, x, y, bound + 1.0)
            if kind == 0:
                mask = dx ** 2 + dy ** 2 <= radius ** 2
            elif kind == 1:
                c, s = np.cos(a := rng.uniform(0, np.pi / 2)), np.sin(a)
                mask = np.maximum(np.abs(c * dx + s * dy), np.abs(-s * dx + c * dy)) <= radius
            else:
                t = rng.uniform(0, 2 * np.pi) + np.array([0, 2 * np.pi / 3, 4 * np.pi / 3])
                mask = _triangle_mask(dx, dy, bound * np.stack([np.cos(t), np.sin(t)], axis=1))
            # Shade towards a highlight at the upper left, so objects look lit rather than flat.
            light = 1.0 - 0.3 * np.clip(np.hypot(dx + 0.3 * radius, dy + 0.3 * radius) / (2 * radius), 0, 1)
            color = _CLEVR_COLORS[rng.integers(0, len(_CLEVR_COLORS))]
            region = canvas[box]
            region[mask] = (light[..., None] * color)[mask]
        images[i] = np.clip(canvas, 0, 255).round().astype(np.uint8)
        objects.append(placed)
    return SyntheticSet(images, labels, {"count": counts, "background": backgrounds}, objects)


_GENERATORS = {"dsprites-loc": _dsprites_loc, "dsprites-ori": _dsprites_ori, "clevr-count": _clevr_count}


def generate(task: str, n: int, seed: int) -> SyntheticSet:
    """Render `n` images of a synthetic task at its native size; identical for identical (task, n, seed)."""
    if task not in _GENERATORS:
        raise KeyError(f"unknown synthetic task {task!r}; known: {sorted(_GENERATORS)}")
    return _GENERATORS[task](n, seed)


def class_names(task: str) -> list[str]:
    """Display names: the x or angle bin for dSprites tasks, the object count for CLEVR."""
    k = NUM_CLASSES[task]
    if task == "dsprites-loc":
        return [f"x bin {i}" for i in range(k)]
    if task == "dsprites-ori":
        return [f"{i * 360 / k:g}-{(i + 1) * 360 / k:g} deg" for i in range(k)]
    return [f"{i + 3} objects" for i in range(k)]
