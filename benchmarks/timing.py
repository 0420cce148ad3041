"""Timing of exported models for the CPU benchmarks: ONNX Runtime or OpenVINO, interleaved short rounds, ratios
against a baseline taken round by round."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vitcompress.export.onnx import model_files
from vitcompress.export.onnx_runtime import ort_runner, ort_session
from vitcompress.latency import median_ms

BATCHES = (1, 32)


def runner(path: Path, threads: int) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    """A call of the model file in the runtime its variant names, and the arithmetic it runs in."""
    if path.suffix == ".xml":
        from vitcompress.runtimes.openvino_backend import OpenVINOModel

        model = OpenVINOModel(str(path), threads)
        return model.run, model.arithmetic
    return ort_runner(ort_session(path, threads=threads)), "as the graph says (fp32, int8)"


def time_variants(paths: dict[str, Path], threads: int, rounds: int, size: int = 224) -> dict[str, dict]:
    """Median latency per variant and batch, interleaved over ``rounds`` so load on the machine hits all alike.

    Rounds are short (about a second a variant and batch): this shared VM's speed drifts up to 2x within minutes,
    and a ratio is only fair between timings taken close together, so many short rounds beat a few long ones."""
    runners = {name: runner(path, threads) for name, path in paths.items()}
    inputs = {b: np.random.default_rng(0).standard_normal((b, 3, size, size)).astype(np.float32) for b in BATCHES}
    per_round: dict[str, dict[int, list[float]]] = {n: {b: [] for b in BATCHES} for n in paths}
    for run, _ in runners.values():  # warm every runner up before the first round
        run(inputs[1]), run(inputs[32])
    for _ in range(rounds):
        for name, (run, _) in runners.items():
            per_round[name][1].append(median_ms(lambda run=run: run(inputs[1]), warmup=1, min_iters=5, max_seconds=1))
            per_round[name][32].append(median_ms(lambda run=run: run(inputs[32]), warmup=0, min_iters=1, max_seconds=1))
    return {name: {"arithmetic": runners[name][1], "rounds_ms": {str(b): v for b, v in times.items()},
                   "latency_ms": {str(b): statistics.median(v) for b, v in times.items()},
                   "size_bytes": sum(f.stat().st_size for f in model_files(paths[name]))}
            for name, times in per_round.items()}


def ratio_per_round(timing: dict[str, dict], baseline: str, variant: str, batch: str) -> list[float]:
    """How many times faster ``variant`` ran than ``baseline`` in each round."""
    return [round(b / v, 3) for b, v in zip(timing[baseline]["rounds_ms"][batch], timing[variant]["rounds_ms"][batch],
                                             strict=True)]
