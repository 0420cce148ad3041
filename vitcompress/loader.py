"""Batches straight out of a uint8 image tensor, sharded across ranks like ``DistributedSampler``.

When the device is a GPU and the split fits, the whole tensor is moved there once, so a batch is
one index operation on the device: no worker processes, no host-to-device copy per step.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from vitcompress.datasets.imageset import ImageSet

DEVICE_MEMORY_SHARE = 0.25  # keep a split on the GPU only if it takes at most this share of free memory


class BatchLoader:
    """Iterate ``(images uint8 NHWC, labels)`` batches on ``device``.

    Args:
        data: The split to read.
        batch_size: Images per batch on this rank.
        device: Where batches are delivered.
        shuffle: Reshuffle every epoch (seeded by ``seed + epoch``, identical on all ranks).
        drop_last: Drop a last, smaller batch (training) or keep it (evaluation).
        rank, world_size: This process's shard. Training shards are padded to equal length so
            every rank takes the same number of steps; evaluation shards are not padded.
    """

    def __init__(self, data: ImageSet, batch_size: int, device: torch.device, *, shuffle: bool, drop_last: bool,
                 seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.batch_size, self.device, self.shuffle, self.drop_last = batch_size, device, shuffle, drop_last
        self.seed, self.rank, self.world_size, self.epoch = seed, rank, world_size, 0
        on_device = device.type == "cuda" and _fits_on_device(data.images, device)
        self.images = data.images.to(device) if on_device else data.images
        self.labels = data.labels.to(self.images.device)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> torch.Tensor:
        n = len(self.labels)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(n)
        if self.world_size > 1 and self.shuffle:
            total = math.ceil(n / self.world_size) * self.world_size
            order = torch.cat([order, order[: total - n]])
        return order[self.rank :: self.world_size]

    def __len__(self) -> int:
        n = len(self._indices())
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for chunk in self._indices().to(self.images.device).split(self.batch_size):
            if self.drop_last and len(chunk) < self.batch_size:
                return
            images, labels = self.images[chunk], self.labels[chunk]
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)


def _fits_on_device(images: torch.Tensor, device: torch.device) -> bool:
    free, _ = torch.cuda.mem_get_info(device)
    return images.numel() * images.element_size() <= DEVICE_MEMORY_SHARE * free
