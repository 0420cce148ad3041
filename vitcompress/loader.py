"""Batches straight out of a uint8 image tensor, sharded across ranks like ``DistributedSampler``.

When the device is a GPU and the split fits, the whole tensor is moved there once, so a batch is
one index operation on the device: no worker processes, no host-to-device copy per step.
A streamed split (``--stream``) is read by ``DataLoader`` worker processes instead, each decoding
one whole batch of the same indices, so both forms give the same batches in the same order.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from vitcompress.datasets.imageset import ImageSet
from vitcompress.errors import UserError

DEVICE_MEMORY_SHARE = 0.25  # keep a split on the GPU only if it takes at most this share of free memory
PREFETCH_BATCHES = 4  # batches each loader worker decodes ahead
SHARED_MEMORY = "/dev/shm"  # where workers hand decoded batches to the training process (torch's reducers)


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
        self.data = data
        on_device = device.type == "cuda" and not data.streamed and _fits_on_device(data.images, device)
        self.labels = data.labels.to(device) if on_device else data.labels
        self.images = data.images.to(device) if on_device else data.images

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
        chunks = self._indices().to(self.labels.device).split(self.batch_size)
        if self.drop_last and chunks and len(chunks[-1]) < self.batch_size:
            chunks = chunks[:-1]
        batches = self._decoded(chunks) if self.data.streamed else ((self.images[c], self.labels[c]) for c in chunks)
        for images, labels in batches:
            if len(labels):  # a streamed batch of only unreadable images is empty
                yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)

    def _decoded(self, chunks: tuple[torch.Tensor, ...]) -> DataLoader:
        """The batches of a streamed split, decoded ahead by worker processes, in order."""
        workers = min(self.data.images.workers, len(chunks))
        if workers:
            check_shared_memory(workers * PREFETCH_BATCHES * self.batch_size * math.prod(self.data.images.shape[1:]))
        # Its own generator: the workers' base seed would otherwise be drawn from the global RNG, and every
        # augmentation after it would differ from the cached path's.
        return DataLoader(_BatchReads(self.data, chunks), batch_size=None, num_workers=workers,
                          pin_memory=self.device.type == "cuda", prefetch_factor=PREFETCH_BATCHES if workers else None,
                          generator=torch.Generator())


class _BatchReads(Dataset):
    """Item ``k``: batch ``k`` of ``chunks`` read (decoded) from ``data``."""

    def __init__(self, data: ImageSet, chunks: tuple[torch.Tensor, ...]) -> None:
        self.data, self.chunks = data, chunks

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.data.read(self.chunks[k])


def read_all(data: ImageSet) -> tuple[torch.Tensor, torch.Tensor]:
    """All of ``data``'s pixels and labels in memory (a streamed set is decoded by the loader's workers)."""
    if not data.streamed:
        return data.images, data.labels
    batches = list(BatchLoader(data, 256, torch.device("cpu"), shuffle=False, drop_last=False))
    if not batches:
        return torch.empty((0, *data.images.shape[1:]), dtype=torch.uint8), data.labels[:0]
    return torch.cat([images for images, _ in batches]), torch.cat([labels for _, labels in batches])


def check_shared_memory(needed: int) -> None:
    """Refuse to start loader workers that cannot hand over their batches: a worker that fails to write one to
    shared memory prints a traceback and the loop waits for it for ever. Containers get 64 MB of /dev/shm."""
    try:
        free = shutil.disk_usage(SHARED_MEMORY).free
    except OSError:  # no /dev/shm (not Linux): torch shares memory another way
        return
    mb = 1 << 20
    if free < needed:
        raise UserError(f"{SHARED_MEMORY} has {free / mb:.0f} MB free, and --stream's loader workers need about "
                        f"{needed / mb:.0f} MB of it for the batches they decode ahead",
                        "start the container with --ipc=host or a larger --shm-size, or pass fewer --workers "
                        "or a smaller --batch-size")


def _fits_on_device(images: torch.Tensor, device: torch.device) -> bool:
    free, _ = torch.cuda.mem_get_info(device)
    return images.numel() * images.element_size() <= DEVICE_MEMORY_SHARE * free
