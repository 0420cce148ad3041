"""``shapes``: a generated 10-class dataset that needs no network (demos and tests).

Each image is one shape of a random colour, size and position on a noisy background of another
colour. The class is the shape, so a model must learn form, not colour. Deterministic per seed.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from PIL import Image, ImageDraw

from vitcompress.datasets.imageset import ImageSet

CLASSES = ["circle", "square", "triangle", "diamond", "cross", "x", "ring", "hbar", "vbar", "star"]
IMAGE_SIZE = 32
TRAIN_PER_CLASS = 500
TEST_PER_CLASS = 100


def _draw(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, color: tuple) -> None:
    w = max(2, int(r / 2.5))
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color)
    elif shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=color)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=color)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=color)
    elif shape == "cross":
        draw.rectangle([cx - w / 2, cy - r, cx + w / 2, cy + r], fill=color)
        draw.rectangle([cx - r, cy - w / 2, cx + r, cy + w / 2], fill=color)
    elif shape == "x":
        draw.line([cx - r, cy - r, cx + r, cy + r], fill=color, width=w)
        draw.line([cx - r, cy + r, cx + r, cy - r], fill=color, width=w)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=color, width=w)
    elif shape == "hbar":
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=color)
    elif shape == "vbar":
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=color)
    elif shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.45
            ang = np.pi / 2 + k * np.pi / 5
            pts.append((cx + rad * np.cos(ang), cy - rad * np.sin(ang)))
        draw.polygon(pts, fill=color)


def generate(per_class: int, seed: int, size: int = IMAGE_SIZE) -> ImageSet:
    """Generate ``per_class`` images of each class; the same seed gives the same pixels."""
    rng = np.random.default_rng(seed)
    n = per_class * len(CLASSES)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(len(CLASSES)), per_class)
    for i, label in enumerate(labels):
        bg = rng.integers(0, 256, 3)
        fg = (bg + rng.integers(80, 176, 3)) % 256  # far enough from the background to be visible
        noise = rng.normal(0, 8, (size, size, 3))
        canvas = np.clip(bg + noise, 0, 255).astype(np.uint8)
        img = Image.fromarray(canvas)
        r = rng.uniform(size * 0.26, size * 0.40)
        cx, cy = rng.uniform(r + 1, size - r - 1, 2)
        _draw(ImageDraw.Draw(img), CLASSES[label], cx, cy, r, tuple(int(c) for c in fg))
        images[i] = np.asarray(img)
    return ImageSet(torch.from_numpy(images), torch.from_numpy(labels).long(), list(CLASSES))


@functools.lru_cache(maxsize=2)  # a pipeline loads the same data in every stage; generating it takes seconds
def load_shapes(train_per_class: int = TRAIN_PER_CLASS, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """Train and test splits (test uses another seed, so no image is in both; it is the same for every size)."""
    return generate(train_per_class, seed), generate(TEST_PER_CLASS, seed + 10_000)
