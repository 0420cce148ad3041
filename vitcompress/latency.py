"""Latency: warm-up, then a median over repeated timed calls (torch models, or any callable)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn


def time_calls(call: Callable[[], object], warmup: int = 3, min_iters: int = 5, max_seconds: float = 3.0,
               max_iters: int = 200) -> list[float]:
    """Milliseconds of each timed ``call()``: at least ``min_iters``, no new ones after ``max_seconds``.

    ``call`` must return only when its work is done (synchronise devices inside it).
    """
    for _ in range(warmup):
        call()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < min_iters or (time.perf_counter() - started < max_seconds and len(times) < max_iters):
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1000)
    return times


def median_ms(call: Callable[[], object], warmup: int = 3, min_iters: int = 5, max_seconds: float = 3.0,
              max_iters: int = 200) -> float:
    """Median milliseconds of ``call()`` (see :func:`time_calls`)."""
    return round(statistics.median(time_calls(call, warmup, min_iters, max_seconds, max_iters)), 3)


def latency_stats(times_ms: list[float]) -> dict[str, float]:
    """p50/p90/p99, mean and standard deviation of a list of latencies, and how many there were."""
    values = np.asarray(times_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"p50_ms": round(float(p50), 3), "p90_ms": round(float(p90), 3), "p99_ms": round(float(p99), 3),
            "mean_ms": round(float(values.mean()), 3), "std_ms": round(float(values.std()), 3), "iters": len(values)}


def torch_runs(model: nn.Module, img_size: int, batches: tuple[int, ...], device: torch.device
               ) -> dict[int, Callable[[], None]]:
    """One forward pass of ``model`` per batch size (random inputs, no gradients, synchronised on CUDA): what
    :func:`vitcompress.timing.local_timer` times. The caller puts the model in eval mode."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    inputs = {b: torch.randn(b, 3, img_size, img_size, device=device) for b in batches}

    def run_at(batch: int) -> Callable[[], None]:
        @torch.no_grad()
        def forward() -> None:
            model(inputs[batch])
            sync()

        return forward

    return {b: run_at(b) for b in batches}


def torch_latency_ms(model: nn.Module, img_size: int, batch: int, device: torch.device,
                     warmup: int = 3, min_iters: int = 5, max_seconds: float = 3.0) -> float:
    """Median milliseconds of one forward pass at ``batch`` (random inputs, eval mode)."""
    was_training = model.training
    forward = torch_runs(model.eval(), img_size, (batch,), device)[batch]
    latency = median_ms(forward, warmup, min_iters, max_seconds)
    model.train(was_training)
    return latency
