"""The torchvision datasets ``--data`` names, and the arguments of their splits (no torch import: the
CLI checks a spec against this before anything heavy loads)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TorchvisionSet:
    """A ``torchvision.datasets`` class and the keyword arguments that select each of its splits."""

    title: str
    cls: str
    train: dict[str, Any]
    test: dict[str, Any]
    val: dict[str, Any] | None = None  # the set's own validation split, where it has one
    classes: tuple[str, ...] = field(default=())  # for sets whose class has no ``classes`` attribute


DIGITS = tuple(str(d) for d in range(10))

TORCHVISION_SETS: dict[str, TorchvisionSet] = {
    "cifar10": TorchvisionSet("CIFAR-10", "CIFAR10", {"train": True}, {"train": False}),
    "cifar100": TorchvisionSet("CIFAR-100", "CIFAR100", {"train": True}, {"train": False}),
    "svhn": TorchvisionSet("SVHN", "SVHN", {"split": "train"}, {"split": "test"}, classes=DIGITS),
    "stl10": TorchvisionSet("STL-10", "STL10", {"split": "train"}, {"split": "test"}),
    "mnist": TorchvisionSet("MNIST", "MNIST", {"train": True}, {"train": False}),
    "fashion-mnist": TorchvisionSet("Fashion-MNIST", "FashionMNIST", {"train": True}, {"train": False}),
    "flowers102": TorchvisionSet("Oxford Flowers-102", "Flowers102", {"split": "train"}, {"split": "test"},
                                 val={"split": "val"}),
    "pets": TorchvisionSet("Oxford-IIIT Pet", "OxfordIIITPet", {"split": "trainval"}, {"split": "test"}),
    "food101": TorchvisionSet("Food-101", "Food101", {"split": "train"}, {"split": "test"}),
    "dtd": TorchvisionSet("Describable Textures", "DTD", {"split": "train"}, {"split": "test"}, val={"split": "val"}),
    "gtsrb": TorchvisionSet("GTSRB", "GTSRB", {"split": "train"}, {"split": "test"},
                            classes=tuple(str(c) for c in range(43))),
    # fast.ai's 10 easy ImageNet classes at 320 px on the shorter side (341 MB): real photos for fine-tuning a
    # pretrained ViT at 224 px. It has train and val only; val is the test split, and --val-split holds out of train.
    "imagenette": TorchvisionSet("Imagenette (320 px)", "Imagenette", {"split": "train", "size": "320px"},
                                 {"split": "val", "size": "320px"}),
}


def data_dir_for(spec: str, data_dir: str | None, trained_on: dict) -> str | None:
    """``data_dir``, else where the model's own data was found when ``spec`` is that torchvision set.

    ``trained_on`` is an artifact's ``data`` record: a set passed with ``--data-dir`` once is found again.
    """
    if data_dir or spec != trained_on.get("spec") or spec not in TORCHVISION_SETS:
        return data_dir
    return trained_on.get("root")
