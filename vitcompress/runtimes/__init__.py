"""Runtimes: the one way bench, serve, eval and predict run a model, whatever it is and wherever it runs.

Each runtime is a small class (``base.Runtime``) in :data:`RUNTIMES`, one module per backend: PyTorch, ONNX
Runtime, OpenVINO, TensorRT, Triton. A new backend is one class in one module, and one entry here.
"""

from __future__ import annotations

from vitcompress.errors import require
from vitcompress.runtimes.base import Runtime
from vitcompress.runtimes.openvino_backend import OpenVINOFp32Runtime, OpenVINORuntime
from vitcompress.runtimes.ort_backend import OrtCudaRuntime, OrtRuntime, OrtTensorRTRuntime
from vitcompress.runtimes.tensorrt_backend import TensorRTRuntime
from vitcompress.runtimes.torch_backend import TorchBf16Runtime, TorchCompileRuntime, TorchCudaGraphsRuntime, TorchRuntime
from vitcompress.runtimes.triton_backend import TritonRuntime
from vitcompress.sources import ModelSource

RUNTIMES: dict[str, type[Runtime]] = {cls.name: cls for cls in (
    TorchRuntime, TorchBf16Runtime, TorchCompileRuntime, TorchCudaGraphsRuntime, OrtRuntime, OrtCudaRuntime, OrtTensorRTRuntime,
    OpenVINORuntime, OpenVINOFp32Runtime, TensorRTRuntime, TritonRuntime)}

DEFAULT_RUNTIME = {"artifact": "torch", "onnx": "ort-cpu", "ir": "openvino", "engine": "tensorrt"}


def open_runtime(source: ModelSource, backend: str | None = None, threads: int | None = None,
                 max_batch: int | None = None) -> Runtime:
    """``backend`` (default: the usual one for the source's kind) loaded with ``source``, for batches up to
    ``max_batch``; one line if it cannot run it."""
    name = backend or DEFAULT_RUNTIME[source.kind]
    require(name in RUNTIMES, f"backend {name!r} is unknown", f"use one of {', '.join(RUNTIMES)}")
    reason = RUNTIMES[name].unavailable(source)
    require(reason is None, f"{name} cannot run {source.path}: {reason}", "pick another backend")
    return RUNTIMES[name](source, threads=threads, max_batch=max_batch)


__all__ = ["DEFAULT_RUNTIME", "RUNTIMES", "Runtime", "open_runtime"]
