"""ONNX Runtime on an ONNX export, with one execution provider (CPU, CUDA or TensorRT)."""

from __future__ import annotations

import numpy as np

from vitcompress.runtimes.base import Runtime
from vitcompress.sources import ModelSource


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
