"""Images decoded once into a uint8 ``.npy`` cache, at a square storage size, then read back.

Folder datasets and torchvision's file-backed sets (Flowers-102, Food-101, ...) both go through
here: each image is resized (shorter side) and centre-cropped to a square, written to a memory-mapped
``images.npy`` with ``labels.npy`` beside it, and the finished cache appears by one rename. A split is
read into RAM when it fits comfortably, else batches are gathered straight from the memory map.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vitcompress.datasets.imageset import ImageSet
from vitcompress.datasets.items import ImageItems, SplitItems, decode
from vitcompress.errors import UserError
from vitcompress.locks import build_once
from vitcompress.progress import progress_bar

RAM_SHARE = 0.3  # a decoded split larger than this share of free RAM stays memory-mapped
MANIFEST = "manifest.json"


def is_cached(target: Path) -> bool:
    return (target / MANIFEST).is_file()


def decoded_splits(splits: dict[str, SplitItems], classes: list[str], size: int, target: Path,
                   quiet: bool) -> dict[str, ImageSet]:
    """The splits decoded into the cache at ``target`` (by this process, or by another that got there first)."""
    build_once(target, is_cached, lambda: build_cache(splits, classes, size, target, quiet))
    return {split: open_split(target / split, classes) for split in splits}


def build_cache(splits: dict[str, SplitItems], classes: list[str], size: int, target: Path, quiet: bool) -> None:
    """Decode every split into ``target/<split>/``; write the manifest; publish by one rename.

    An image that cannot be read is skipped and named in the manifest.
    """
    staging = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    workers = min(8, os.cpu_count() or 1)
    if not quiet:
        total = sum(len(labels) for _, labels in splits.values())
        print(f"decoding {total} images once at {size}x{size} into {target}", file=sys.stderr, flush=True)
    skipped: list[str] = []
    try:
        for split, (items, labels) in splits.items():
            (staging / split).mkdir(parents=True)
            skipped += _decode_split(_Decoding(items, labels, size), size, staging / split, workers, quiet)
    except BaseException:  # a full disk, Ctrl-C: no half-decoded copy left in the cache
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for split in splits:
        if int((staging / split / "count.txt").read_text()) == 0:
            shutil.rmtree(staging, ignore_errors=True)
            raise UserError(f"no readable images in the {split} split", "check that the files are real images")
    (staging / MANIFEST).write_text(json.dumps({"classes": classes, "size": size, "skipped": skipped}, indent=1))
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, target)


def skipped_files(target: Path) -> list[str]:
    return json.loads((target / MANIFEST).read_text())["skipped"]


class _Decoding(Dataset):
    """``(label, pixels or None, name)`` per image, decoded in ``_decode_split``'s worker processes."""

    def __init__(self, items: ImageItems, labels: np.ndarray, size: int) -> None:
        self.items, self.labels, self.size = items, labels, size

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, str]:
        return int(self.labels[i]), decode(self.items, i, self.size), self.items.name(i)


def _decode_split(dataset: Dataset, size: int, out: Path, workers: int, quiet: bool) -> list[str]:
    """Decode into ``out/images.npy`` + ``labels.npy``; return the names of the images that could not be read."""
    images = np.lib.format.open_memmap(out / "images.npy", mode="w+", dtype=np.uint8, shape=(len(dataset), size, size, 3))
    _reserve(out / "images.npy")
    labels, bad, kept = [], [], 0
    # Its own generator: drawing the workers' seed from the global RNG would make a run that decodes train
    # differently from the same run reading the cache.
    loader = DataLoader(dataset, batch_size=256, num_workers=workers, collate_fn=list, generator=torch.Generator())
    for batch in progress_bar(loader, desc=f"decoding {out.name}", quiet=quiet):
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


def _reserve(path: Path) -> None:
    """Allocate the file's blocks on the disk now. A memory map's write to a page the disk has no room for kills
    the process (SIGBUS, "Bus error"), with no exception to report: a full disk must show itself here."""
    with open(path, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # a filesystem without it: written as it comes
                return
            raise OSError(exc.errno, exc.strerror, str(path)) from None


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
