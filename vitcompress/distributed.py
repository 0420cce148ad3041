"""Process-group setup for ``torchrun`` (DDP): one process per device, rank 0 writes files."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from vitcompress.errors import UserError

T = TypeVar("T")

# How long ranks wait for data that one rank (or one per node) prepares alone: decoding a large dataset into the
# cache can take far longer than NCCL's default collective timeout of 10 minutes, after which its watchdog aborts.
DATA_WAIT = timedelta(hours=12)
_data_wait_group: dist.ProcessGroup | None = None  # made once per process group, see _patient_group


@dataclass
class DistContext:
    """Where this process runs and which part of the job it owns."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def broadcast_int(self, value: int) -> int:
        """Rank 0's ``value`` on every rank (itself when not distributed)."""
        if not self.distributed:
            return value
        tensor = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.broadcast(tensor, src=0)
        return int(tensor.item())

    def broadcast_object(self, value: T) -> T:
        """Rank 0's ``value`` (any picklable object this program made, never a user's file) on every rank."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0, device=self.device if self.device.type == "cuda" else None)
        return box[0]

    def broadcast_state(self, module: nn.Module) -> None:
        """Make every rank's parameters and buffers rank 0's, in place.

        For state each rank computed alone that must agree exactly, e.g. calibrated INT8 ranges: the same
        images on different GPUs can round differently.
        """
        if self.distributed:
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, src=0)

    def main_first(self, work: Callable[[], T]) -> T:
        """Rank 0 runs ``work`` first (building any cache it fills, downloading a dataset), then the other ranks
        run it (on other machines they build their own disk's cache, one per machine through its file lock); no
        rank goes on until all have. The waits go through a gloo group with the :data:`DATA_WAIT` timeout."""
        if not self.distributed:
            return work()
        group = _patient_group()
        result = work() if self.is_main else None
        dist.barrier(group=group)
        if not self.is_main:
            result = work()
        dist.barrier(group=group)  # before any NCCL collective, whose 10 minutes would start while others build
        return result  # type: ignore[return-value]

    def barrier(self) -> None:
        if self.distributed:  # NCCL wants the device named, or it guesses (and warns)
            dist.barrier(device_ids=[self.device.index]) if self.device.type == "cuda" else dist.barrier()


def _patient_group() -> dist.ProcessGroup:
    """A gloo group of all ranks with the long :data:`DATA_WAIT` timeout (every rank calls this at the same point,
    as ``new_group`` requires; it is made on first use and dropped with the process group)."""
    global _data_wait_group
    if _data_wait_group is None:
        _data_wait_group = dist.new_group(backend="gloo", timeout=DATA_WAIT)
    return _data_wait_group


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks the GPU if there is one; asking for CUDA without one is a user error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {name} was asked for but CUDA is not available on this machine",
                            "use --device cpu (or auto), or install a CUDA build of torch")
        return torch.device("cuda", local_rank) if name == "cuda" else torch.device(name)
    if name != "cpu":
        raise UserError(f"unknown --device {name!r}", "use auto, cpu, cuda or cuda:N")
    return torch.device("cpu")


def init_distributed(device_name: str) -> DistContext:
    """Join the process group when started by ``torchrun`` (NCCL for CUDA tensors, gloo for CPU ones)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if world_size <= 1:
        return DistContext(device=device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():  # both backends: a pipeline's group serves stages on either device
        dist.init_process_group(backend="cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
    return DistContext(dist.get_rank(), world_size, local_rank, device)


@contextlib.contextmanager
def process_group(device_name: str) -> Iterator[DistContext]:
    """This process's :class:`DistContext` for the duration; under ``torchrun`` the process group is joined,
    and left at the end unless it was already there (a pipeline's group outlives its stages)."""
    global _data_wait_group
    joined = not dist.is_initialized()
    ctx = init_distributed(device_name)
    try:
        yield ctx
    finally:
        if joined and ctx.distributed and dist.is_initialized():
            dist.destroy_process_group()  # every group, the data-wait one too
            _data_wait_group = None
