"""PyTorch on an artifact: eager, bf16 autocast, torch.compile and CUDA graphs."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from vitcompress.runtimes.base import Runtime
from vitcompress.sources import ModelSource


class TorchRuntime(Runtime):
    name = "torch"
    kinds = ("artifact",)
    autocast: torch.dtype | None = None  # run under autocast to this dtype (TorchBf16Runtime)

    def __init__(self, source: ModelSource, threads: int | None = None, max_batch: int | None = None) -> None:
        from vitcompress.artifact import load_model

        if threads:
            torch.set_num_threads(threads)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        self.model, _ = load_model(source.path, self.device)
        self.forward = self._compile(self.model)

    def _compile(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    @torch.no_grad()
    def run(self, batch: np.ndarray) -> np.ndarray:
        with torch.autocast(self.device, dtype=self.autocast or torch.float32, enabled=self.autocast is not None):
            out = self.forward(torch.from_numpy(batch).to(self.device)).float()
        return out.cpu().numpy()  # .cpu() waits for the GPU

    def memory_bytes(self) -> int | None:
        return torch.cuda.max_memory_allocated() if self.device == "cuda" else None


class TorchBf16Runtime(TorchRuntime):
    """bf16 autocast: tensor cores on GPUs, AMX/AVX-512 BF16 on CPUs that have them."""

    name = "torch-bf16"
    autocast = torch.bfloat16

    def precision(self, source: ModelSource) -> str:
        return "bf16 autocast" if source.precision == "fp32" else f"{source.precision} + bf16 autocast"


class TorchCompileRuntime(TorchRuntime):
    name = "torch-compile"
    compile_mode: ClassVar[str] = "default"  # torch.compile's mode

    @classmethod
    def _missing(cls) -> str | None:
        return None if hasattr(torch, "compile") else "this torch has no torch.compile"

    def _compile(self, model: torch.nn.Module) -> torch.nn.Module:
        # A graph per batch size, as a deployment with fixed batches gets: the default turns shapes dynamic at
        # the second size seen, and every later size is then timed through one shape-generic graph (docs/bench.md).
        return torch.compile(model, dynamic=False, mode=self.compile_mode)


class TorchCudaGraphsRuntime(TorchCompileRuntime):
    """torch.compile's reduce-overhead mode: each batch size's compiled forward recorded once as a CUDA graph and
    replayed, so a small, launch-bound model costs one launch per batch instead of one per kernel (on the H100
    the CIFAR ViT's eager forward took ~2 ms at batch 1 to 32 alike, docs/results.md)."""

    name = "torch-cudagraphs"
    compile_mode = "reduce-overhead"

    @classmethod
    def _missing(cls) -> str | None:
        return super()._missing() or (None if torch.cuda.is_available() else "CUDA graphs need an NVIDIA GPU")
