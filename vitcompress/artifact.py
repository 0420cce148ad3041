"""The artifact: the one thing every stage reads and writes.

A directory holding ``model.safetensors`` (weights; never a pickle) and ``vitcompress.json``
(everything needed to rebuild and use the model). :func:`load_model` rebuilds the right
``nn.Module`` from any artifact, so ``eval``, ``export`` and ``bench`` never care which stage made it.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
from dataclasses import dataclass, field
from importlib import metadata as _importlib_metadata
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from vitcompress.errors import UserError
from vitcompress.fsutil import atomic_file, sha256_file, write_safetensors
from vitcompress.models import create_model
from vitcompress.runs import refuse_run_as_model

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
META_FILE = "vitcompress.json"


@dataclass
class ArtifactMeta:
    """The contents of ``vitcompress.json``. See docs/artifact.md for every field."""

    stage: str
    model_name: str
    model_kwargs: dict[str, Any]
    classes: list[str]
    img_size: int
    mean: list[float]
    std: list[float]
    heads_per_block: list[int] = field(default_factory=list)
    mlp_per_block: list[int] = field(default_factory=list)  # MLP hidden width per block, after pruning
    quantization: dict[str, Any] | None = None  # set by qat: method, config, skipped layers
    merging: dict[str, Any] | None = None  # set by merge: tokens merged per block, proportional attention
    parent: dict[str, str] | None = None
    recipe: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    created: str = ""
    format: int = FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "stage": self.stage,
            "created": self.created,
            "model": {"name": self.model_name, "kwargs": self.model_kwargs, "heads_per_block": self.heads_per_block,
                      "mlp_per_block": self.mlp_per_block, "quantization": self.quantization,
                      **({"merging": self.merging} if self.merging else {})},
            "input": {"size": [3, self.img_size, self.img_size], "mean": self.mean, "std": self.std},
            "classes": self.classes,
            "parent": self.parent,
            "data": self.data,
            "recipe": self.recipe,
            "metrics": self.metrics,
            "versions": self.versions,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ArtifactMeta:
        return cls(
            format=obj["format"],
            stage=obj["stage"],
            created=obj.get("created", ""),
            model_name=obj["model"]["name"],
            model_kwargs=obj["model"]["kwargs"],
            heads_per_block=obj["model"].get("heads_per_block", []),
            mlp_per_block=obj["model"].get("mlp_per_block", []),
            quantization=obj["model"].get("quantization"),
            merging=obj["model"].get("merging"),
            img_size=obj["input"]["size"][-1],
            mean=obj["input"]["mean"],
            std=obj["input"]["std"],
            classes=obj["classes"],
            parent=obj.get("parent"),
            data=obj.get("data", {}),
            recipe=obj.get("recipe", {}),
            metrics=obj.get("metrics", {}),
            versions=obj.get("versions", {}),
        )


TRAINING_LIBRARIES = ("vitcompress", "torch", "timm", "torchvision", "nvidia-modelopt", "torch-pruning")


def library_versions(dists: tuple[str, ...] = TRAINING_LIBRARIES) -> dict[str, str]:
    """Versions of what shaped the weights (or the export), recorded beside them."""
    versions = {"python": platform.python_version()}
    for dist in dists:
        try:
            versions[dist] = _importlib_metadata.version(dist)
        except _importlib_metadata.PackageNotFoundError:
            continue
    return versions


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def parent_ref(path: str | Path) -> dict[str, str]:
    """Lineage entry for an artifact that another was made from."""
    path = Path(path).resolve()
    return {"path": str(path), "sha256": sha256_file(path / WEIGHTS_FILE)}


def write_artifact(directory: Path, model: nn.Module, meta: ArtifactMeta) -> None:
    """Write weights and metadata into ``directory`` (a staging dir; the caller publishes it)."""
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    write_safetensors(state, directory / WEIGHTS_FILE, metadata={"format": "pt"})
    with atomic_file(directory / META_FILE) as tmp:
        tmp.write_text(json.dumps(meta.to_json(), indent=2) + "\n")


def read_meta(path: str | Path) -> ArtifactMeta:
    """Read an artifact's metadata, with a clear error for anything that is not an artifact."""
    path = Path(path)
    meta_path = path / META_FILE
    if not path.is_dir() or not meta_path.is_file():
        refuse_run_as_model(path)
        raise UserError(f"{path} is not a vitcompress artifact (no {META_FILE})",
                        "pass a directory written by `vitcompress finetune` or a later stage")
    try:
        obj = json.loads(meta_path.read_text())
        meta = ArtifactMeta.from_json(obj)
    except (json.JSONDecodeError, KeyError, TypeError, IndexError) as exc:
        raise UserError(f"{meta_path} is corrupt ({type(exc).__name__}: {exc})",
                        "re-create the artifact with the stage that made it") from None
    if meta.format > FORMAT_VERSION:
        raise UserError(f"{path} was written by a newer vitcompress (format {meta.format})", "upgrade vitcompress")
    return meta


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, ArtifactMeta]:
    """Rebuild the model stored in an artifact, in eval mode on ``device``."""
    path = Path(path)
    meta = read_meta(path)
    model = create_model(meta.model_name, meta.model_kwargs)
    _reshape_pruned(model, meta)
    try:
        state = load_file(str(path / WEIGHTS_FILE), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise UserError(f"{path / WEIGHTS_FILE} is unreadable ({exc})", "re-create the artifact") from None
    if meta.quantization:
        from vitcompress.compress.quantize import restore_quantizers

        restore_quantizers(model, meta.quantization["modelopt_config"], state,
                           meta.quantization.get("unreached_quantizers", []))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UserError(f"weights in {path} do not match its metadata ({str(exc).splitlines()[0]})",
                        "re-create the artifact") from None
    if meta.merging:
        from vitcompress.compress.token_merging import apply_merging

        apply_merging(model, meta.merging)
    return model.to(device).eval(), meta


def _reshape_pruned(model: nn.Module, meta: ArtifactMeta) -> None:
    """A pruned artifact records heads and MLP widths per block; give the fresh model that shape."""
    from vitcompress.models import heads_per_block

    if meta.heads_per_block and (meta.heads_per_block != heads_per_block(model) or meta.mlp_per_block):
        from vitcompress.compress.surgery import reshape_to

        try:
            reshape_to(model, meta.heads_per_block, meta.mlp_per_block, meta.img_size)
        except (ValueError, RuntimeError, UserError) as exc:
            raise UserError(f"the pruned shape in {meta.model_name}'s metadata does not fit the model ({exc})",
                            "re-create the artifact") from None
