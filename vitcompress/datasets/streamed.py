"""Images decoded from their files when a batch is read, not cached: for data too large to decode whole.

``--stream`` gives a split whose ``images`` is a ``StreamedImages``: the file list, the square storage
size and nothing decoded. The loader reads it in worker processes (``DataLoader``), each decoding a
whole batch to the same uint8 ``S x S x 3`` pixels the cache would hold (``items.decode``),
so augmentation, evaluation and everything downstream are unchanged. An image that cannot be read
is dropped from its batch with a warning naming it (the cache skips it once, when decoding).
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch

from vitcompress.datasets.imageset import ImageSet
from vitcompress.datasets.items import ImageItems, SplitItems, decode


def default_workers() -> int:
    """One decoding worker per CPU core this process may use, shared among the processes of this machine."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def streamed_splits(splits: dict[str, SplitItems], classes: list[str], size: int, workers: int) -> dict[str, ImageSet]:
    """The splits with nothing decoded: each reads its images as batches are drawn."""
    return {split: ImageSet(StreamedImages(items, size, workers=workers), torch.from_numpy(labels), classes)
            for split, (items, labels) in splits.items()}


class StreamedImages:
    """uint8 ``N x S x S x 3`` images that are decoded when read: an ``ImageSet``'s images without a cache.

    ``select`` makes a lazy subset (validation split, ``--train-subset``, a test sample) without decoding.
    """

    def __init__(self, items: ImageItems, size: int, positions: np.ndarray | None = None, workers: int = 0) -> None:
        self.items, self.side = items, size
        self.positions = np.arange(len(items)) if positions is None else positions
        self.workers = workers or default_workers()

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self), self.side, self.side, 3)

    def select(self, indices: torch.Tensor | np.ndarray) -> StreamedImages:
        return StreamedImages(self.items, self.side, self.positions[np.asarray(indices)], self.workers)

    def read(self, indices: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode images ``indices`` (positions in this set): ``(pixels, kept)``, ``kept`` the indices that could be read.

        Runs in the calling process; the loader calls it from its workers, one batch each.
        """
        indices = torch.as_tensor(indices, dtype=torch.long)
        pixels, kept = [], []
        for index in indices.tolist():
            item = int(self.positions[index])
            image = decode(self.items, item, self.side)
            if image is None:
                warnings.warn(f"skipped unreadable image {self.items.name(item)}", stacklevel=2)
                continue
            pixels.append(torch.from_numpy(image))
            kept.append(index)
        if not pixels:
            return torch.empty((0, self.side, self.side, 3), dtype=torch.uint8), torch.empty(0, dtype=torch.long)
        return torch.stack(pixels), torch.tensor(kept, dtype=torch.long)
