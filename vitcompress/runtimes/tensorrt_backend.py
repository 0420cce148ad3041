"""A TensorRT engine (``export --format tensorrt``), on an NVIDIA GPU."""

from __future__ import annotations

import importlib.util

import numpy as np
import torch

from vitcompress.runtimes.base import Runtime
from vitcompress.sources import ModelSource


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
