"""Runtimes: the one way bench, serve and predict run a model, whatever it is and wherever it runs.

Each runtime is a small class in :data:`RUNTIMES` with the same shape: ``unavailable(source)``
says why it cannot run that model here (``None`` when it can), the constructor loads it, and
``run(batch)`` maps the model's input (see :meth:`ModelSource.prepare`) to logits. A new backend
is one class here.
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np
import torch

from vitcompress.errors import require
from vitcompress.sources import ModelSource


class Runtime(ABC):
    name: ClassVar[str]
    kinds: ClassVar[tuple[str, ...]]  # the ModelSource kinds it runs
    device: str = "cpu"
    max_batch: int | None = None  # the largest batch it takes where it has a limit of its own (a Triton server's)

    @classmethod
    def unavailable(cls, source: ModelSource) -> str | None:
        if source.kind not in cls.kinds:
            return f"runs {' or '.join(cls.kinds)} models, not {source.kind}"
        return cls._missing()

    @classmethod
    def nothing_to_run(cls) -> str:
        """Why a backend that was asked for measured nothing: it cannot run here, or no input is a model it runs."""
        return cls._missing() or f"runs {' or '.join(cls.kinds)} models, and none of the inputs is one"

    @classmethod
    def _missing(cls) -> str | None:
        return None

    @abstractmethod
    def __init__(self, source: ModelSource, threads: int | None = None, max_batch: int | None = None) -> None:
        """Load ``source``. ``max_batch`` is the largest batch the caller will send: a runtime that is sized for
        its batches (the Triton server's dynamic batcher) is sized for it; the others take any batch."""

    def batch_limit(self, source: ModelSource, wanted: int) -> int:
        """``wanted``, capped by what the model file takes (an engine's profile) and by this runtime's own limit."""
        limit = source.batch_limit(wanted)
        return min(limit, self.max_batch) if self.max_batch else limit

    @abstractmethod
    def run(self, batch: np.ndarray) -> np.ndarray: ...

    def close(self) -> None:  # noqa: B027 (most runtimes hold nothing to release)
        """Release what the runtime holds (a server, a GPU context)."""

    def memory_bytes(self) -> int | None:
        """Peak device memory since loading, where the runtime can tell (CUDA); ``None`` on CPUs."""
        return None

    def server_rss_bytes(self) -> int | None:
        """Peak RSS of the processes that serve the model besides this one (a Triton server's); ``None`` if none."""
        return None

    def precision(self, source: ModelSource) -> str:
        """The arithmetic it runs the model in (the model's own, unless the runtime changes it)."""
        return source.precision


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


class OrtRuntime(Runtime):
    """ONNX Runtime with one execution provider (the CPU provider as fallback for unsupported nodes)."""

    name = "ort-cpu"
    kinds = ("onnx",)
    provider = "CPUExecutionProvider"

    @classmethod
    def _missing(cls) -> str | None:
        import onnxruntime

        if cls.provider not in onnxruntime.get_available_providers():
            return f"this onnxruntime has no {cls.provider} (install onnxruntime-gpu on a machine with a GPU)"
        return None

    def __init__(self, source: ModelSource, threads: int | None = None, max_batch: int | None = None) -> None:
        from vitcompress.export.onnx_runtime import ort_runner, ort_session

        providers = (self.provider,) if self.provider == "CPUExecutionProvider" else (self.provider, "CPUExecutionProvider")
        self.device = "cpu" if self.provider == "CPUExecutionProvider" else "cuda"
        self._run = ort_runner(ort_session(source.file, threads=threads, providers=providers))

    def run(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self._run(batch), dtype=np.float32)


class OrtCudaRuntime(OrtRuntime):
    name = "ort-cuda"
    provider = "CUDAExecutionProvider"


class OrtTensorRTRuntime(OrtRuntime):
    name = "ort-trt"
    provider = "TensorrtExecutionProvider"


class TensorRTRuntime(Runtime):
    name = "tensorrt"
    kinds = ("engine",)
    device = "cuda"

    @classmethod
    def _missing(cls) -> str | None:
        if importlib.util.find_spec("tensorrt") is None:
            return "TensorRT is not installed (pip install 'vitcompress[tensorrt]' on a machine with an NVIDIA GPU)"
        return None if torch.cuda.is_available() else "no CUDA GPU"

    def __init__(self, source: ModelSource, threads: int | None = None, max_batch: int | None = None) -> None:
        from vitcompress.export.tensorrt import TensorRTRunner

        self.runner = TensorRTRunner(source.file)

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.runner.run(batch)


class TritonRuntime(Runtime):
    """A local Triton Inference Server hosting the model (``vitcompress serve``), called over HTTP."""

    name = "triton"
    kinds = ("onnx", "engine")

    @classmethod
    def _missing(cls) -> str | None:
        from vitcompress.serving import server_unavailable

        return server_unavailable()

    def __init__(self, source: ModelSource, threads: int | None = None, max_batch: int | None = None) -> None:
        from vitcompress.serving import DEFAULT_MAX_BATCH_SIZE, TritonServer

        self.server = TritonServer(source, threads=threads, http_port=0, grpc_port=0, metrics_port=0,
                                   max_batch_size=max(max_batch or 0, DEFAULT_MAX_BATCH_SIZE))
        self.max_batch = self.server.max_batch_size  # Triton refuses larger requests
        self.server.start()
        self.client = self.server.client()

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.client(batch)

    def close(self) -> None:
        self.server.stop()

    def server_rss_bytes(self) -> int | None:
        return self.server.peak_rss()  # the model itself runs in this process, called by PyTriton's proxy


RUNTIMES: dict[str, type[Runtime]] = {cls.name: cls for cls in (
    TorchRuntime, TorchBf16Runtime, TorchCompileRuntime, TorchCudaGraphsRuntime, OrtRuntime, OrtCudaRuntime, OrtTensorRTRuntime,
    TensorRTRuntime, TritonRuntime)}

DEFAULT_RUNTIME = {"artifact": "torch", "onnx": "ort-cpu", "engine": "tensorrt"}


def open_runtime(source: ModelSource, backend: str | None = None, threads: int | None = None,
                 max_batch: int | None = None) -> Runtime:
    """``backend`` (default: the usual one for the source's kind) loaded with ``source``, for batches up to
    ``max_batch``; one line if it cannot run it."""
    name = backend or DEFAULT_RUNTIME[source.kind]
    require(name in RUNTIMES, f"backend {name!r} is unknown", f"use one of {', '.join(RUNTIMES)}")
    reason = RUNTIMES[name].unavailable(source)
    require(reason is None, f"{name} cannot run {source.path}: {reason}", "pick another backend")
    return RUNTIMES[name](source, threads=threads, max_batch=max_batch)
