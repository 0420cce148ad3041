"""One image to its stored pixels, and the image sources a split is made of (files, a torchvision set).

Both the decode-once cache (``decoded.py``) and streaming (``streamed.py``) turn images into the same
uint8 ``S x S x 3`` pixels through ``decode``, so the two give identical batches.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

CROP_PCT = 0.875  # the usual resize-then-centre-crop ratio for evaluation
# A JPEG is decoded at a reduced DCT scale (1/2, 1/4, 1/8) while it stays at least this many times the stored side,
# then resampled: what PIL's own ``thumbnail`` does (its reducing_gap). 2-6x faster for photos many times the stored
# size, within 0.5 of the full decode's pixel values on average (docs/data.md).
DRAFT_GAP = 2
# what PIL raises on a broken file, and on one too large to decode safely (over Image.MAX_IMAGE_PIXELS x 2)
UNREADABLE = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def storage_side(image_size: tuple[int, int], img_size: int) -> int:
    """Side length images are stored at: enough for a centre crop to ``img_size``, never upscaled."""
    return max(1, min(math.ceil(img_size / CROP_PCT), min(image_size)))


SIZE_SAMPLE = 64  # images whose sizes choose a split's storage side
SIZE_QUANTILE = 0.9


def spread_sample(count: int, sample: int = SIZE_SAMPLE) -> list[int]:
    """Up to ``sample`` indices spread evenly over ``range(count)`` (a folder's files are sorted by class)."""
    if count <= sample:
        return list(range(count))
    return sorted({round(i * (count - 1) / (sample - 1)) for i in range(sample)})


def split_storage_side(image_sizes: Sequence[tuple[int, int]], img_size: int) -> int:
    """One storage side for a split of images of many sizes: :func:`storage_side` of the 90th percentile of their
    shorter sides. Not the first image's, which may be a thumbnail that would shrink every photo to it; not the
    largest, so one big outlier among small images (CIFAR-like) does not multiply the cache."""
    shorter = sorted(min(size) for size in image_sizes)
    typical = shorter[min(len(shorter) - 1, int(SIZE_QUANTILE * len(shorter)))]
    return storage_side((typical, typical), img_size)


def square_pixels(img: Image.Image, size: int) -> np.ndarray:
    """Shorter side resized to ``size`` (bicubic), centre-cropped square: uint8 ``size x size x 3``."""
    w, h = img.size
    scale = size / min(w, h)
    if (w, h) != (size, size):
        img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BICUBIC)
        left, top = (img.width - size) // 2, (img.height - size) // 2
        img = img.crop((left, top, left + size, top + size))
    return np.array(img, dtype=np.uint8)  # a writable copy (torch.from_numpy warns on read-only arrays)


def stored_pixels(img: Image.Image, size: int) -> np.ndarray:
    """An opened image's stored pixels (``square_pixels`` of its RGB), a JPEG not decoded larger than it needs."""
    img.draft("RGB", (DRAFT_GAP * size, DRAFT_GAP * size))  # only a JPEG not yet loaded is affected
    return square_pixels(img.convert("RGB"), size)


class ImageItems(Protocol):
    """A split's images by position, before decoding."""

    def __len__(self) -> int: ...

    def pixels(self, i: int, size: int) -> np.ndarray:
        """Image ``i`` stored at ``size`` (``stored_pixels``); raises one of ``UNREADABLE`` when it cannot be read."""
        ...

    def name(self, i: int) -> str: ...


class ImageFiles:
    """Image files by path (a folder split).

    The paths are kept as one byte array and offsets, not a list of strings: loader workers are forked,
    and reading a Python object touches its reference count, so each worker would copy a list of paths
    page by page as an epoch reads them (measured: 108 MB a worker for a million ImageNet-style paths;
    0 MB with this array).
    """

    def __init__(self, paths: Sequence[str]) -> None:
        encoded = [p.encode() for p in paths]
        self._ends = np.cumsum([len(e) for e in encoded], dtype=np.int64)
        self._bytes = np.frombuffer(b"".join(encoded), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._ends)

    def path(self, i: int) -> str:
        start = int(self._ends[i - 1]) if i else 0
        return self._bytes[start : int(self._ends[i])].tobytes().decode()

    def pixels(self, i: int, size: int) -> np.ndarray:
        with Image.open(self.path(i)) as img:
            return stored_pixels(img, size)

    def name(self, i: int) -> str:
        return self.path(i)


class DatasetImages:
    """The images of a torchvision dataset of files (Flowers-102, Food-101, ...); its labels are read apart."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def pixels(self, i: int, size: int) -> np.ndarray:
        return stored_pixels(self.dataset[i][0], size)  # torchvision's loader has decoded it already

    def name(self, i: int) -> str:
        return f"{type(self.dataset).__name__}[{i}]"


SplitItems = tuple[ImageItems, np.ndarray]  # a split's images and their int64 labels, before decoding


def decode(items: ImageItems, i: int, size: int) -> np.ndarray | None:
    """Item ``i`` as uint8 ``size x size x 3`` pixels, or None when it cannot be read."""
    try:
        return items.pixels(i, size)
    except UNREADABLE:
        return None
