"""Process-group setup for ``torchrun`` (DDP): one process per device, rank 0 writes files."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from vitcompress.errors import UserError


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

    def barrier(self) -> None:
        if self.distributed:  # NCCL wants the device named, or it guesses (and warns)
            dist.barrier(device_ids=[self.device.index]) if self.device.type == "cuda" else dist.barrier()


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


ONE_GPU_FIX = "run it without torchrun: it uses one GPU (finetune is the stage that trains on several)"


def require_one_process(command: str, fix: str = ONE_GPU_FIX) -> None:
    """Refuse to run under a multi-process ``torchrun``: every process would write the same output."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1:
        raise UserError(f"`vitcompress {command}` runs in one process, and torchrun started {world_size}", fix)


def init_distributed(device_name: str) -> DistContext:
    """Join the process group when started by ``torchrun`` (NCCL on GPUs, gloo on CPUs)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if world_size <= 1:
        return DistContext(device=device)
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(dist.get_rank(), world_size, local_rank, device)


def shutdown_distributed(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()
