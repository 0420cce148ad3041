"""``vitcompress bench``: every model given, on every runtime that can run it here, at every batch size,
measured in one run on the same images, against the FP32 baseline.

One record per variant x backend x batch: latency (p50/p90/p99/mean/std), throughput, peak memory,
file size, params, MACs; accuracy (top-1, macro F1) and agreement with the baseline's predictions
when ``--data`` is given. The triton backend is also measured under ``--concurrency`` parallel clients.
A backend that cannot run a model here is recorded as skipped, with the reason. Each variant x backend runs
in a fresh Python process (unless ``--in-process``), so that its peak memory is its own.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import platform
import signal
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchmetrics.functional.classification import multiclass_f1_score

from vitcompress import memory
from vitcompress.augment import BatchTransform
from vitcompress.bench_images import EvalImages, eval_images, handed_to_processes
from vitcompress.cliargs import command_line
from vitcompress.config import BenchConfig
from vitcompress.errors import UserError, is_out_of_memory, require
from vitcompress.fsutil import check_output_dir, staged_directory, staging_path
from vitcompress.latency import latency_stats, time_calls
from vitcompress.locks import refuse_if_live
from vitcompress.progress import progress_bar
from vitcompress.runtimes import RUNTIMES, Runtime
from vitcompress.sources import ModelSource, open_source
from vitcompress.timing import TimingMethod, compare, local_timer

ACCURACY_BATCH = 32  # images per call when scoring accuracy
STAGING_SUFFIX = ".tmp-bench"
STOP_TIMEOUT_S = 30.0  # after Ctrl-C, the longest wait for a measuring process to stop its runtime
MAX_TRITON_SECONDS = 60.0  # per concurrency level, whatever --requests says
NO_VARIANT = "(none)"  # a skipped backend that had no model of its kind to run
RSS_ADDED = "peak RSS added to the process by loading and running the model"


@dataclass
class BenchResult:
    path: Path
    results: dict[str, Any]


def bench(cfg: BenchConfig) -> BenchResult:
    """Measure ``cfg.srcs`` and write ``results.json``, ``results.csv``, ``report.md`` and plots to ``cfg.out``."""
    cfg.validate()
    sources = [open_source(src) for src in cfg.srcs]
    paths = [s.path.resolve() for s in sources]
    twice = next((src for src, path in zip(cfg.srcs, paths, strict=True) if paths.count(path) > 1), None)
    require(twice is None, f"{twice} is given more than once", "pass each model once")
    require(len({tuple(s.classes) for s in sources}) == 1, "the models do not share the same classes",
            "bench variants of one model (an artifact, its pruned/quantized children, their exports)")
    _unique_names(sources)
    baseline = _baseline(sources, cfg.baseline)
    out = check_output_dir(cfg.out, cfg.force)
    refuse_if_live(staging_path(out, STAGING_SUFFIX), out)  # before measuring, not after
    images = eval_images(cfg, sources[0])
    plan = [(s, name) for s in sources for name in cfg.backend_names() if s.kind in RUNTIMES[name].kinds]
    records: list[dict[str, Any]] = []
    planned = {name for _, name in plan}
    skipped = [{"variant": NO_VARIANT, "backend": name, "reason": RUNTIMES[name].nothing_to_run()}
               for name in cfg.backend_names() if name not in planned]  # asked for, so listed, never dropped
    predictions: dict[tuple[str, str], np.ndarray] = {}
    steps = sum(len(cfg.batch_sizes()) for _ in plan) + cfg.rounds
    kept: dict[str, Kept] = {}  # "VARIANT on BACKEND": its open runtime, for the timing rounds
    with progress_bar(total=steps, desc="bench", unit="point", quiet=cfg.quiet, leave=True) as progress, \
            handed_to_processes(images, cfg) as images, contextlib.ExitStack() as workers:
        for source, backend in plan:
            reason = RUNTIMES[backend].unavailable(source)
            if reason:
                skipped.append({"variant": source.label, "backend": backend, "reason": reason})
                progress.update(len(cfg.batch_sizes()))
                continue
            progress.set_postfix_str(f"{source.label} on {backend}")
            batches = [b for b in cfg.batch_sizes() if source.batch_limit(b) == b]  # an engine's profile caps them
            for batch in [b for b in cfg.batch_sizes() if b not in batches]:
                skipped.append({"variant": source.label, "backend": backend, "reason": f"batch {batch} is above the "
                                f"engine's profile maximum {source.max_batch}: rebuild it with export --batch ...,{batch}"})
                progress.update(1)
            worker = workers.enter_context(MeasuringWorker(cfg.in_process, f"{source.label} on {backend}"))
            try:
                measured = worker.call(_measure, worker.key, source, backend, batches, cfg, images)
            except UserError as exc:  # a runtime that fails to start here (e.g. Triton from the wrong Python)
                skipped.append({"variant": source.label, "backend": backend, "reason": str(exc)})
                continue
            finally:
                progress.update(len(batches))
            records += measured["records"]
            skipped += measured["skipped"]
            if measured["predictions"] is not None:
                predictions[(source.label, backend)] = measured["predictions"]
            kept[worker.key] = Kept(worker, source.label, backend,
                                    [r["batch"] for r in measured["records"] if r["mode"] == "batch"])
        timing = _compare(kept, baseline.label, cfg, progress)
    if not records:
        reasons = "; ".join(f"{s['variant']} on {s['backend']}: {s['reason']}" for s in skipped if s["variant"] != NO_VARIANT)
        raise UserError(f"no backend could run any of the models here ({reasons or 'none of them applies'})",
                        "fix what the reasons say, or pass artifacts for the torch backend")
    _add_agreement(records, predictions, baseline)
    results = {"command": command_line("bench", cfg, positional=("srcs",)),
               "config": asdict(cfg), "baseline": baseline.label, "data": images.source if images.labels is not None else None,
               "hardware": hardware(), "versions": versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
               "records": records, "skipped": skipped, "timing": timing}
    from vitcompress.bench_report import write_report

    with staged_directory(out, STAGING_SUFFIX) as staging:
        write_report(results, staging)
    return BenchResult(out, results)


def _unique_names(sources: list[ModelSource]) -> None:
    """Name variants by their directory, with as many parent directories as it takes to tell them apart."""
    for depth in range(1, 6):
        names = ["/".join(s.path.resolve().parts[-depth:]) for s in sources]
        if len(set(names)) == len(names):
            break
    for source, name in zip(sources, names, strict=True):
        source.label = name


def _baseline(sources: list[ModelSource], named: str | None) -> ModelSource:
    """``--baseline`` (a path among the SRCs), else the first FP32 model, else the first model."""
    if named:
        match = [s for s in sources if s.path.resolve() == Path(named).resolve()]
        require(bool(match), f"--baseline {named} is not one of the models benched", "pass one of the SRC paths")
        return match[0]
    return next((s for s in sources if s.precision == "fp32"), sources[0])


class MeasuringWorker:
    """Where one variant x backend is measured and then kept open for the timing rounds: a new Python process (unless
    ``in_process``), so that the peak memory it reports is the variant's own, not what earlier variants left to the
    allocator, and a runtime that crashes takes only that process down.

    The process runs in a process group of its own, so a terminal's Ctrl-C reaches bench alone, which hands it on:
    the measuring process then stops its runtime in order (a Triton server: its clients first, then the model, then
    the server; interrupted together, the server waited a second per check for the client to hang up) and is ended
    once it has, without the second and a half a Python process with torch takes to exit.
    """

    def __init__(self, in_process: bool, key: str) -> None:
        self.key = key
        self.pool: ProcessPoolExecutor | None = None
        if not in_process:
            own_group = getattr(os, "setpgrp", None)  # POSIX; elsewhere the process shares the terminal's Ctrl-C
            self.pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=own_group)
            try:
                self.pid = self.pool.submit(os.getpid).result()
            except BrokenProcessPool:
                raise self._died() from None

    def call(self, function: Callable[..., Any], *args: Any) -> Any:
        """``function(*args)`` in the worker."""
        if self.pool is None:
            return function(*args)
        try:
            return _result_handing_on_ctrl_c(self.pool.submit(function, *args), self.pid)
        except BrokenProcessPool:
            self.pool = None
            raise self._died() from None

    def _died(self) -> UserError:
        return UserError(f"the process measuring {self.key} died (a crash in the runtime, or, from Python, a script "
                         "whose bench call is not under `if __name__ == \"__main__\":`, which the new process "
                         "imports again)", "guard the call so, pass in_process=True (--in-process), or skip that backend")

    def timer(self, batch: int, calls: int) -> list[float]:
        """Milliseconds of ``calls`` calls of the kept runtime at ``batch``, timed inside the worker."""
        return self.call(_time_kept, self.key, batch, calls)

    def __enter__(self) -> MeasuringWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(UserError):
            self.call(_close_kept, self.key)
        if self.pool is not None:
            self.pool.shutdown()


def _result_handing_on_ctrl_c(measuring: Future, pid: int) -> dict[str, Any]:
    """``measuring``'s result; on Ctrl-C, the interrupt handed to process ``pid``, which is ended once it has closed
    its runtime (its own KeyboardInterrupt comes back as the result)."""
    try:
        return measuring.result()
    except KeyboardInterrupt:
        os.kill(pid, signal.SIGINT)
        with contextlib.suppress(BaseException):
            measuring.result(timeout=STOP_TIMEOUT_S)
        os.kill(pid, getattr(signal, "SIGKILL", signal.SIGTERM))  # nothing of it is left to clean up
        raise


def _measure(key: str, source: ModelSource, backend: str, batches: list[int], cfg: BenchConfig,
             images: EvalImages) -> dict[str, Any]:
    """Latency at each batch, the peak memory that loading and running the model at those batches took, and then
    (outside that peak: scoring reads every test image) accuracy. A batch the device has no memory for is listed
    as skipped, and the others are measured. The runtime stays open under ``key`` for the timing rounds
    (:func:`_time_kept`) until :func:`_close_kept`."""
    transform = BatchTransform(source.img_size, source.mean, source.std)
    stored = images.stored()
    sample = transform.eval_pixels(stored[: max(batches, default=1)])  # what latency is timed on
    rss_before = memory.current_rss()
    memory.reset_peak_rss()
    runtime = RUNTIMES[backend](source, threads=cfg.threads or None, max_batch=max([*batches, ACCURACY_BATCH]))
    skipped: list[dict[str, Any]] = []

    def unless_out_of_memory(what: str, call: Callable[[], Any]) -> Any:
        """``call()``, or ``None`` (and ``what`` listed as skipped) when the device has no memory for it."""
        try:
            return call()
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
        skipped.append({"variant": source.label, "backend": backend, "reason": f"{what}: out of memory on {runtime.device}"})
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # what the failed call's allocations left cached, for the next one
        return None

    try:
        common = {"variant": source.label, "path": str(source.path), "backend": backend, "device": runtime.device,
                  "precision": runtime.precision(source), "kind": source.kind, "file_bytes": source.file_bytes,
                  "params": source.params, "macs": source.macs}
        records = []
        timed_inputs = {}
        for batch in batches:
            inputs = source.prepare(_repeat_to(sample, batch))
            times = unless_out_of_memory(f"batch {batch}", lambda inputs=inputs: time_calls(
                lambda: runtime.run(inputs), cfg.warmup, cfg.min_iters, cfg.max_seconds))
            if times is None:
                continue
            timed_inputs[batch] = inputs
            stats = latency_stats(times)
            records.append({**common, "mode": "batch", "batch": batch, "concurrency": 1, **stats,
                            "throughput_ips": round(batch * 1000 / stats["mean_ms"], 2)})
        if backend == "triton":
            records += _concurrency_sweep(runtime, source, sample, cfg, common)
        peak, kind = _peak_memory(runtime, rss_before)
        accuracy, predicted = unless_out_of_memory(
            f"accuracy (batches of {runtime.batch_limit(source, ACCURACY_BATCH)})",
            lambda: _accuracy(runtime, source, transform, stored, images.labels)) or ({}, None)
        for record in records:
            record.update(peak_memory_bytes=peak, memory_kind=kind, **accuracy)
    except BaseException:
        runtime.close()
        raise
    _KEPT[key] = (runtime, timed_inputs)
    return {"records": records, "predictions": predicted, "skipped": skipped}


_KEPT: dict[str, tuple[Runtime, dict[int, Any]]] = {}  # the measuring process's open runtimes, by variant x backend


def _time_kept(key: str, batch: int, calls: int) -> list[float]:
    runtime, inputs = _KEPT[key]
    return local_timer({batch: partial(runtime.run, inputs[batch])})(batch, calls)


def _close_kept(key: str) -> None:
    runtime, _ = _KEPT.pop(key, (None, None))
    if runtime is not None:
        runtime.close()


@dataclass
class Kept:
    """A variant x backend whose runtime stays open in its worker for the timing rounds, and the batches it ran."""

    worker: MeasuringWorker
    variant: str
    backend: str
    batches: list[int]


def _compare(kept: dict[str, Kept], baseline: str, cfg: BenchConfig, progress: Any) -> dict[str, Any]:
    """Every measured variant x backend timed against the baseline on each backend it ran on, by the timing method
    (vitcompress/timing.py), bracketed by the baseline on its own backend where there is one; at each batch that all
    of them ran; an empty dict when nothing ran."""
    batches = [b for b in cfg.batch_sizes() if all(b in k.batches for k in kept.values())]
    if not kept or not batches:
        return {}
    baselines = [key for key, k in kept.items() if k.variant == baseline] or [next(iter(kept))]
    on_backend = {kept[key].backend: key for key in baselines}
    bracket_of = {key: on_backend.get(k.backend, baselines[0]) for key, k in kept.items()}  # its own backend's

    def step(message: str) -> None:
        progress.set_postfix_str(f"timing {message}")
        progress.update(1)

    method = TimingMethod(rounds=cfg.rounds, seconds_per_timing=min(0.5, cfg.max_seconds))
    return compare({key: k.worker.timer for key, k in kept.items()}, baselines, batches, method, step, bracket_of)


def _peak_memory(runtime: Runtime, rss_before: int | None) -> tuple[int | None, str]:
    """The runtime's peak device memory where it has one; else the peak RSS its loading and running added to
    this process, plus the peak RSS of a server's own processes."""
    device = runtime.memory_bytes()
    if device is not None:
        return device, "device (torch allocator)"
    peak = memory.peak_rss()
    added = None if peak is None or rss_before is None else peak - rss_before
    server = runtime.server_rss_bytes()
    if added is None or server is None:
        return added, RSS_ADDED
    return added + server, f"{RSS_ADDED}, plus the server processes' (the sum of their peak RSS)"


def _accuracy(runtime: Runtime, source: ModelSource, transform: BatchTransform, stored: torch.Tensor,
              labels: np.ndarray | None) -> tuple[dict[str, Any], np.ndarray | None]:
    """Top-1 and macro F1 of the test images, brought to the model's size a call at a time (all at once, a
    test split at 224 px is gigabytes)."""
    if labels is None:
        return {}, None
    chunks = stored.split(runtime.batch_limit(source, ACCURACY_BATCH))
    logits = np.concatenate([runtime.run(source.prepare(transform.eval_pixels(chunk))) for chunk in chunks])
    predicted = logits.argmax(1)
    f1 = multiclass_f1_score(torch.from_numpy(predicted), torch.from_numpy(labels), len(source.classes), average="macro")
    return {"top1": float((predicted == labels).mean()), "f1_macro": float(f1)}, predicted  # F1 as eval computes it


def _concurrency_sweep(runtime: Runtime, source: ModelSource, pixels: torch.Tensor, cfg: BenchConfig,
                       common: dict[str, Any]) -> list[dict[str, Any]]:
    """Batch-1 requests from N parallel clients, bounded by ``--requests`` and a time limit per level."""
    server = runtime.server  # type: ignore[attr-defined]
    one = source.prepare(pixels[:1])
    records = []
    for clients in cfg.concurrency_levels():
        loop = partial(_client_loop, server.url, server.model_name, source.input_name, one,
                       max(1, cfg.requests // clients), time.perf_counter() + MAX_TRITON_SECONDS)
        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            futures = [pool.submit(loop) for _ in range(clients)]
            times = [t for future in futures for t in future.result()]
        wall = time.perf_counter() - started
        records.append({**common, "mode": "concurrency", "batch": 1, "concurrency": clients, **latency_stats(times),
                        "throughput_ips": round(len(times) / wall, 2)})
    return records


def _client_loop(url: str, model_name: str, input_name: str, request: np.ndarray, count: int,
                 deadline: float) -> list[float]:
    """One client sending ``request`` ``count`` times (or until ``deadline``); milliseconds of each answer."""
    from vitcompress.serving import TritonClient

    client = TritonClient(url, model_name, input_name)
    times = []
    try:
        for _ in range(count):
            if time.perf_counter() > deadline:
                break
            t0 = time.perf_counter()
            client(request)
            times.append((time.perf_counter() - t0) * 1000)
    finally:
        client.close()
    return times


def _add_agreement(records: list[dict[str, Any]], predictions: dict[tuple[str, str], np.ndarray],
                   baseline: ModelSource) -> None:
    reference = next((p for (variant, _), p in predictions.items() if variant == baseline.label), None)
    for record in records:
        record["baseline"] = record["variant"] == baseline.label
        mine = predictions.get((record["variant"], record["backend"]))
        if reference is not None and mine is not None:
            record["agreement"] = float((mine == reference).mean())


def _repeat_to(pixels: torch.Tensor, batch: int) -> torch.Tensor:
    reps = -(-batch // len(pixels))
    return pixels.repeat(reps, 1, 1, 1)[:batch]


# The CPU features that decide which runtime is fastest: VNNI doubles integer GEMMs; AMX and AVX-512 BF16 make
# OpenVINO (and torch-bf16) run FP32 models in bf16. A speed-up holds for the CPU it was measured on.
SPEED_FLAGS = {"avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16"}


def hardware() -> dict[str, Any]:
    return {"platform": platform.platform(), "machine": platform.machine(), "cpu": cpu_name(), "cpu_flags": cpu_flags(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def cpu_flags() -> list[str]:
    """The :data:`SPEED_FLAGS` this CPU has (Linux; empty where /proc/cpuinfo cannot tell)."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return []
    return sorted(SPEED_FLAGS.intersection(flags))


def cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def versions() -> dict[str, str]:
    from vitcompress.artifact import library_versions

    return library_versions(("vitcompress", "torch", "timm", "onnx", "onnxruntime", "openvino", "nvidia-modelopt", "tensorrt",
                             "nvidia-pytriton", "tritonclient"))
