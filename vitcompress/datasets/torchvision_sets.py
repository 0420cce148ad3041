"""torchvision's datasets by name (``cifar10``, ``cifar100``, ``flowers102``, ... see
``torchvision_catalog.py``), with their real download when the user allows it.

Sets torchvision holds as one array (CIFAR, SVHN, STL-10, MNIST) become an ``ImageSet`` directly, at
their own size. Sets of image files of any size (Flowers-102, Pets, Food-101, DTD, GTSRB, Imagenette) are decoded
once into the same square uint8 cache as folder data (``decoded.py``), or streamed (``streamed.py``).

torchvision checks the md5 of the files it unpickles (CIFAR) before reading them, so only the
official release is ever unpickled, never an arbitrary file a user points us at.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from vitcompress.datasets.decoded import decoded_splits
from vitcompress.datasets.imageset import ImageSet
from vitcompress.datasets.items import DatasetImages, split_storage_side, spread_sample
from vitcompress.datasets.streamed import streamed_splits
from vitcompress.datasets.torchvision_catalog import TORCHVISION_SETS, TorchvisionSet
from vitcompress.errors import UserError


def load_torchvision(name: str, root: Path, download: bool, img_size: int, cache_dir: Path, quiet: bool = False,
                     stream: bool = False, workers: int = 0) -> tuple[dict[str, ImageSet], dict[str, Any]]:
    """The splits of torchvision dataset ``name`` (``train``, ``test``, and ``val`` where it has one).

    ``stream``: a set of image files is not decoded now but read as batches are drawn (arrays are used as they are).
    """
    spec = TORCHVISION_SETS[name]
    datasets = {split: _open(spec, root, download, kwargs)
                for split, kwargs in (("train", spec.train), ("val", spec.val), ("test", spec.test)) if kwargs is not None}
    classes = _classes(spec, datasets["train"])
    if all(_as_array(ds) is not None for ds in datasets.values()):
        return {split: _array_imageset(ds, classes) for split, ds in datasets.items()}, {}
    train = datasets["train"]
    size = split_storage_side([train[i][0].size for i in spread_sample(len(train))], img_size)
    split_items = {split: (DatasetImages(ds), _labels(ds)) for split, ds in datasets.items()}
    if stream:
        return streamed_splits(split_items, classes, size, workers), {"storage_size": size, "streamed": True}
    target = cache_dir / "decoded" / _cache_key(name, root, size)
    return decoded_splits(split_items, classes, size, target, quiet), {"storage_size": size}


def _open(spec: TorchvisionSet, root: Path, download: bool, kwargs: dict[str, Any]) -> Dataset:
    import torchvision.datasets

    try:
        return getattr(torchvision.datasets, spec.cls)(str(root), download=download, **kwargs)
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted"
        raise UserError(f"{spec.title} not found in {root} ({exc})",
                        "pass --download (needs internet), --data-dir DIR where it is, or use folder:PATH") from None
    except OSError as exc:  # URLError and friends: no network
        raise UserError(f"could not download {spec.title} into {root} ({exc})",
                        "connect to the internet, or use folder:PATH with a local copy") from None
    except ImportError as exc:  # SVHN and Flowers-102 read .mat files with scipy
        raise UserError(f"torchvision's {spec.title} needs {exc.name}", f"pip install {exc.name}") from None


def _classes(spec: TorchvisionSet, train: Dataset) -> list[str]:
    classes = getattr(train, "classes", None) or spec.classes
    if classes:  # Imagenette names each class by its synonyms, ("tench", "Tinca tinca"): the first is the name
        return [c[0] if isinstance(c, tuple) else c for c in classes]
    return [str(c) for c in range(int(_labels(train).max()) + 1)]


def _as_array(ds: Dataset) -> np.ndarray | None:
    """The set's images as one uint8 array, where torchvision holds them so (N x H x W [x C] or N x C x H x W)."""
    data = getattr(ds, "data", None)
    if isinstance(data, torch.Tensor):
        data = data.numpy()
    return data if isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim in (3, 4) else None


def _labels(ds: Dataset) -> np.ndarray:
    for attribute in ("targets", "labels", "_labels"):
        labels = getattr(ds, attribute, None)
        if labels is not None:
            return np.asarray(labels, dtype=np.int64)
    samples = getattr(ds, "_samples", None)  # GTSRB: (path, label) pairs
    if samples is not None:
        return np.asarray([label for _, label in samples], dtype=np.int64)
    return np.asarray([ds[i][1] for i in range(len(ds))], dtype=np.int64)


def _array_imageset(ds: Dataset, classes: list[str]) -> ImageSet:
    images = _as_array(ds)
    if images.ndim == 3:  # grey (MNIST): three equal channels
        images = np.repeat(images[..., None], 3, axis=-1)
    elif images.shape[1] in (1, 3) and images.shape[-1] not in (1, 3):  # N x C x H x W (SVHN, STL-10)
        images = images.transpose(0, 2, 3, 1)
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    return ImageSet(torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(_labels(ds)), classes)


def _cache_key(name: str, root: Path, size: int) -> str:
    return "tv-" + hashlib.sha256(f"{name}|{root.resolve()}|{size}".encode()).hexdigest()[:20]
