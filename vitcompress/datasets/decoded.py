"""Images decoded once into a uint8 ``.npy`` cache, at a square storage size, then read back.

Folder datasets and torchvision's file-backed sets (Flowers-102, Food-101, ...) both go through
here: each image is resized (shorter side) and centre-cropped to a square, written to a memory-mapped
``images.npy`` with ``labels.npy`` beside it, and the finished cache appears by one rename. A split is
read into RAM when it fits comfortably, else batches are gathered straight from the memory map.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from vitcompress.datasets.imageset import ImageSet
from vitcompress.errors import UserError

CROP_PCT = 0.875  # the usual resize-then-centre-crop ratio for evaluation
RAM_SHARE = 0.3  # a decoded split larger than this share of free RAM stays memory-mapped
MANIFEST = "manifest.json"


def storage_side(image_size: tuple[int, int], img_size: int) -> int:
    """Side length images are cached at: enough for a centre crop to ``img_size``, never upscaled."""
    return max(1, min(math.ceil(img_size / CROP_PCT), min(image_size)))


def square_pixels(img: Image.Image, size: int) -> np.ndarray:
    """Shorter side resized to ``size`` (bicubic), centre-cropped square: uint8 ``size x size x 3``."""
    w, h = img.size
    scale = size / min(w, h)
    if (w, h) != (size, size):
        img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BICUBIC)
        left, top = (img.width - size) // 2, (img.height - size) // 2
        img = img.crop((left, top, left + size, top + size))
    return np.array(img, dtype=np.uint8)  # a writable copy (torch.from_numpy warns on read-only arrays)


def is_cached(target: Path) -> bool:
    return (target / MANIFEST).is_file()


def build_cache(splits: dict[str, Dataset], classes: list[str], size: int, target: Path, quiet: bool) -> None:
    """Decode every split into ``target/<split>/``; write the manifest; publish by one rename.

    Each dataset item is ``(label, pixels or None, name)``: ``None`` for an image that cannot be read,
    which is skipped and named in the manifest.
    """
    staging = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    workers = min(8, os.cpu_count() or 1)
    if not quiet:
        total = sum(len(ds) for ds in splits.values())
        print(f"decoding {total} images once at {size}x{size} into {target}", file=sys.stderr, flush=True)
    skipped: list[str] = []
    for split, dataset in splits.items():
        (staging / split).mkdir(parents=True)
        skipped += _decode_split(dataset, size, staging / split, workers, quiet)
    for split in splits:
        if int((staging / split / "count.txt").read_text()) == 0:
            shutil.rmtree(staging, ignore_errors=True)
            raise UserError(f"no readable images in the {split} split", "check that the files are real images")
    (staging / MANIFEST).write_text(json.dumps({"classes": classes, "size": size, "skipped": skipped}, indent=1))
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, target)


def skipped_files(target: Path) -> list[str]:
    return json.loads((target / MANIFEST).read_text())["skipped"]


def _decode_split(dataset: Dataset, size: int, out: Path, workers: int, quiet: bool) -> list[str]:
    """Decode into ``out/images.npy`` + ``labels.npy``; return the names of the images that could not be read."""
    images = np.lib.format.open_memmap(out / "images.npy", mode="w+", dtype=np.uint8, shape=(len(dataset), size, size, 3))
    labels, bad, kept = [], [], 0
    loader = DataLoader(dataset, batch_size=256, num_workers=workers, collate_fn=list)
    for batch in tqdm(loader, desc=f"decoding {out.name}", unit="batch", disable=quiet, leave=False):
        for label, pixels, name in batch:
            if pixels is None:
                bad.append(name)
                continue
            images[kept] = pixels
            labels.append(label)
            kept += 1
    images.flush()
    np.save(out / "labels.npy", np.asarray(labels, dtype=np.int64))
    (out / "count.txt").write_text(str(kept))
    return bad


def open_split(folder: Path, classes: list[str]) -> ImageSet:
    """Read a decoded split into RAM, or leave it memory-mapped when it would not fit comfortably."""
    count = int((folder / "count.txt").read_text())
    images = np.load(folder / "images.npy", mmap_mode="c")[:count]  # copy-on-write: the cache is never modified
    if images.nbytes <= RAM_SHARE * available_memory():
        images = np.array(images)
    labels = np.load(folder / "labels.npy")
    return ImageSet(torch.from_numpy(images), torch.from_numpy(labels), classes)


def available_memory() -> int:
    """Bytes of RAM not in use (Linux/macOS); unlimited where the OS does not say."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62
