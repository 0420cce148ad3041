"""Torch latency of a model on its device: warm-up, then a median over repeated timed calls."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn


@torch.no_grad()
def torch_latency_ms(model: nn.Module, img_size: int, batch: int, device: torch.device,
                     warmup: int = 3, min_iters: int = 5, max_seconds: float = 3.0) -> float:
    """Median milliseconds of one forward pass at ``batch`` (random inputs, eval mode).

    Runs at least ``min_iters`` timed calls and stops adding calls after ``max_seconds``.
    """
    was_training = model.training
    model.eval()
    x = torch.randn(batch, 3, img_size, img_size, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        model(x)
    sync()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < min_iters or (time.perf_counter() - started < max_seconds and len(times) < 200):
        t0 = time.perf_counter()
        model(x)
        sync()
        times.append((time.perf_counter() - t0) * 1000)
    model.train(was_training)
    return round(statistics.median(times), 3)
