"""What a path a user hands to ``bench``, ``serve`` or ``predict`` holds: an artifact, an ONNX export, an OpenVINO
IR, a TensorRT engine, or a Triton model repository made by ``export``, with the facts every runtime needs
(input contract, classes, size, params, the graph's form)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitcompress.artifact import META_FILE, WEIGHTS_FILE, read_meta
from vitcompress.augment import BatchTransform
from vitcompress.errors import UserError
from vitcompress.runs import refuse_run_as_model

EXPORT_MANIFEST = "export.json"
MODEL_FILES = {"model.plan": "engine", "model.xml": "ir", "model.onnx": "onnx"}  # an export's model file, and its kind


@dataclass
class ModelSource:
    """One model on disk and how to talk to it."""

    path: Path  # the directory the user named
    kind: str  # artifact | onnx | ir | engine
    file: Path  # the weights file, the .onnx, the OpenVINO .xml, or the .plan
    precision: str
    classes: list[str]
    img_size: int
    mean: list[float]
    std: list[float]
    takes_pixels: bool  # uint8 N x H x W x 3 in, else normalised float N x 3 x H x W
    input_name: str
    params: int | None = None
    macs: int | None = None
    label: str = ""  # how reports name it (bench makes labels unique)
    triton: dict[str, Any] = field(default_factory=dict)  # a Triton repository export's model: name, max_batch_size, ...
    max_batch: int | None = None  # the largest batch the model file takes (a TensorRT engine's profile), else None
    trained_on: dict[str, Any] = field(default_factory=dict)  # the artifact's data description (spec, storage_size, ...)
    graph: str = ""  # an export's graph form: "ort" (ONNX Runtime's fused contrib ops) or "standard" (Q/DQ)

    def __post_init__(self) -> None:
        self.label = self.label or self.path.name

    @property
    def files(self) -> list[Path]:
        """The model file, and an ONNX file's external data (its weights, past protobuf's 2 GiB)."""
        from vitcompress.export.onnx import model_files

        return model_files(self.file)

    @property
    def file_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)

    def batch_limit(self, wanted: int) -> int:
        """``wanted``, or less where the model file cannot take that many images in one call."""
        return min(wanted, self.max_batch) if self.max_batch else wanted

    def prepare(self, pixels: torch.Tensor) -> np.ndarray:
        """The model's input for uint8 ``N x H x W x 3`` pixels at its size (done outside any timing)."""
        return BatchTransform(self.img_size, self.mean, self.std).model_input(pixels, self.takes_pixels)


def open_source(path: str | Path) -> ModelSource:
    """Recognise ``path``; a one-line error for anything that is not one of ours or is incomplete."""
    path = Path(path)
    if (path / META_FILE).is_file():
        return _artifact(path)
    if (path / EXPORT_MANIFEST).is_file():
        return _export(path)
    refuse_run_as_model(path)
    raise UserError(f"{path} is neither an artifact nor an export (no {META_FILE} or {EXPORT_MANIFEST})",
                    "pass a directory written by a vitcompress stage or by `vitcompress export`")


def _artifact(path: Path) -> ModelSource:
    meta = read_meta(path)
    if not (path / WEIGHTS_FILE).is_file():
        raise UserError(f"{path} has no {WEIGHTS_FILE}", "re-create the artifact")
    return ModelSource(path, "artifact", path / WEIGHTS_FILE, "int8" if meta.quantization else "fp32", meta.classes,
                       meta.img_size, meta.mean, meta.std, False, "input", meta.metrics.get("params"),
                       meta.metrics.get("macs"), trained_on=meta.data)


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The ``export.json`` of an export directory; one line when it is missing or not JSON."""
    path = Path(path)
    if not (path / EXPORT_MANIFEST).is_file():
        raise UserError(f"{path} is not an export (no {EXPORT_MANIFEST})", "pass a directory written by `vitcompress export`")
    try:
        return json.loads((path / EXPORT_MANIFEST).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path / EXPORT_MANIFEST} is corrupt ({type(exc).__name__}: {exc})",
                        "re-export with `vitcompress export`") from None


def _export(path: Path) -> ModelSource:
    manifest = read_manifest(path)
    try:
        contract = manifest["contract"]
        model_input = contract["input"]
        size = int(model_input["shape"][2 if model_input["layout"] == "NHWC" else 3])
    except (KeyError, TypeError, IndexError, ValueError) as exc:
        raise UserError(f"{path / EXPORT_MANIFEST} is corrupt ({type(exc).__name__}: {exc})",
                        "re-export with `vitcompress export`") from None
    file, kind = _model_file(path, manifest)
    source_metrics: dict[str, Any] = manifest.get("source_metrics", {})
    return ModelSource(path, kind, file, manifest["precision"], contract["classes"], size, contract["mean"],
                       contract["std"], model_input["dtype"] == "uint8", model_input["name"],
                       source_metrics.get("params"), source_metrics.get("macs"),
                       triton=manifest["triton"] if manifest["format"] == "triton" else {},
                       max_batch=_engine_max_batch(manifest) if kind == "engine" else None,
                       trained_on=manifest.get("source_data", {}), graph=graph_form(manifest.get("target", "")))


def graph_form(target: str) -> str:
    """An export's graph form from its manifest's ``target``; exports before 2026-12-06 named the standard graph
    after TensorRT."""
    return "standard" if target == "tensorrt" else target


def _engine_max_batch(manifest: dict[str, Any]) -> int | None:
    """The batch size at the top of a TensorRT engine's optimisation profile (``engine.json``)."""
    try:
        return int(manifest["engine"]["profile"]["max"][0])
    except (KeyError, TypeError, IndexError, ValueError):
        return None


def _model_file(path: Path, manifest: dict[str, Any]) -> tuple[Path, str]:
    root = path / manifest["triton"]["name"] if manifest["format"] == "triton" else path
    candidates = [(folder / name, kind) for name, kind in MODEL_FILES.items() for folder in (root, root / "1")]
    for file, kind in candidates:
        if file.is_file():
            _require_external_data(file, manifest)
            return file, kind
    raise UserError(f"{path} has no {', '.join(MODEL_FILES)}", "re-export with `vitcompress export`")


def _require_external_data(file: Path, manifest: dict[str, Any]) -> None:
    """An ONNX file past 2 GiB is unusable without its weights file beside it (copied without it, say)."""
    from vitcompress.export.onnx import external_data_path

    data = external_data_path(file)
    if manifest.get("graph", {}).get("external_data") and file.suffix == ".onnx" and not data.is_file():
        raise UserError(f"{file} keeps its weights in {data.name}, which is not beside it",
                        f"copy {data.name} into {file.parent} (the two files travel together), or re-export")
