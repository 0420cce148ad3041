"""Figures written next to an artifact."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from vitcompress.fsutil import atomic_file  # noqa: E402


def save_confusion_png(matrix: list[list[int]], classes: list[str], path: Path, title: str = "") -> None:
    """Row-normalised confusion matrix (rows: true class) with counts in each cell."""
    counts = np.asarray(matrix, dtype=np.int64)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * n, 0.8 + 0.6 * n), dpi=100)
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if rates[i, j] > 0.5 else "black")
    ax.set_title(title or "confusion matrix")
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _label(record: dict) -> str:
    return f"{record['variant']} ({record['backend']})"


def save_latency_png(records: list[dict], path: Path) -> None:
    """Median latency against batch size, one line per variant and backend."""
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for label in dict.fromkeys(_label(r) for r in records):
        points = sorted((r["batch"], r["p50_ms"]) for r in records if _label(r) == label)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("p50 latency (ms)")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (latency, accuracy) points no other point beats on both (lower latency, higher accuracy)."""
    front, best = [], float("-inf")
    for latency, accuracy in sorted(points, key=lambda p: (p[0], -p[1])):
        if accuracy > best:
            front.append((latency, accuracy))
            best = accuracy
    return front


def save_pareto_png(records: list[dict], path: Path) -> None:
    """Top-1 against per-image latency at the smallest batch measured, with the Pareto front."""
    batch = min(r["batch"] for r in records)
    chosen = [r for r in records if r["batch"] == batch and r.get("top1") is not None]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    points = [(r["p50_ms"] / batch, 100 * r["top1"]) for r in chosen]
    for r, (x, y) in zip(chosen, points, strict=True):
        ax.scatter(x, y)
        ax.annotate(_label(r), (x, y), fontsize=7, xytext=(4, 4), textcoords="offset points")
    front = pareto_front(points)
    ax.plot([p[0] for p in front], [p[1] for p in front], "k--", label="Pareto front")
    ax.set_xlabel(f"p50 latency per image at batch {batch} (ms)")
    ax.set_ylabel("top-1 (%)")
    ax.legend(fontsize=7)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
