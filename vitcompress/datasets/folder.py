"""``folder:PATH``: an ImageFolder tree (``train/`` plus ``val/`` and/or ``test/``), or an archive of one.

Images are decoded once into a uint8 cache (``decoded.py``), or with ``stream`` read from their files
as batches are drawn (``streamed.py``). Unreadable images are *skipped with a warning and a count*;
their names are kept in the cache and in the artifact (streaming names them as it meets them).
"""

from __future__ import annotations

import hashlib
import os
import sys
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.datasets.folder import make_dataset

from vitcompress.datasets.archive import extract_cached, is_archive
from vitcompress.datasets.decoded import decoded_splits, skipped_files
from vitcompress.datasets.imageset import ImageSet, check_classes, stratified_split
from vitcompress.datasets.items import DRAFT_GAP, UNREADABLE, ImageFiles, split_storage_side, spread_sample
from vitcompress.datasets.listing import class_folders, is_hidden, is_image_file
from vitcompress.datasets.streamed import streamed_splits
from vitcompress.errors import UserError

SPLITS = ("train", "val", "test")
SPLIT_NAMES = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}  # Kaggle writes valid/


def split_dirs(root: Path) -> dict[str, Path]:
    """The split folders under ``root`` by their role (``train``/``val``/``test``), under any name they go by."""
    found: dict[str, Path] = {}
    for split in SPLITS:
        dirs = [root / name for name in SPLIT_NAMES[split] if (root / name).is_dir()]
        if len(dirs) > 1:
            raise UserError(f"{root} has {' and '.join(d.name + '/' for d in dirs)}: both would be the {split} split",
                            "keep one of them (or move the other out of the tree)")
        if dirs:
            found[split] = dirs[0]
    return found


def locate_root(path: Path, cache_dir: Path, quiet: bool, scoring: bool = False) -> Path:
    """The folder that holds ``train/``: ``path`` itself, its single subfolder, or an extracted archive.

    ``scoring`` (a model scored on a held-out set of its own): ``test/`` or ``val/`` without ``train/`` will
    do, and so will a flat tree of class folders, which is then the root itself.
    """
    if not path.exists():
        raise UserError(f"data path {path} does not exist",
                        "pass folder:PATH with PATH an image folder or a .zip/.tar[.gz|.xz] of one")
    if is_archive(path):
        path = extract_cached(path, cache_dir, quiet)
    if not path.is_dir():
        raise UserError(f"data path {path} is neither a folder nor a .zip/.tar/.tar.gz/.tar.xz archive",
                        "pass an ImageFolder tree")
    def holds_splits(folder: Path) -> bool:
        found = split_dirs(folder)
        return "train" in found or (scoring and bool(found))

    if holds_splits(path):
        return path
    children = [c for c in path.iterdir() if c.is_dir() and not is_hidden(c.name)]  # a zip's __MACOSX/ beside it
    if len(children) == 1 and holds_splits(children[0]):
        return children[0]
    if scoring and children:
        return path
    raise UserError(f"{path} has no train/ folder",
                    "lay the data out as train/<class>/*.jpg with val/<class>/ or test/<class>/ beside it")


def _scan(root: Path, list_train: bool = True) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
    """Class names and ``(file, label)`` lists per split (without ``list_train``, not of the train split: its
    class folders are read, not its files); classes must agree across splits."""
    present = split_dirs(root)
    if "val" in present and "test" in present and not class_folders(present["test"]):
        del present["test"]  # a competition's unlabelled test/ (images, no class folders): val/ is scored instead
    if "val" not in present and "test" not in present:
        raise UserError(f"{root} has train/ but neither val/ (or valid/, validation/) nor test/",
                        "add a val/ or test/ folder with the same class folders")
    classes, class_to_idx = _find_classes(present["train"])
    samples: dict[str, list[tuple[str, int]]] = {}
    for split, split_dir in present.items():
        split_classes, _ = _find_classes(split_dir)
        if split_classes != classes:
            only_train = sorted(set(classes) - set(split_classes))
            only_split = sorted(set(split_classes) - set(classes))
            raise UserError(f"classes differ between {present['train']} and {split_dir} "
                            f"(only in train: {only_train or 'none'}; only in {split_dir.name}: {only_split or 'none'})",
                            "use the same class folder names in every split")
        if split != "train" or list_train:
            samples[split] = _labelled_files(split_dir, class_to_idx)
    return classes, samples


def _labelled_files(split_dir: Path, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
    try:
        return make_dataset(str(split_dir), class_to_idx, is_valid_file=partial(is_image_file, root=split_dir))
    except FileNotFoundError as exc:
        raise UserError(f"{split_dir}: {exc}", "every class folder needs at least one image") from None


def _find_classes(split_dir: Path) -> tuple[list[str], dict[str, int]]:
    classes = class_folders(split_dir)
    if not classes:
        raise UserError(f"{split_dir} has no class folders", "put images in <split>/<class>/*.jpg")
    return classes, {name: index for index, name in enumerate(classes)}


def storage_size(files: list[tuple[str, int]], img_size: int) -> int:
    """Side length images are stored at (:func:`split_storage_side` of a sample spread over the split; only image
    headers are read), or of the first readable image when none of the sample can be read."""
    sizes = [size for size in map(_image_size, (files[i][0] for i in spread_sample(len(files)))) if size]
    if not sizes:  # none of the sample reads: the split's first readable image, if it has one
        first = next(filter(None, map(_image_size, (path for path, _ in files))), None)
        if first is None:
            raise UserError(f"no readable images among the split's {len(files)} files", "check that the files are real images")
        sizes = [first]
    return split_storage_side(sizes, img_size)


def _image_size(path: str) -> tuple[int, int] | None:
    try:
        with Image.open(path) as img:
            return img.size
    except UNREADABLE:
        return None


def _cache_key(root: Path, samples: dict[str, list[tuple[str, int]]], size: int) -> str:
    digest = hashlib.sha256(f"{root.resolve()}|{size}|draft{DRAFT_GAP}".encode())
    for split in sorted(samples):
        for path, label in samples[split]:
            st = os.stat(path)
            digest.update(f"{path}|{label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def load_folder(path: Path, img_size: int, cache_dir: Path, quiet: bool = False,
                expected_classes: list[str] | None = None, train_sample: int = 0, seed: int = 0,
                carve_val: bool = True, stream: bool = False, workers: int = 0) -> tuple[dict[str, ImageSet], dict]:
    """Splits of an ImageFolder tree, keyed ``train``/``val``/``test`` (those present): decoded, or streamed.

    ``train_sample`` > 0 decodes only a class-balanced, seeded sample of that many training files: the
    sample ``--train-subset`` would take from the decoded split, taken before decoding, for data too large
    to decode whole. Not when a validation split is still to be carved out of train first (no ``val/``
    and ``carve_val``). ``info["train_sampled"]`` says whether it was taken. ``stream`` decodes nothing
    now: the splits read their files as batches are drawn, with ``workers`` processes (0: one per core).
    """
    root = locate_root(path, cache_dir, quiet)
    classes, samples = _scan(root)
    if expected_classes is not None:
        check_classes(expected_classes, classes, str(path))
    sampled = 0 < train_sample < len(samples["train"]) and ("val" in samples or not carve_val)
    if sampled:
        labels = torch.tensor([label for _, label in samples["train"]])
        _, chosen = stratified_split(labels, len(classes), train_sample / len(labels), seed)
        samples["train"] = [samples["train"][i] for i in chosen.tolist()]
    size = storage_size(samples["train"], img_size)
    splits, info = _open_splits(root, classes, samples, size, cache_dir, quiet, stream, workers)
    return splits, {**info, "train_sampled": sampled}


def load_folder_test(path: Path, img_size: int, cache_dir: Path, quiet: bool = False,
                     expected_classes: list[str] | None = None, stream: bool = False, workers: int = 0,
                     trained_storage_size: int = 0) -> ImageSet:
    """The images a model is scored on, decoded alone (scoring an ImageNet-sized tree must not decode its train
    split): ``test/`` (else ``val/``) of a tree with ``train/``, stored at the side its train split sets, as
    ``load_folder`` stores it, so the pixels are the ones training was scored on (``trained_storage_size``, the
    side the model's artifact recorded, spares listing the train split); of a folder without ``train/`` (a
    held-out set of the user's own), its ``test/`` (else ``val/``) or the flat tree of class folders itself."""
    root = locate_root(path, cache_dir, quiet, scoring=True)
    present = split_dirs(root)
    if "train" in present:
        classes, samples = _scan(root, list_train=not trained_storage_size)
        files = samples["test"] if "test" in samples else samples["val"]  # _scan keeps one of them at least
        size = trained_storage_size or storage_size(samples["train"], img_size)
    else:
        scored = present.get("test", present.get("val", root))
        classes, class_to_idx = _find_classes(scored)
        files = _labelled_files(scored, class_to_idx)
        size = storage_size(files, img_size)
    if expected_classes is not None:
        check_classes(expected_classes, classes, str(path))
    splits, _ = _open_splits(root, classes, {"test": files}, size, cache_dir, quiet, stream, workers)
    return splits["test"]


def _open_splits(root: Path, classes: list[str], samples: dict[str, list[tuple[str, int]]], size: int, cache_dir: Path,
                 quiet: bool, stream: bool, workers: int) -> tuple[dict[str, ImageSet], dict]:
    """The splits' files decoded once into the cache (unreadable ones skipped, with a warning), or streamed."""
    info = {"root": str(root), "storage_size": size}
    split_items = {split: (ImageFiles([p for p, _ in files]), np.asarray([label for _, label in files], dtype=np.int64))
                   for split, files in samples.items()}
    if stream:
        return streamed_splits(split_items, classes, size, workers), {**info, "streamed": True}
    target = cache_dir / "decoded" / _cache_key(root, samples, size)
    splits = decoded_splits(split_items, classes, size, target, quiet)
    skipped = skipped_files(target)
    if skipped:  # a warning, not progress: --quiet (no progress bars or per-epoch lines) keeps it, for the logs
        print(f"warning: skipped {len(skipped)} unreadable image(s) in {root} (first: {skipped[0]}); "
              f"the full list is in {target / 'manifest.json'}", file=sys.stderr, flush=True)
    return splits, {**info, "skipped_files": skipped}
