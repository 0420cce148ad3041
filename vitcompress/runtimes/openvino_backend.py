"""OpenVINO on the CPU: an OpenVINO IR export (``export --format openvino``) or the standard ONNX graph.

OpenVINO picks the arithmetic itself: on CPUs with AMX or AVX-512 BF16 it runs an FP32 model in bf16 unless told
otherwise, and an INT8 model's layers outside the INT8 ones too. ``openvino`` keeps that choice and reports it
(``precision()``: what the compiled model says it used); ``openvino-fp32`` asks for FP32 arithmetic.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Any, ClassVar

import numpy as np

from vitcompress.runtimes.base import Runtime
from vitcompress.sources import ModelSource

OPENVINO_TYPES = {"bf16": "bf16", "f32": "fp32", "f16": "fp16"}  # OpenVINO's element type names -> ours


def openvino_missing() -> str | None:
    """Why OpenVINO cannot run here (``None`` when it can)."""
    return None if importlib.util.find_spec("openvino") else "OpenVINO is not installed (pip install openvino)"


@functools.cache
def openvino_core() -> Any:
    """One ``openvino.Core`` for the process: a Core made per model and dropped while its compiled model lived on
    crashed the process (a segfault) once several models had come and gone."""
    import openvino as ov

    return ov.Core()


class OpenVINOModel:
    """``path`` (``.xml`` or ``.onnx``) compiled for the CPU for latency (one stream), with ``threads`` and the
    inference ``precision`` (an OpenVINO hint such as ``f32``; ``None``: OpenVINO's own choice), called a batch at
    a time (any batch size: the graph's batch axis is dynamic)."""

    def __init__(self, path: str, threads: int | None = None, precision: str | None = None) -> None:
        # denormals flushed to zero, as in our ONNX Runtime sessions (export/onnx_runtime.py says why)
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "CPU_DENORMALS_OPTIMIZATION": True}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        if precision:
            config["INFERENCE_PRECISION_HINT"] = precision
        self.compiled = openvino_core().compile_model(path, "CPU", config)
        self.request = self.compiled.create_infer_request()

    @property
    def arithmetic(self) -> str:
        """The floating-point arithmetic it runs in: ``bf16``, ``fp32`` or ``fp16``."""
        used = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        return OPENVINO_TYPES.get(used, used)

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.request.infer([batch])
        return np.array(self.request.get_output_tensor(0).data, dtype=np.float32)  # a copy: the request reuses it


class OpenVINORuntime(Runtime):
    name = "openvino"
    kinds = ("ir", "onnx")
    precision_hint: ClassVar[str | None] = None  # OpenVINO's own choice (bf16 on AMX / AVX-512 BF16 CPUs)

    @classmethod
    def unavailable(cls, source: ModelSource) -> str | None:
        reason = super().unavailable(source)
        if reason is None and source.kind == "onnx" and source.graph == "ort":
            return ("reads the standard ONNX graph, not ONNX Runtime's fused one (com.microsoft ops): export with "
                    "--format openvino, or --target standard")
        return reason

    @classmethod
    def _missing(cls) -> str | None:
        return openvino_missing()

    def __init__(self, source: ModelSource, threads: int | None = None, max_batch: int | None = None) -> None:
        self.model = OpenVINOModel(str(source.file), threads, self.precision_hint)
        self.used = self.model.arithmetic

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.model.run(batch)

    def precision(self, source: ModelSource) -> str:
        """The model's precision and the arithmetic OpenVINO chose around it, e.g. ``int8 + bf16``."""
        if source.precision == "int8":
            return f"int8 + {self.used}"
        return self.used


class OpenVINOFp32Runtime(OpenVINORuntime):
    """OpenVINO told to keep FP32 arithmetic (``INFERENCE_PRECISION_HINT f32``), as the model was verified."""

    name = "openvino-fp32"
    precision_hint = "f32"
