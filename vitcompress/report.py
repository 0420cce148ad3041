"""Human-readable summaries of artifacts and metrics (tables via tabulate)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tabulate import tabulate

from vitcompress.artifact import ArtifactMeta, read_meta


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, int) and value >= 10_000:
        return f"{value:,}"
    return str(value)


def metrics_table(metrics: dict[str, Any]) -> str:
    """The headline metrics of a report as a two-column table."""
    keys = ("top1", "top5", "precision_macro", "recall_macro", "f1_macro", "loss", "samples", "params", "macs",
            "best_epoch", "epochs_run", "train_images_per_s", "train_seconds", "device")
    rows = [(k, _fmt(metrics[k])) for k in keys if metrics.get(k) is not None]
    return tabulate(rows, headers=("metric", "value"), tablefmt="simple", disable_numparse=True)


def per_class_table(metrics: dict[str, Any]) -> str:
    rows = [(c, _fmt(a)) for c, a in metrics.get("per_class_accuracy", {}).items()]
    return tabulate(rows, headers=("class", "accuracy"), tablefmt="simple", disable_numparse=True)


def stage_summary(path: Path, meta: ArtifactMeta) -> str:
    """Printed at the end of a stage: the metrics table and where the artifact is."""
    return f"\n{metrics_table(meta.metrics)}\n\nartifact: {path}"


def describe(path: str | Path) -> str:
    """What ``vitcompress info`` prints about an artifact."""
    meta = read_meta(path)
    heads = meta.heads_per_block
    rows = [
        ("artifact", str(path)),
        ("stage", meta.stage),
        ("model", meta.model_name),
        ("model kwargs", ", ".join(f"{k}={v}" for k, v in meta.model_kwargs.items())),
        ("classes", f"{len(meta.classes)}: {', '.join(meta.classes[:12])}{' ...' if len(meta.classes) > 12 else ''}"),
        ("input", f"3x{meta.img_size}x{meta.img_size}, mean {meta.mean}, std {meta.std}"),
        ("heads per block", f"{heads} (total {sum(heads)})" if heads else "n/a"),
        ("params", _fmt(meta.metrics.get("params", "?"))),
        ("MACs", _fmt(meta.metrics.get("macs", "?"))),
        ("data", meta.data.get("spec", "?")),
        ("parent", f"{meta.parent['path']} (sha256 {meta.parent['sha256'][:12]})" if meta.parent else "none"),
        ("created", meta.created),
        ("versions", ", ".join(f"{k} {v}" for k, v in meta.versions.items())),
    ]
    table = tabulate(rows, tablefmt="plain", disable_numparse=True)
    return f"{table}\n\n{metrics_table(meta.metrics)}" if meta.metrics else table
