"""A local Triton Inference Server hosting the model, called over HTTP (what ``vitcompress serve`` runs)."""

from __future__ import annotations

import numpy as np

from vitcompress.runtimes.base import Runtime
from vitcompress.sources import ModelSource


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
