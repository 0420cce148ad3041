"""Latency: warm-up, then a median over repeated timed calls (torch models, or any callable)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import nn


def median_ms(call: Callable[[], object], warmup: int = 3, min_iters: int = 5, max_seconds: float = 3.0,
              max_iters: int = 200) -> float:
    """Median milliseconds of ``call()``: at least ``min_iters`` timed calls, no new ones after ``max_seconds``.

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
    return round(statistics.median(times), 3)


@torch.no_grad()
def torch_latency_ms(model: nn.Module, img_size: int, batch: int, device: torch.device,
                     warmup: int = 3, min_iters: int = 5, max_seconds: float = 3.0) -> float:
    """Median milliseconds of one forward pass at ``batch`` (random inputs, eval mode)."""
    was_training = model.training
    model.eval()
    x = torch.randn(batch, 3, img_size, img_size, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def forward() -> None:
        model(x)
        sync()

    latency = median_ms(forward, warmup, min_iters, max_seconds)
    model.train(was_training)
    return latency
