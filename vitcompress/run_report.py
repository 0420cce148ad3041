"""What ``vitcompress info`` says about a pipeline's output directory: every step, what it made, how it scored."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tabulate import tabulate

from vitcompress.artifact import read_meta
from vitcompress.runs import STATE_FILE


def describe_run(root: str | Path) -> str:
    """One row per step (stage, status, test top-1, params, what it is), then where the bench report is."""
    from vitcompress.pipeline import read_state

    root = Path(root)
    rows = [(name, step.get("stage", "?"), step.get("status", "?"), *_made(root / name))
            for name, step in read_state(root).items()]
    table = tabulate(rows, headers=["step", "stage", "status", "top-1", "params", "what"], disable_numparse=True)
    report = root / "bench" / "report.md"
    return f"pipeline run: {root}\n\n{table}" + (f"\n\nbench report: {report}" if report.is_file() else "")


def run_json(root: str | Path) -> dict[str, Any]:
    """What ``vitcompress info --json`` prints for a run: its state file (the recipe and every step)."""
    return json.loads((Path(root) / STATE_FILE).read_text())


def _made(path: Path) -> tuple[str, str, str]:
    """``(top-1, params, description)`` of a step's output; dashes for what is missing or not a model."""
    from vitcompress.sources import read_manifest

    if (path / "vitcompress.json").is_file():
        meta = read_meta(path)
        top1 = meta.metrics.get("top1")
        what = f"{meta.stage} artifact, {'INT8' if meta.quantization else 'fp32'}, heads {sum(meta.heads_per_block)}"
        return (f"{100 * top1:.2f}%" if top1 is not None else "-", f"{meta.metrics.get('params', 0):,}", what)
    if (path / "export.json").is_file():
        manifest = read_manifest(path)
        agreement = [r["top1_agreement"] for r in manifest.get("verify", {}).values() if "top1_agreement" in r]
        verified = f", agrees with PyTorch on {100 * min(agreement):.1f}% top-1" if agreement else ""
        return "-", "-", f"{manifest['format']} {manifest['precision']} export{verified}"
    if (path / "results.json").is_file():
        return "-", "-", f"bench: {len(json.loads((path / 'results.json').read_text())['records'])} measurements"
    return "-", "-", "missing" if not path.exists() else "incomplete"
