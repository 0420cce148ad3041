"""A pipeline's output directory told apart from a single model's: the low-level facts the artifact and source
readers need (``pipeline.py`` runs the pipeline, ``run_report.py`` describes one), so they import nothing above."""

from __future__ import annotations

from pathlib import Path

from vitcompress.errors import UserError

STATE_FILE = "pipeline.json"  # in a pipeline's output directory: its steps, their digests and status


def is_pipeline_run(path: str | Path) -> bool:
    return (Path(path) / STATE_FILE).is_file()


def refuse_run_as_model(path: Path) -> None:
    """One line for a pipeline's output given where one model is expected; nothing for anything else."""
    if is_pipeline_run(path):
        raise UserError(f"{path} is a pipeline's output, which holds several models",
                        f"pass one of its steps, e.g. {path / 'onnx-int8'} or {path / 'fp32'} "
                        f"(`vitcompress info {path}` lists them)")
