"""Dataset specs (torchvision names such as ``cifar10``, ``folder:PATH``, ``shapes``) to decoded train/val/test splits."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vitcompress.config import absolute_data_spec, check_data_spec, check_workers
from vitcompress.datasets.folder import load_folder, load_folder_test
from vitcompress.datasets.imageset import DataSplits, ImageSet, check_classes, holdout_split
from vitcompress.datasets.shapes import TRAIN_PER_CLASS, load_shapes
from vitcompress.datasets.torchvision_catalog import TORCHVISION_SETS
from vitcompress.datasets.torchvision_sets import load_torchvision
from vitcompress.errors import require


def default_cache_dir() -> Path:
    return Path(os.environ.get("VITCOMPRESS_CACHE", Path.home() / ".cache" / "vitcompress"))


@dataclass
class DataOptions:
    """How to find and split a dataset."""

    spec: str
    data_dir: str | None = None
    download: bool = False
    img_size: int = 32
    val_split: float = 0.1
    train_subset: int = 0  # a class-balanced, seeded sample of this many training images (0: all)
    seed: int = 0
    cache_dir: str | None = None
    quiet: bool = False
    expected_classes: list[str] | None = None  # e.g. a trained model's; checked before any decoding
    stream: bool = False  # image files are decoded as batches are drawn, not cached once (see datasets/streamed.py)
    workers: int = 0  # decoding processes when streaming (0: one per CPU core, shared by the processes on this machine)
    # The data description of the model being scored (its artifact's ``data``): on that same spec, a folder's test
    # split is stored at the side recorded there, without listing the train split that sets it otherwise.
    trained_on: dict = field(default_factory=dict)


def load_data(opts: DataOptions) -> DataSplits:
    """Load the dataset named by ``opts.spec``; carve a validation split from train if it has none."""
    require(0.0 <= opts.val_split < 1.0, f"--val-split {opts.val_split} is not in [0, 1)", "use e.g. 0.1, or 0 for none")
    require(opts.train_subset >= 0, f"--train-subset {opts.train_subset} must not be negative", "pass 0 for all images")
    check_workers(opts.workers)
    check_data_spec(opts.spec)
    cache_dir = Path(opts.cache_dir) if opts.cache_dir else default_cache_dir()
    name, _, arg = opts.spec.partition(":")
    val: ImageSet | None = None
    sampled = False  # --train-subset already taken (from a folder's file list, before decoding)
    if name == "shapes":
        train, test = load_shapes(int(arg) if arg else TRAIN_PER_CLASS)
        described = {"spec": opts.spec}
    elif opts.spec in TORCHVISION_SETS:
        root = (Path(opts.data_dir).expanduser() if opts.data_dir else cache_dir / opts.spec).absolute()  # recorded
        splits, info = load_torchvision(opts.spec, root, opts.download, opts.img_size, cache_dir, opts.quiet,
                                        stream=opts.stream, workers=opts.workers)
        train, val, test = splits["train"], splits.get("val"), splits["test"]
        described = {"spec": opts.spec, "root": str(root), **info}
    else:  # folder:PATH, the only other form check_data_spec lets through
        splits, info = load_folder(Path(arg).expanduser(), opts.img_size, cache_dir, opts.quiet,
                                   expected_classes=opts.expected_classes, train_sample=opts.train_subset,
                                   seed=opts.seed, carve_val=opts.val_split > 0, stream=opts.stream, workers=opts.workers)
        train, val = splits["train"], splits.get("val")
        test = splits.get("test", val)
        described = {"spec": absolute_data_spec(opts.spec), **info}  # an artifact's record works from any directory
        sampled = described.pop("train_sampled")
    if opts.expected_classes is not None:
        check_classes(opts.expected_classes, train.classes, opts.spec)
    if val is None and opts.val_split > 0:
        train, held = holdout_split(train, opts.val_split, seed=opts.seed)
        val = held if len(held) else None  # too few images a class to hold any out: train on all, keep the last epoch
        described["val_from"] = (f"{opts.val_split:g} of train, stratified, seed {opts.seed}" if val is not None
                                 else f"none: {opts.val_split:g} of each class rounds to 0 images")
    require(len(train) > 0, f"dataset {opts.spec} has an empty train split", "check the data path")
    if 0 < opts.train_subset < len(train) and not sampled:
        _, train = holdout_split(train, opts.train_subset / len(train), seed=opts.seed)
        sampled = True
    if sampled:
        described["train_subset"] = f"{len(train)} images, class-balanced, seed {opts.seed}"
    described.update(train=len(train), val=len(val) if val is not None else 0, test=len(test))
    return DataSplits(train=train, val=val, test=test, classes=train.classes, description=described)


def is_trained_on(spec: str, trained_on: dict) -> bool:
    """Whether ``spec`` names the data an artifact's ``data`` record describes (a folder by any path to it)."""
    return absolute_data_spec(spec) == absolute_data_spec(trained_on.get("spec"))


def streamed_before(spec: str, trained_on: dict) -> bool:
    """Whether the model's own data, ``spec``, was streamed (``--stream``): then it is streamed again, not cached."""
    return is_trained_on(spec, trained_on) and bool(trained_on.get("streamed"))


def trained_storage_size(spec: str, trained_on: dict) -> int:
    """The side the model's own data, ``spec``, was stored at when it was trained, if its artifact recorded it."""
    return int(trained_on.get("storage_size") or 0) if is_trained_on(spec, trained_on) else 0


def load_test_split(opts: DataOptions) -> ImageSet:
    """The images a model is scored on (eval, bench): ``load_data``'s test split. A folder's is read alone
    (``load_folder_test``): its train split is never decoded for it, and a folder without ``train/`` (a held-out
    set of the user's own: ``test/``, ``val/`` or a flat tree of class folders) will do."""
    name, _, arg = opts.spec.partition(":")
    if name != "folder" or not arg:
        return load_data(opts).test
    check_data_spec(opts.spec)
    check_workers(opts.workers)
    cache_dir = Path(opts.cache_dir) if opts.cache_dir else default_cache_dir()
    return load_folder_test(Path(arg).expanduser(), opts.img_size, cache_dir, opts.quiet, opts.expected_classes,
                            opts.stream, opts.workers, trained_storage_size(opts.spec, opts.trained_on))


def test_sample(opts: DataOptions, size: int = 0, seed: int = 0) -> ImageSet:
    """``size`` images of ``opts.spec``'s test split (:func:`load_test_split`) in a seeded sample (all of it for 0
    or more than it has). A sample, not the first ``size``: folder splits are stored sorted by class.
    """
    test = load_test_split(opts)
    if size and size < len(test):
        order = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))[:size]
        test = test.subset(order.sort().values)
    return test


def generated_pixels(count: int, size: int, seed: int = 0) -> torch.Tensor:
    """Seeded random uint8 ``count x size x size x 3`` pixels, for measuring without a dataset."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, size, size, 3), dtype=torch.uint8, generator=generator)
