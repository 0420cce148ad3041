"""What ``bench`` writes: ``results.json``, ``results.csv``, ``report.md`` (ratios against the FP32
baseline) and two plots (latency against batch size; accuracy against latency with the Pareto front)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from tabulate import tabulate

from vitcompress.fsutil import atomic_file
from vitcompress.plots import save_latency_png, save_pareto_png

CSV_FIELDS = ("variant", "backend", "device", "precision", "mode", "batch", "concurrency", "p50_ms", "p90_ms", "p99_ms",
              "mean_ms", "std_ms", "iters", "throughput_ips", "speedup", "speedup_iqr", "top1", "f1_macro", "agreement",
              "peak_memory_bytes", "memory_kind", "file_bytes", "params", "macs", "baseline", "path")


SPEEDUP_NOTE = ("vs baseline: how many times faster than the baseline at the same batch on the same backend (the "
                "ratio of medians over interleaved rounds that bracket the row by the baseline, docs/bench.md; the "
                "baseline's own rows read 1.00x); * where the baseline did not run on that backend: against its first one")


def add_speedups(results: dict[str, Any]) -> None:
    """``speedup``: how many times faster this record ran than the baseline at the same batch, on the same backend,
    from the timing rounds (``results["timing"]``, :func:`vitcompress.timing.compare`), with ``speedup_iqr``: a
    runtime is compared with itself, never one runtime's row with another's (Triton's HTTP round trip against ONNX
    Runtime in process read 0.14x for the baseline itself). Where the baseline did not run on that backend, against
    its first backend (``speedup_against`` names the row compared with)."""
    timing = results["timing"]
    base = [r for r in results["records"] if r["baseline"] and r["mode"] == "batch"]
    for record in results["records"]:
        if record["mode"] != "batch":
            continue
        same = [b for b in base if b["batch"] == record["batch"]]
        ref = next((b for b in same if b["backend"] == record["backend"]), same[0] if same else None)
        mine, against = timing_key(record), timing_key(ref) if ref else None
        compared = (ref is not None and str(record["batch"]) in timing.get("calls_per_timing", {})
                    and mine in timing["variants"])
        if not compared:
            record.update(speedup=None, speedup_iqr=None, speedup_against=None, speedup_other_backend=False)
            continue
        cell = timing["ratios"][mine].get(against, {}).get(str(record["batch"]))
        record["speedup"] = cell["ratio"] if cell else 1.0
        record["speedup_iqr"] = cell["iqr"] if cell else [1.0, 1.0]
        record["speedup_against"] = against
        record["speedup_other_backend"] = ref["backend"] != record["backend"]


def timing_key(record: dict[str, Any]) -> str:
    """The name a record's variant x backend has in the timing rounds."""
    return f"{record['variant']} on {record['backend']}"


def report_table(results: dict[str, Any], fmt: str = "simple") -> str:
    rows = []
    for r in results["records"]:
        rows.append((r["variant"] + (" (baseline)" if r["baseline"] else ""), r["backend"], r["precision"],
                     r["batch"] if r["mode"] == "batch" else f"1 x {r['concurrency']} clients", f"{r['p50_ms']:.2f}",
                     f"{r['p99_ms']:.2f}", f"{r['throughput_ips']:.1f}",
                     _speedup(r), _pct(r.get("top1")), _pct(r.get("agreement")),
                     f"{r['file_bytes'] / 1e6:.1f}", _megabytes(r.get("peak_memory_bytes"))))
    headers = ("variant", "backend", "precision", "batch", "p50 ms", "p99 ms", "img/s", "vs baseline", "top-1",
               "agrees", "file MB", "peak MB")
    return tabulate(rows, headers=headers, tablefmt=fmt, disable_numparse=True)


def console_summary(results: dict[str, Any]) -> str:
    """What the CLI prints after a bench: the table, what "vs baseline" compares, the fastest runtime of each
    variant, and what was skipped."""
    skipped = skipped_table(results)
    return (f"{report_table(results)}\n{SPEEDUP_NOTE}\n\n{fastest_table(results)}"
            + (f"\n\n{skipped}" if skipped else ""))


def fastest_table(results: dict[str, Any], fmt: str = "simple") -> str:
    """For each variant and batch: the backend with the lowest p50, and how much faster it is than the next one."""
    rows = []
    batch_records = [r for r in results["records"] if r["mode"] == "batch"]
    for variant, batch in dict.fromkeys((r["variant"], r["batch"]) for r in batch_records):
        ranked = sorted((r for r in batch_records if (r["variant"], r["batch"]) == (variant, batch)), key=lambda r: r["p50_ms"])
        best, runner_up = ranked[0], (ranked[1] if len(ranked) > 1 else None)
        margin = f"{runner_up['p50_ms'] / best['p50_ms']:.2f}x {runner_up['backend']}" if runner_up else "-"
        rows.append((variant, batch, f"{best['backend']} ({best['precision']})", f"{best['p50_ms']:.2f}", margin))
    return tabulate(rows, headers=("variant", "batch", "fastest runtime", "p50 ms", "faster than the next"), tablefmt=fmt,
                    disable_numparse=True)


def skipped_table(results: dict[str, Any], fmt: str = "simple") -> str:
    rows = [(s["variant"], s["backend"], s["reason"]) for s in results["skipped"]]
    return tabulate(rows, headers=("variant", "backend", "skipped because"), tablefmt=fmt) if rows else ""


def write_report(results: dict[str, Any], out: Path) -> None:
    add_speedups(results)
    with atomic_file(out / "results.json") as tmp:
        tmp.write_text(json.dumps(results, indent=2) + "\n")
    with atomic_file(out / "results.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(results["records"])
    batch_records = [r for r in results["records"] if r["mode"] == "batch"]
    save_latency_png(batch_records, out / "latency_vs_batch.png")
    plots = ["![latency against batch size](latency_vs_batch.png)"]
    if any(r.get("top1") is not None for r in batch_records):
        save_pareto_png(batch_records, out / "accuracy_vs_latency.png")
        plots.append("![accuracy against latency](accuracy_vs_latency.png)")
    hw = results["hardware"]
    lines = [f"# Benchmark: {len(results['records'])} measurements",
             "", f"Command: `{results['command']}`  ",
             f"Hardware: {hw['cpu']} ({', '.join(hw.get('cpu_flags', [])) or 'flags unknown'}), {hw['cpu_count']} CPUs, "
             f"GPU: {hw['gpu']}  ",
             f"Baseline: {results['baseline']}; accuracy on {results['data'] or 'nothing (no --data)'}  ",
             f"{SPEEDUP_NOTE}", "",
             report_table(results, "github"), ""]
    lines += ["## Fastest runtime per variant", "", f"On this machine ({hw['cpu']}): it may differ on another CPU.", "",
              fastest_table(results, "github"), ""]
    if results["skipped"]:
        lines += ["## Skipped", "", skipped_table(results, "github"), ""]
    lines += [*plots, ""]
    with atomic_file(out / "report.md") as tmp:
        tmp.write_text("\n".join(lines))


def _speedup(record: dict[str, Any]) -> str:
    if not record.get("speedup"):
        return "-"
    low, high = record["speedup_iqr"]
    spread = "" if record["baseline"] and not record.get("speedup_other_backend") else f" ({low:.2f}-{high:.2f})"
    return f"{record['speedup']:.2f}x" + ("*" if record.get("speedup_other_backend") else "") + spread


def _megabytes(value: int | None) -> str:
    return "-" if value is None else f"{value / 1e6:.1f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"
