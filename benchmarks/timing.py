"""Timing of exported models for the CPU benchmarks: ONNX Runtime or OpenVINO, interleaved short rounds, ratios
against a baseline taken round by round (or, bracketed, from the baseline's timings on either side of each variant)."""

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


def time_variants(paths: dict[str, Path], threads: int, rounds: int, size: int = 224,
                  baseline_of: Callable[[str], str] | None = None) -> dict[str, dict]:
    """Median latency per variant and batch, interleaved over ``rounds`` so load on the machine hits all alike.

    Rounds are short (about a second a variant and batch): this shared VM's speed drifts up to 2x within minutes,
    and a ratio is only fair between timings taken close together, so many short rounds beat a few long ones.
    With ``baseline_of`` (a variant's name to its baseline's name), each round times every variant between two
    timings of its baseline, and the variant's ``bracket_ms`` holds their mean: its ratio then compares timings a
    few seconds apart, not a whole round apart (:func:`ratio_per_round` uses it)."""
    runners = {name: runner(path, threads) for name, path in paths.items()}
    inputs = {b: np.random.default_rng(0).standard_normal((b, 3, size, size)).astype(np.float32) for b in BATCHES}
    per_round: dict[str, dict[int, list[float]]] = {n: {b: [] for b in BATCHES} for n in paths}
    bracket: dict[str, dict[int, list[float]]] = {}
    for run, _ in runners.values():  # warm every runner up before the first round
        run(inputs[1]), run(inputs[32])
    order = round_order(list(paths), baseline_of)
    for _ in range(rounds):
        timed = [time_both_batches(runners[name][0], inputs) for name in order]
        for i, name in enumerate(order):
            for b in BATCHES:
                per_round[name][b].append(timed[i][b])
                if baseline_of is not None and baseline_of(name) != name:  # between two timings of its baseline
                    bracket.setdefault(name, {bb: [] for bb in BATCHES})[b].append((timed[i - 1][b] + timed[i + 1][b]) / 2)
    return {name: {"arithmetic": runners[name][1], "rounds_ms": {str(b): v for b, v in times.items()},
                   "latency_ms": {str(b): statistics.median(v) for b, v in times.items()},
                   "size_bytes": sum(f.stat().st_size for f in model_files(paths[name])),
                   **({"bracketed_by": baseline_of(name), "bracket_ms": {str(b): v for b, v in bracket[name].items()}}
                      if name in bracket else {})}
            for name, times in per_round.items()}


def round_order(names: list[str], baseline_of: Callable[[str], str] | None) -> list[str]:
    """One round's order: ``names`` as given, or with ``baseline_of`` each baseline, then each of its variants
    followed by the baseline again."""
    if baseline_of is None:
        return list(names)
    order: list[str] = []
    for base in dict.fromkeys(baseline_of(name) for name in names):
        order.append(base)
        for name in names:
            if name != base and baseline_of(name) == base:
                order += [name, base]
    return order


def time_both_batches(run: Callable[[np.ndarray], np.ndarray], inputs: dict[int, np.ndarray]) -> dict[int, float]:
    """Milliseconds of ``run`` at batch 1 (median of at least 5 calls within a second) and at batch 32 (one call)."""
    return {1: median_ms(lambda: run(inputs[1]), warmup=1, min_iters=5, max_seconds=1),
            32: median_ms(lambda: run(inputs[32]), warmup=0, min_iters=1, max_seconds=1)}


def ratio_per_round(timing: dict[str, dict], baseline: str, variant: str, batch: str) -> list[float]:
    """How many times faster ``variant`` ran than ``baseline`` in each round: against the baseline's timings on
    either side of it where the run bracketed it (see :func:`time_variants`), else against the baseline's timing in
    the same round."""
    ours = timing[variant]
    if ours.get("bracketed_by") == baseline:
        base = ours["bracket_ms"][batch]
    else:
        base = timing[baseline]["rounds_ms"][batch]
    return [round(b / v, 3) for b, v in zip(base, ours["rounds_ms"][batch], strict=True)]
