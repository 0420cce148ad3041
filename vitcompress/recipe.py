"""Recipes: one YAML file holding the options of every stage, checked before anything runs.

A recipe has one section per stage, in pipeline order, each a mapping of the stage's options by
their CLI names (``batch_size`` or ``batch-size``)::

    finetune: {model: vit_tiny_patch16_224, data: shapes, epochs: 10}
    prune: {heads: 0.5, finetune_epochs: 3}
    qat: {epochs: 1}
    export: {input: uint8}
    bench: {backends: "torch,ort-cpu"}

An unknown section or key, a value of the wrong type, or sections out of order is a ``UserError``
naming it (and the closest valid key).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any

from vitcompress.config import BenchConfig, ExportConfig, FinetuneConfig, MergeConfig, PruneConfig, QatConfig
from vitcompress.errors import UserError, require

STAGES = ("finetune", "prune", "merge", "qat", "export", "bench")
CONFIGS: dict[str, type] = {"finetune": FinetuneConfig, "prune": PruneConfig, "merge": MergeConfig, "qat": QatConfig,
                            "export": ExportConfig, "bench": BenchConfig}
# Set by the pipeline itself (paths between stages), or not an option of the stage's command.
MANAGED = {"src", "srcs", "out", "force", "resume", "dry_run", "sensitivity"}
NOT_OPTIONS = {"prune": {"epochs", "time_budget"}}  # prune's length is finetune_epochs, as on its command line
REQUIRED = {"finetune": ("model", "data")}


def load_recipe(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read and check a recipe file; return ``{stage: {option: value}}`` in pipeline order."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"recipe {path} does not exist", "pass a YAML file, or no recipe for the built-in default")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"recipe {path} is not valid YAML ({str(exc).splitlines()[0]})", "fix the YAML") from None
    return check_recipe(raw, str(path))


def check_recipe(raw: Any, where: str) -> dict[str, dict[str, Any]]:
    require(isinstance(raw, dict) and bool(raw), f"recipe {where} is not a mapping of stages",
            f"write sections named {', '.join(STAGES)}")
    order = list(raw)
    for stage in order:
        if stage not in STAGES:
            raise UserError(f"recipe {where}: unknown stage {stage!r}", _closest(stage, STAGES))
    positions = [STAGES.index(s) for s in order]
    require(positions == sorted(positions), f"recipe {where}: stages {' -> '.join(order)} cannot run in that order",
            f"list them in pipeline order: {' -> '.join(s for s in STAGES if s in order)}")
    require(order[0] == "finetune" or "src" in (raw[order[0]] or {}),
            f"recipe {where}: {order[0]} needs a model, and no finetune section comes before it",
            f"add a finetune section, or give {order[0]} a src: artifact path")
    recipe = {}
    for stage in order:
        section = raw[stage] or {}
        require(isinstance(section, dict), f"recipe {where}: section {stage} is not a mapping",
                "write option: value lines under it")
        recipe[stage] = {key.replace("-", "_"): value for key, value in section.items()}
        valid = options(stage)
        for key, value in recipe[stage].items():
            _check_option(stage, key, value, valid, where)
        for key in REQUIRED.get(stage, ()):
            require(key in recipe[stage], f"recipe {where}: {stage} needs {key}", f"add {key}: ... under {stage}")
    return recipe


def options(stage: str) -> dict[str, Any]:
    """The options a recipe section may set, with their types (nested config fields flattened)."""
    found: dict[str, Any] = {}

    def walk(cls: type) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            if dataclasses.is_dataclass(hint):
                walk(hint)
            elif f.name not in MANAGED and f.name not in NOT_OPTIONS.get(stage, ()):
                found[f.name] = hint

    walk(CONFIGS[stage])
    if stage != "finetune":
        found["src"] = str  # the artifact to start from, for a recipe that does not begin with finetune
    return found


def _check_option(stage: str, key: str, value: Any, valid: dict[str, Any], where: str) -> None:
    if key not in valid:
        raise UserError(f"recipe {where}: {stage} has no option {key!r}", _closest(key, valid))
    if not _fits(value, valid[key]):
        raise UserError(f"recipe {where}: {stage}.{key} should be {_type_name(valid[key])}, not {value!r}",
                        f"fix {stage}.{key}")


def _fits(value: Any, hint: Any) -> bool:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_fits(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint in (int, float) and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            number = float(value)
        except ValueError:
            return False
        return hint is float or number.is_integer()
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:  # "1,8,32" style lists may be written as YAML lists or numbers
        return isinstance(value, (str, int, float, list)) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(h) for h in typing.get_args(hint) if h is not type(None))
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))


def _closest(word: str, valid: Any) -> str:
    match = difflib.get_close_matches(word, list(valid), n=1)
    return f"did you mean {match[0]!r}?" if match else f"valid: {', '.join(sorted(valid))}"


def build_config(stage: str, section: dict[str, Any], **paths: Any) -> Any:
    """The stage's config: its own defaults, the section's options, and the paths the pipeline sets."""
    section = {key: value for key, value in section.items() if key != "src"}  # the pipeline passes src in paths
    given = {name: section.pop(name) for name in REQUIRED.get(stage, ())}  # finetune's model and data
    config = CONFIGS[stage](**paths, **given)
    owners = _owners(config)
    for key, value in section.items():
        owner = owners[key]
        setattr(owner, key, ",".join(str(v) for v in value) if isinstance(value, list) else _as_field(owner, key, value))
    return config


def _owners(config: Any) -> dict[str, Any]:
    """Each option name -> the (possibly nested) config object that holds it."""
    found = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            found.update(_owners(value))
        else:
            found[f.name] = config
    return found


def _as_field(owner: Any, key: str, value: Any) -> Any:
    hint = typing.get_type_hints(type(owner))[key]
    if hint is str or (typing.get_origin(hint) in (typing.Union, types.UnionType) and str in typing.get_args(hint)):
        return value if value is None else str(value)
    if hint is float:
        return float(value)
    if hint is int:
        return int(float(value))
    return value


def section_digest(section: dict[str, Any], inputs: list[str]) -> str:
    """What a stage's output depends on: its recipe section and the digests of its inputs."""
    return hashlib.sha256(json.dumps({"section": section, "inputs": inputs}, sort_keys=True).encode()).hexdigest()[:16]
