"""Decoded images as one uint8 tensor: the form every source produces and the loader consumes.

Decoding once and keeping ``N x H x W x 3`` uint8 (in RAM, memory-mapped, or on the GPU) is what lets
training keep a GPU busy: no per-image JPEG decode or PIL augmentation in the hot loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from vitcompress.errors import UserError

if TYPE_CHECKING:
    from vitcompress.datasets.streamed import StreamedImages


@dataclass
class ImageSet:
    """One split: ``images`` is uint8 ``N x H x W x 3`` (decoded, or ``StreamedImages`` decoded when read);
    ``labels`` is int64 ``N``."""

    images: torch.Tensor | StreamedImages
    labels: torch.Tensor
    classes: list[str]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def size(self) -> int:
        """Stored side length in pixels (images are square)."""
        return int(self.images.shape[1])

    @property
    def streamed(self) -> bool:
        return not isinstance(self.images, torch.Tensor)

    def subset(self, indices: torch.Tensor) -> ImageSet:
        """The images at ``indices``; a streamed set's subset is lazy (nothing is decoded)."""
        images = self.images[indices] if isinstance(self.images, torch.Tensor) else self.images.select(indices)
        return ImageSet(images, self.labels[indices], self.classes)

    def read(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixels and labels of ``indices``; a streamed set decodes them now and drops the unreadable ones."""
        if isinstance(self.images, torch.Tensor):
            return self.images[indices], self.labels[indices]
        pixels, kept = self.images.read(indices)
        return pixels, self.labels[kept]


@dataclass
class DataSplits:
    """Train / validation / test splits of one dataset, plus where they came from."""

    train: ImageSet
    val: ImageSet | None
    test: ImageSet
    classes: list[str]
    description: dict

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def check_classes(expected: list[str], found: list[str], source: str) -> None:
    """A model trained on ``expected`` classes can only be scored on data with the same classes."""
    if expected != found:
        raise UserError(f"the model was trained on {len(expected)} classes {_preview(expected)} but {source} has "
                        f"{len(found)} classes {_preview(found)}", "evaluate on the dataset the model was trained for")


def _preview(names: list[str]) -> str:
    return "[" + ", ".join(names[:5]) + (", ...]" if len(names) > 5 else "]")


def holdout_split(train: ImageSet, fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """Split ``fraction`` of ``train`` off as a validation set, stratified by class and seeded."""
    kept, held = stratified_split(train.labels, len(train.classes), fraction, seed)
    return train.subset(kept), train.subset(held)


def stratified_split(labels: torch.Tensor, num_classes: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted indices ``(kept, held)``: ``round(fraction x count)`` of each class held out, seeded.

    Works on labels alone, so a file list can be sampled before anything is decoded.
    """
    gen = torch.Generator().manual_seed(seed)
    held_idx, kept_idx = [], []
    for label in range(num_classes):
        idx = torch.nonzero(labels == label).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_held = int(round(len(idx) * fraction))
        held_idx.append(idx[:n_held])
        kept_idx.append(idx[n_held:])
    return torch.cat(kept_idx).sort().values, torch.cat(held_idx).sort().values
