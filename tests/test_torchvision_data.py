"""torchvision datasets by name: torchvision's own classes read files laid out as their releases are
(written here, since nothing can be downloaded): an array-backed set (MNIST) and a set of image files
decoded once into the cache (DTD, with its own validation split)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import TINY, run_cli
from vitcompress.artifact import read_meta
from vitcompress.data import DataOptions, load_data
from vitcompress.datasets import decoded
from vitcompress.datasets.items import square_pixels
from vitcompress.errors import UserError

DTD_CLASSES = ["banded", "dotted", "striped"]


def _write_idx(path: Path, array: np.ndarray) -> None:
    """MNIST's idx format: a magic number saying uint8 and the rank, the sizes, the bytes."""
    path.write_bytes(struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
                     + array.astype(np.uint8).tobytes())


def write_mnist(root: Path, train: int = 20, test: int = 10) -> tuple[np.ndarray, np.ndarray]:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (train + test, 28, 28), dtype=np.uint8)
    labels = np.arange(train + test) % 10
    for prefix, part in (("train", slice(0, train)), ("t10k", slice(train, None))):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images[part])
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels[part])
    return images, labels


def write_dtd(root: Path, per_class: int = 2) -> dict[str, list[Path]]:
    """DTD's layout: dtd/dtd/images/<class>/*.jpg and dtd/dtd/labels/<split>1.txt listing class/file."""
    data = root / "dtd" / "dtd"
    (data / "labels").mkdir(parents=True)
    rng = np.random.default_rng(1)
    files: dict[str, list[Path]] = {}
    for split in ("train", "val", "test"):
        lines = []
        for cls in DTD_CLASSES:
            (data / "images" / cls).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                w, h = int(rng.integers(40, 90)), int(rng.integers(40, 90))  # any size, as the real images are
                path = data / "images" / cls / f"{cls}_{split}_{i}.jpg"
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
                lines.append(f"{cls}/{path.name}")
                files.setdefault(split, []).append(path)
        (data / "labels" / f"{split}1.txt").write_text("\n".join(lines) + "\n")
    return files


def test_mnist_becomes_rgb_images_with_its_labels(tmp_path: Path) -> None:
    images, labels = write_mnist(tmp_path / "tv")
    data = load_data(DataOptions(spec="mnist", data_dir=str(tmp_path / "tv"), val_split=0, cache_dir=str(tmp_path / "c")))
    assert data.train.images.shape == (20, 28, 28, 3) and len(data.test) == 10 and data.val is None
    assert torch.equal(data.train.images[..., 1], torch.from_numpy(images[:20]))  # grey: three equal channels
    assert torch.equal(data.train.images[..., 0], data.train.images[..., 2])
    assert data.train.labels.tolist() == labels[:20].tolist() and data.test.labels.tolist() == labels[20:].tolist()
    assert data.classes[0] == "0 - zero" and len(data.classes) == 10
    assert data.description["spec"] == "mnist"


def test_dtd_images_are_decoded_once_with_its_own_val_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = write_dtd(tmp_path / "tv")
    opts = DataOptions(spec="dtd", data_dir=str(tmp_path / "tv"), img_size=32, cache_dir=str(tmp_path / "c"), quiet=True)
    data = load_data(opts)
    side = 37  # ceil(32 / 0.875): enough for the evaluation centre crop; every image here is larger
    assert data.classes == DTD_CLASSES and data.description["storage_size"] == side
    assert [len(data.train), len(data.val), len(data.test)] == [6, 6, 6]  # the set's val split, not a holdout of train
    first = files["train"][0]
    with Image.open(first) as img:
        assert torch.equal(data.train.images[0], torch.from_numpy(square_pixels(img.convert("RGB"), side)))
    assert data.train.labels.tolist() == [0, 0, 1, 1, 2, 2]

    def no_decoding(*_: object) -> None:
        raise AssertionError("decoded again")

    monkeypatch.setattr(decoded._Decoding, "__getitem__", no_decoding)
    assert torch.equal(load_data(opts).test.images, data.test.images)  # read from the cache


def test_finetune_and_eval_on_a_torchvision_set(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_dtd(tmp_path / "tv", per_class=4)
    data = ["--data", "dtd", "--data-dir", tmp_path / "tv"]
    out = tmp_path / "a"
    assert run_cli("finetune", *TINY, *data, "--epochs", "1", "--batch-size", "4", "--out", out) == 0
    meta = read_meta(out)
    assert meta.classes == DTD_CLASSES and meta.data["spec"] == "dtd" and meta.metrics["samples"] == 12
    assert run_cli("eval", out, *data, "--json", "--quiet") == 0
    assert '"samples": 12' in capsys.readouterr().out
    pruned = tmp_path / "p"  # the data where finetune found it, without --data-dir again
    assert run_cli("prune", out, "--heads", "0.5", "--finetune-epochs", "0", "--quiet", "--out", pruned) == 0
    assert read_meta(pruned).metrics["samples"] == 12
    onnx = tmp_path / "onnx"  # verified on the set's test images, found there too
    assert run_cli("export", out, "--verify-size", "8", "--quiet", "--out", onnx) == 0
    manifest = json.loads((onnx / "export.json").read_text())
    assert manifest["verify"]["onnxruntime"]["source"].startswith("dtd (test split")


IMAGENETTE_WNIDS = {"n01440764": "tench", "n02102040": "English springer", "n02979186": "cassette player"}


def write_imagenette(root: Path, per_class: int = 10) -> None:
    """Imagenette's layout: imagenette2-320/<train|val>/<wnid>/*.JPEG (here 3 of its 10 classes, smaller images)."""
    rng = np.random.default_rng(2)
    for split in ("train", "val"):
        for wnid in IMAGENETTE_WNIDS:
            folder = root / "imagenette2-320" / split / wnid
            folder.mkdir(parents=True)
            for i in range(per_class if split == "train" else 2):
                w, h = int(rng.integers(40, 90)), int(rng.integers(40, 90))
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{wnid}_{i}.JPEG")


def test_imagenette_is_named_by_its_class_names_and_tested_on_its_val(tmp_path: Path) -> None:
    write_imagenette(tmp_path / "tv")
    data = load_data(DataOptions(spec="imagenette", data_dir=str(tmp_path / "tv"), img_size=32,
                                 cache_dir=str(tmp_path / "c"), quiet=True))
    assert data.classes == list(IMAGENETTE_WNIDS.values())  # not torchvision's tuples of synonyms
    assert [len(data.train), len(data.val), len(data.test)] == [27, 3, 6]  # val: 0.1 of train; test: the set's val
    assert data.test.labels.tolist() == [0, 0, 1, 1, 2, 2]


def test_missing_set_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="CIFAR-100 not found in .*--download"):
        load_data(DataOptions(spec="cifar100", data_dir=str(tmp_path / "none"), cache_dir=str(tmp_path / "c")))
    with pytest.raises(UserError, match="unknown data spec 'imagenet'.*cifar100.*flowers102"):
        load_data(DataOptions(spec="imagenet"))
