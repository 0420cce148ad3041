"""ONNX Runtime sessions, created one way everywhere (verification, bench, serve, predict)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vitcompress.errors import UserError

QUIET = 3  # ORT's log severity: errors only (no notices about unused initializers and the like)
# Flush denormals to zero (FTZ/DAZ). A softmax over masked positions (Swin's shifted windows add -100) leaves
# probabilities near 1e-44, below float32's normal range; x86 multiplies those some 40x slower, and the MatMul
# that takes them (softmax @ v) took 264 of 914 ms of swin_tiny on the CPU. Such values are zero to any output.
DENORMALS_AS_ZERO = "session.set_denormal_as_zero"


def ort_session(path: str | Path, threads: int | None = None,
                providers: tuple[str, ...] = ("CPUExecutionProvider",)) -> Any:
    """An ``InferenceSession`` for ``path`` with all graph optimisations on; ``threads`` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = QUIET
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry(DENORMALS_AS_ZERO, "1")  # ORT's pool threads; the caller: ort_runner
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), options, providers=list(providers))
    except Exception as exc:  # ORT raises its own exception types, one per failure kind
        raise UserError(f"ONNX Runtime cannot load {path} ({str(exc).splitlines()[0][:300]})",
                        "re-export the model with `vitcompress export`") from None


def ort_runner(session: Any) -> Callable[[np.ndarray], np.ndarray]:
    """The session as a function from an input batch to its first output, denormals flushed on the calling thread
    too (ORT's own option reaches only the threads of its pool, and the caller's thread does part of the work)."""
    import torch

    name = session.get_inputs()[0].name

    def run(batch: np.ndarray) -> np.ndarray:
        torch.set_flush_denormal(True)  # per call: the same runner may be called from another thread
        return session.run(None, {name: batch})[0]

    return run


def run_in_batches(run: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray, batch: int) -> np.ndarray:
    """``run`` over ``inputs``, ``batch`` at a time, as one float32 array."""
    return np.concatenate([run(inputs[i : i + batch]) for i in range(0, len(inputs), batch)]).astype(np.float32)
