"""``folder:PATH``: an ImageFolder tree (``train/`` plus ``val/`` and/or ``test/``), or an archive of one.

Images are decoded once, resized (shorter side) and centre-cropped to a square storage size, and
cached as uint8 ``.npy`` files; a split is read into RAM when it fits comfortably, else batches are
gathered straight from the memory map (the page cache keeps hot pages). Unreadable images are
*skipped with a warning and a count*; their names are kept in the cache and in the artifact.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
from tqdm import tqdm

from vitcompress.datasets.archive import extract_cached, is_archive
from vitcompress.datasets.imageset import ImageSet, check_classes
from vitcompress.errors import UserError

SPLITS = ("train", "val", "test")
CROP_PCT = 0.875  # the usual resize-then-centre-crop ratio for evaluation
RAM_SHARE = 0.3  # a decoded split larger than this share of free RAM stays memory-mapped


def locate_root(path: Path, cache_dir: Path, quiet: bool) -> Path:
    """The folder that holds ``train/``: ``path`` itself, its single subfolder, or an extracted archive."""
    if not path.exists():
        raise UserError(f"data path {path} does not exist",
                        "pass folder:PATH with PATH an image folder or a .tar[.gz|.xz] of one")
    if is_archive(path):
        path = extract_cached(path, cache_dir, quiet)
    if not path.is_dir():
        raise UserError(f"data path {path} is neither a folder nor a .tar/.tar.gz/.tar.xz archive", "pass an ImageFolder tree")
    if (path / "train").is_dir():
        return path
    children = [c for c in path.iterdir() if c.is_dir()]
    if len(children) == 1 and (children[0] / "train").is_dir():
        return children[0]
    raise UserError(f"{path} has no train/ folder",
                    "lay the data out as train/<class>/*.jpg with val/<class>/ or test/<class>/ beside it")


def _scan(root: Path) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
    """Class names and ``(file, label)`` lists per split; classes must agree across splits."""
    present = [s for s in SPLITS if (root / s).is_dir()]
    if "val" not in present and "test" not in present:
        raise UserError(f"{root} has train/ but neither val/ nor test/", "add a val/ or test/ folder with the same class folders")
    classes, class_to_idx = _find_classes(root / "train")
    samples: dict[str, list[tuple[str, int]]] = {}
    for split in present:
        split_classes, _ = _find_classes(root / split)
        if split_classes != classes:
            only_train = sorted(set(classes) - set(split_classes))
            only_split = sorted(set(split_classes) - set(classes))
            raise UserError(f"classes differ between {root / 'train'} and {root / split} "
                            f"(only in train: {only_train or 'none'}; only in {split}: {only_split or 'none'})",
                            "use the same class folder names in every split")
        try:
            samples[split] = make_dataset(str(root / split), class_to_idx, extensions=IMG_EXTENSIONS)
        except FileNotFoundError as exc:
            raise UserError(f"{root / split}: {exc}", "every class folder needs at least one image") from None
    return classes, samples


def _find_classes(split_dir: Path) -> tuple[list[str], dict[str, int]]:
    try:
        return find_classes(str(split_dir))
    except FileNotFoundError:
        raise UserError(f"{split_dir} has no class folders", "put images in <split>/<class>/*.jpg") from None


def storage_size(first_image: str, img_size: int) -> int:
    """Side length images are cached at: enough for a centre crop to ``img_size``, never upscaled."""
    with Image.open(first_image) as img:
        return storage_side(img.size, img_size)


def storage_side(image_size: tuple[int, int], img_size: int) -> int:
    return max(1, min(math.ceil(img_size / CROP_PCT), min(image_size)))


class _DecodeDataset(Dataset):
    def __init__(self, samples: list[tuple[str, int]], size: int) -> None:
        self.samples, self.size = samples, size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None]:
        try:
            with Image.open(self.samples[i][0]) as img:
                return i, square_pixels(img.convert("RGB"), self.size)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            return i, None


def square_pixels(img: Image.Image, size: int) -> np.ndarray:
    """Shorter side resized to ``size`` (bicubic), centre-cropped square: uint8 ``size x size x 3``."""
    w, h = img.size
    scale = size / min(w, h)
    if (w, h) != (size, size):
        img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BICUBIC)
        left, top = (img.width - size) // 2, (img.height - size) // 2
        img = img.crop((left, top, left + size, top + size))
    return np.array(img, dtype=np.uint8)  # a writable copy (torch.from_numpy warns on read-only arrays)


def _decode_split(samples: list[tuple[str, int]], size: int, out: Path, workers: int, quiet: bool) -> list[str]:
    """Decode into ``out/images.npy`` + ``labels.npy``; return the files that could not be read."""
    images = np.lib.format.open_memmap(out / "images.npy", mode="w+", dtype=np.uint8, shape=(len(samples), size, size, 3))
    labels, bad, kept = [], [], 0
    loader = DataLoader(_DecodeDataset(samples, size), batch_size=256, num_workers=workers, collate_fn=list)
    for batch in tqdm(loader, desc=f"decoding {out.name}", unit="batch", disable=quiet, leave=False):
        for i, arr in batch:
            if arr is None:
                bad.append(samples[i][0])
                continue
            images[kept] = arr
            labels.append(samples[i][1])
            kept += 1
    images.flush()
    np.save(out / "labels.npy", np.asarray(labels, dtype=np.int64))
    (out / "count.txt").write_text(str(kept))
    return bad


def _cache_key(root: Path, samples: dict[str, list[tuple[str, int]]], size: int) -> str:
    digest = hashlib.sha256(f"{root.resolve()}|{size}".encode())
    for split in sorted(samples):
        for path, label in samples[split]:
            st = os.stat(path)
            digest.update(f"{path}|{label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def load_folder(path: Path, img_size: int, cache_dir: Path, quiet: bool = False,
                expected_classes: list[str] | None = None) -> tuple[dict[str, ImageSet], dict]:
    """Decoded splits of an ImageFolder tree, keyed ``train``/``val``/``test`` (those present)."""
    root = locate_root(path, cache_dir, quiet)
    classes, samples = _scan(root)
    if expected_classes is not None:
        check_classes(expected_classes, classes, str(path))
    size = storage_size(samples["train"][0][0], img_size)
    target = cache_dir / "decoded" / _cache_key(root, samples, size)
    if not (target / "manifest.json").is_file():
        _build_cache(samples, classes, size, target, quiet)
    manifest = json.loads((target / "manifest.json").read_text())
    if manifest["skipped"] and not quiet:
        first = manifest["skipped"][0]
        print(f"warning: skipped {len(manifest['skipped'])} unreadable image(s) in {root} (first: {first}); "
              f"the full list is in {target / 'manifest.json'}", file=sys.stderr, flush=True)
    splits = {split: _open_split(target / split, classes) for split in samples}
    return splits, {"root": str(root), "storage_size": size, "skipped_files": manifest["skipped"]}


def _build_cache(samples: dict, classes: list[str], size: int, target: Path, quiet: bool) -> None:
    staging = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    workers = min(8, os.cpu_count() or 1)
    if not quiet:
        total = sum(len(v) for v in samples.values())
        print(f"decoding {total} images once at {size}x{size} into {target}", file=sys.stderr, flush=True)
    skipped: list[str] = []
    for split, split_samples in samples.items():
        (staging / split).mkdir(parents=True)
        skipped += _decode_split(split_samples, size, staging / split, workers, quiet)
    for split in samples:
        if int((staging / split / "count.txt").read_text()) == 0:
            shutil.rmtree(staging, ignore_errors=True)
            raise UserError(f"no readable images in the {split}/ split", "check that the files are real images")
    (staging / "manifest.json").write_text(json.dumps({"classes": classes, "size": size, "skipped": skipped}, indent=1))
    os.replace(staging, target)


def _open_split(folder: Path, classes: list[str]) -> ImageSet:
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
