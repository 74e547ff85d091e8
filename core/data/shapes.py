"""`shapes`: the procedural default data set. Deterministic by seed, generated in seconds, cached.

Each image holds one large *target* object whose (shape, colour) pair is the class, 2-4 smaller
distractor objects drawn from the same shapes and colours, and a textured background, so global
averaging is misled by clutter and attention has something to learn. Train and test classes are
disjoint combinations: class (s, c) is a train class when (s + c) is even, so every shape and
every colour occurs on both sides and test classes are unseen *combinations*.

Every image keeps its target mask, box and attributes, and a mask of its distractors
(`ShapesData.annotation(i)`), so explanations can be scored against ground truth: on the object,
on the clutter, or on the background.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from core.io import atomic_write

SHAPES = ["circle", "square", "triangle", "diamond", "star", "cross", "hexagon", "ring"]
COLOURS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 215, 40),
    "magenta": (210, 50, 200), "cyan": (40, 200, 210), "orange": (245, 140, 30), "white": (245, 245, 245),
}
COLOUR_NAMES = list(COLOURS)


@dataclass(frozen=True)
class ShapesSpec:
    image_size: int = 64
    train_per_class: int = 40
    test_per_class: int = 30
    n_shapes: int = 8
    n_colours: int = 8
    distractors: tuple[int, int] = (2, 4)
    seed: int = 0

    def key(self) -> str:
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def class_id(shape: int, colour: int, n_colours: int = 8) -> int:
    return shape * n_colours + colour


def is_train_class(shape: int, colour: int) -> bool:
    return (shape + colour) % 2 == 0


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    def ring(n, rad, offset=0.0):
        return [(cx + rad * math.cos(angle + offset + 2 * math.pi * k / n),
                 cy + rad * math.sin(angle + offset + 2 * math.pi * k / n)) for k in range(n)]
    if shape == "square":
        return ring(4, r, math.pi / 4)
    if shape == "triangle":
        return ring(3, r, -math.pi / 2)
    if shape == "diamond":
        return [(cx, cy - r), (cx + 0.6 * r, cy), (cx, cy + r), (cx - 0.6 * r, cy)]
    if shape == "hexagon":
        return ring(6, r)
    if shape == "star":
        outer, inner = ring(5, r, -math.pi / 2), ring(5, 0.45 * r, -math.pi / 2 + math.pi / 5)
        return [p for pair in zip(outer, inner) for p in pair]
    if shape == "cross":
        w = 0.35 * r
        pts = [(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w), (-r, -w), (-w, -w)]
        c, s = math.cos(angle), math.sin(angle)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]
    raise ValueError(shape)


def _draw(draw: ImageDraw.ImageDraw, shape: str, cx, cy, r, angle, fill) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fill, width=max(2, int(0.45 * r)))
    else:
        draw.polygon(_polygon(shape, cx, cy, r, angle), fill=fill)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Low-contrast texture: a random grey level, oriented stripes and pixel noise."""
    base = rng.uniform(60, 140)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    theta, freq = rng.uniform(0, np.pi), rng.uniform(0.15, 0.6)
    stripes = 18 * np.sin(freq * (xx * np.cos(theta) + yy * np.sin(theta)))
    tint = rng.uniform(-15, 15, size=3)
    noise = rng.normal(0, 10, size=(size, size, 3))
    img = base + stripes[..., None] + tint + noise
    return np.clip(img, 0, 255).astype(np.uint8)


def render(rng: np.random.Generator, shape: int, colour: int, spec: ShapesSpec):
    """One image of class (shape, colour): returns uint8 HxWx3 image, bool HxW target mask, box, bool HxW
    mask of the distractors' visible pixels (none under the target)."""
    size = spec.image_size
    img = Image.fromarray(_background(rng, size))
    draw = ImageDraw.Draw(img)
    # target: large, placed so it never leaves the frame
    r = rng.uniform(0.2, 0.28) * size
    cx, cy = rng.uniform(r + 1, size - r - 1, size=2)
    angle = rng.uniform(0, 2 * math.pi)
    # distractors first so none occludes the target; kept away from its centre
    n_distractors = rng.integers(spec.distractors[0], spec.distractors[1] + 1)
    clutter = Image.new("L", (size, size), 0)   # drawn beside the image: the random stream is unchanged
    for _ in range(n_distractors):
        for _attempt in range(20):
            dr = rng.uniform(0.08, 0.13) * size
            dx, dy = rng.uniform(dr, size - dr, size=2)
            if math.hypot(dx - cx, dy - cy) > r + dr * 0.5:
                break
        ds, dc = rng.integers(spec.n_shapes), rng.integers(spec.n_colours)
        angle_d = rng.uniform(0, 2 * math.pi)
        _draw(draw, SHAPES[ds], dx, dy, dr, angle_d, COLOURS[COLOUR_NAMES[dc]])
        _draw(ImageDraw.Draw(clutter), SHAPES[ds], dx, dy, dr, angle_d, 255)
    _draw(draw, SHAPES[shape], cx, cy, r, angle, COLOURS[COLOUR_NAMES[colour]])
    mask_img = Image.new("L", (size, size), 0)
    _draw(ImageDraw.Draw(mask_img), SHAPES[shape], cx, cy, r, angle, 255)
    mask = np.asarray(mask_img) > 127
    ys, xs = np.nonzero(mask)
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    return np.asarray(img), mask, box, (np.asarray(clutter) > 127) & ~mask


@dataclass
class ShapesData:
    """All images of one split in memory (uint8), with labels and ground-truth annotations."""
    images: np.ndarray      # N×H×W×3 uint8
    labels: np.ndarray      # N int64, global class id = shape * n_colours + colour
    masks: np.ndarray       # N×H×W bool, target object
    boxes: np.ndarray       # N×4 int (x0, y0, x1, y1)
    n_colours: int          # the spec's: labels are decoded as they were encoded (class_id)
    distractors: np.ndarray  # N×H×W bool, every distractor's visible pixels

    def annotation(self, index: int) -> dict:
        label = int(self.labels[index])
        shape, colour = divmod(label, self.n_colours)
        return {"mask": self.masks[index], "distractors": self.distractors[index],
                "box": tuple(int(v) for v in self.boxes[index]),
                "shape": SHAPES[shape], "colour": COLOUR_NAMES[colour], "class_name": f"{COLOUR_NAMES[colour]} {SHAPES[shape]}"}


def generate(spec: ShapesSpec, split: str) -> ShapesData:
    if split not in ("train", "test"):
        raise ValueError(f"shapes split must be 'train' or 'test', got {split!r}")
    per_class = spec.train_per_class if split == "train" else spec.test_per_class
    # one independent stream per split so changing one count never reshuffles the other split
    rng = np.random.default_rng([spec.seed, 0 if split == "train" else 1])
    images, labels, masks, boxes, clutter = [], [], [], [], []
    for s in range(spec.n_shapes):
        for c in range(spec.n_colours):
            if is_train_class(s, c) != (split == "train"):
                continue
            for _ in range(per_class):
                img, mask, box, distractors = render(rng, s, c, spec)
                images.append(img); masks.append(mask); boxes.append(box); clutter.append(distractors)
                labels.append(class_id(s, c, spec.n_colours))
    return ShapesData(np.stack(images), np.asarray(labels, dtype=np.int64), np.stack(masks), np.asarray(boxes),
                      spec.n_colours, np.stack(clutter))


def cache_dir() -> Path:
    return Path(os.environ.get("METRICLENS_CACHE", Path(__file__).resolve().parents[2] / ".cache"))


def load(spec: ShapesSpec, split: str) -> ShapesData:
    """Generate once and cache as .npz (atomic write); later calls read the cache."""
    path = cache_dir() / "shapes" / f"{spec.key()}_{split}.npz"
    if path.exists():
        try:
            with np.load(path) as z:
                return ShapesData(z["images"], z["labels"], z["masks"], z["boxes"], spec.n_colours, z["distractors"])
        except Exception:  # a damaged cache (or one from before a field was added) is regenerated, never trusted
            path.unlink(missing_ok=True)
    data = generate(spec, split)

    def write(tmp):
        with open(tmp, "wb") as fh:  # a file object: np.savez would append ".npz" to a bare name
            np.savez_compressed(fh, images=data.images, labels=data.labels, masks=data.masks, boxes=data.boxes,
                                distractors=data.distractors)
    atomic_write(path, write)
    return data
