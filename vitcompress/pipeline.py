"""``vitcompress pipeline``: finetune -> prune -> merge -> qat -> export -> bench from one recipe, resumable.

Every step writes one directory under ``OUT`` (``fp32``, ``pruned``, ``pruned-merged``, ``int8``, ``pruned-int8``,
``onnx-*``, ``bench``) through its stage's own atomic publish. ``OUT/pipeline.json`` records, per
step, a digest of the recipe section and of the steps it read from. A re-run skips a step whose
directory is complete and whose digest matches, resumes an interrupted finetune, prune recovery or
qat (``--resume`` of that stage), and redoes anything else (exports and bench are short).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from vitcompress.data import streamed_before
from vitcompress.datasets.torchvision_catalog import data_dir_for
from vitcompress.distributed import DistContext, process_group
from vitcompress.errors import UserError, require
from vitcompress.fsutil import atomic_file
from vitcompress.recipe import STAGES, build_config, load_recipe, section_digest
from vitcompress.runs import STATE_FILE

# --resume (a checkpoint in OUT.tmp-run/); every rank runs them under torchrun
TRAINING_STAGES = ("finetune", "prune", "merge", "qat")
DEFAULT_RECIPE = "default.yaml"


@dataclass
class Step:
    """One stage run: ``stage`` with its recipe section (and ``overrides`` of it), reading ``inputs`` (other steps),
    writing ``name``."""

    name: str
    stage: str
    inputs: list[str] = field(default_factory=list)
    overrides: dict[str, Any] = field(default_factory=dict)


# An export step's name by its format: onnx-int8, ir-int8 (OpenVINO), engine-int8, triton-int8
EXPORT_PREFIXES = {"onnx": "onnx", "openvino": "ir", "tensorrt": "engine", "triton": "triton"}


def export_formats(section: dict[str, Any]) -> list[str]:
    """The export section's ``format``: one, or a comma list (each artifact is exported in each); ``openvino``
    only where OpenVINO is installed (it is a dependency, but a user may have removed it)."""
    from vitcompress.runtimes.openvino_backend import openvino_missing

    formats = [f.strip() for f in str(section.get("format", "onnx")).split(",") if f.strip()]
    return [f for f in formats if f != "openvino" or openvino_missing() is None]


@dataclass
class PipelineResult:
    path: Path
    ran: list[str]
    skipped: list[str]
    bench: Any = None  # the BenchResult, when bench ran or was complete


def default_recipe() -> Path:
    return Path(str(resources.files("vitcompress.recipes") / DEFAULT_RECIPE))


def plan(recipe: dict[str, dict[str, Any]]) -> list[Step]:
    """The steps a recipe makes: FP32, pruned, merged (the pruned model's tokens, if it prunes), INT8 of each, an
    export of each, and one bench of all."""
    steps: list[Step] = []
    artifacts: list[str] = []
    if "finetune" in recipe:
        steps.append(Step("fp32", "finetune"))
        artifacts.append("fp32")
    elif recipe:
        artifacts.append("src")  # the first section's src: artifact (checked by the recipe)
    if "prune" in recipe:
        steps.append(Step("pruned", "prune", [artifacts[0]]))
        artifacts.append("pruned")
    if "merge" in recipe:
        source = artifacts[-1]
        name = "merged" if source in ("fp32", "src") else f"{source}-merged"
        steps.append(Step(name, "merge", [source]))
        artifacts.append(name)
    if "qat" in recipe:
        for source in list(artifacts):
            name = "int8" if source in ("fp32", "src") else f"{source}-int8"
            steps.append(Step(name, "qat", [source]))
            artifacts.append(name)
    exports = []
    if "export" in recipe:
        for fmt in export_formats(recipe["export"]):
            for source in artifacts:
                name = f"{EXPORT_PREFIXES.get(fmt, fmt)}-{source}"
                steps.append(Step(name, "export", [source], {"format": fmt}))
                exports.append(name)
    if "bench" in recipe:
        steps.append(Step("bench", "bench", exports or artifacts))
    return steps


def pipeline(recipe_path: str | None, out: str, from_stage: str | None = None, until_stage: str | None = None,
             quiet: bool = False, log: Callable[[str], None] = print) -> PipelineResult:
    """Run (or finish) the recipe's stages into ``out``.

    Under ``torchrun`` every process runs the training stages together (finetune, prune's recovery and
    qat with DDP, in one process group); rank 0 alone exports, benches and writes ``pipeline.json``.
    """
    for flag, stage in (("--from", from_stage), ("--until", until_stage)):
        require(stage is None or stage in STAGES, f"{flag} {stage!r} is not a stage", f"use one of {', '.join(STAGES)}")
    recipe = load_recipe(recipe_path or default_recipe())
    root = Path(out)
    steps = plan(recipe)
    check_options(steps, recipe, root)
    with process_group("auto") as ctx:
        rank_log = log if ctx.is_main else lambda _: None  # rank 0 reports
        return _run_steps(recipe, steps, root, from_stage, until_stage, quiet, rank_log, ctx)


def _run_steps(recipe: dict[str, dict[str, Any]], steps: list[Step], root: Path, from_stage: str | None,
               until_stage: str | None, quiet: bool, log: Callable[[str], None], ctx: DistContext) -> PipelineResult:
    root.mkdir(parents=True, exist_ok=True)
    state = read_state(root)
    ctx.barrier()  # every rank has read the state before rank 0 rewrites it
    selected = set(STAGES[STAGES.index(from_stage or STAGES[0]) : STAGES.index(until_stage or STAGES[-1]) + 1])
    digests: dict[str, str] = {}
    ran, skipped, bench_result = [], [], None
    for step in steps:
        section = {**recipe[step.stage], **step.overrides}
        digests[step.name] = section_digest({"step": step.name, **section}, [digests.get(i, i) for i in step.inputs])
        target = root / step.name
        done = state.get(step.name, {})
        complete = target.exists() and done.get("digest") == digests[step.name] and done.get("status") == "done"
        if complete:
            skipped.append(step.name)
            log(f"[pipeline] {step.name}: complete, skipped")
            bench_result = _load_bench(target) if step.stage == "bench" else bench_result
            continue
        if step.stage not in selected:
            if not target.exists() and _needed_later(step, steps, selected):
                raise UserError(f"{target} is missing and --from/--until leave {step.stage} out",
                                f"run without --from/--until, or with --from {step.stage}")
            skipped.append(step.name)
            log(f"[pipeline] {step.name}: not selected")
            continue
        resume = _resumable(step, target, done, digests[step.name])
        if step.stage in TRAINING_STAGES:
            ctx.barrier()  # every rank has seen the files as they were before rank 0 starts this step
        elif not ctx.is_main:
            continue  # exports and bench are rank 0's (the training stages before them end with a barrier)
        log(f"[pipeline] {step.name}: {step.stage}{' (resuming)' if resume else ''}")
        state[step.name] = {"digest": digests[step.name], "status": "running", "stage": step.stage}
        if ctx.is_main:
            _write_state(root, state, recipe)
        result = _run_step(step, _step_config(step, recipe, root, resume), quiet)
        state[step.name]["status"] = "done"
        if ctx.is_main:
            _write_state(root, state, recipe)
        ran.append(step.name)
        if step.stage == "bench":
            bench_result = result
    return PipelineResult(root, ran, skipped, bench_result)


def _needed_later(step: Step, steps: list[Step], selected: set[str]) -> bool:
    """Whether a selected step reads ``step``'s output."""
    return any(step.name in s.inputs and s.stage in selected for s in steps)


def _resumable(step: Step, target: Path, done: dict[str, Any], digest: str) -> bool:
    from vitcompress.stage import staging_dir
    from vitcompress.train import CHECKPOINT_FILE

    return (step.stage in TRAINING_STAGES and done.get("digest") == digest
            and (staging_dir(target) / CHECKPOINT_FILE).is_file())


def check_options(steps: list[Step], recipe: dict[str, dict[str, Any]], root: Path) -> None:
    """Every step's options, checked before the first step runs: a bad value in qat must not wait for finetune."""
    configs: dict[str, Any] = {}
    for step in steps:
        try:
            config = configs[step.name] = _step_config(step, recipe, root, resume=False)
            config.validate()
            finetune = next((configs[s.name] for s in steps if s.stage == "finetune" and s.name in configs), None)
            if finetune is not None:  # a model the recipe trains first
                _check_architecture_before_training(step.stage, config, finetune)
        except UserError as exc:
            raise UserError(f"recipe section '{step.stage}': {exc.problem}", exc.fix) from None


def _check_architecture_before_training(stage: str, config: Any, finetune: Any) -> None:
    """What prune, merge or ``qat --quantize-attention`` would refuse about the model is refused now, not after
    finetune has trained it (the model is built on the meta device)."""
    from vitcompress.compress.quantize import check_attention_quantizable
    from vitcompress.compress.surgery import check_prunable
    from vitcompress.compress.token_merging import check_mergeable
    from vitcompress.models import meta_model

    if stage == "prune":
        model = meta_model(finetune.model, finetune.model_kwargs, finetune.img_size, finetune.patch_size)
        check_prunable(model, finetune.model, mlp=config.mlp > 0)
    elif stage == "merge":
        check_mergeable(meta_model(finetune.model, finetune.model_kwargs, finetune.img_size, finetune.patch_size),
                        finetune.model)
    elif stage == "qat" and config.quantize_attention:
        check_attention_quantizable(meta_model(finetune.model, finetune.model_kwargs, finetune.img_size, finetune.patch_size))


def _step_config(step: Step, recipe: dict[str, dict[str, Any]], root: Path, resume: bool) -> Any:
    """The stage's config for ``step``: its recipe section, reading its inputs under ``root``, writing ``root/name``."""
    section = {**recipe[step.stage], **step.overrides}
    out = str(root / step.name)
    sources = [section["src"] if name == "src" else str(root / name) for name in step.inputs]
    if step.stage == "finetune":
        return build_config("finetune", section, out=out, force=not resume, resume=resume)
    if step.stage == "bench":  # bench on finetune's data finds it where finetune did, and streams it if finetune did
        finetune = recipe.get("finetune", {})
        trained_on = {"spec": finetune.get("data"), "root": finetune.get("data_dir"), "streamed": finetune.get("stream")}
        spec = section.get("data")
        data_dir = data_dir_for(spec, section.get("data_dir"), trained_on) if spec else None
        stream = bool(section.get("stream")) or (bool(spec) and streamed_before(spec, trained_on))
        return build_config("bench", {**section, "data_dir": data_dir, "stream": stream}, srcs=sources, out=out, force=True)
    resume_option = {"resume": resume} if step.stage in TRAINING_STAGES else {}
    return build_config(step.stage, section, src=sources[0], out=out, force=not resume, **resume_option)


def _run_step(step: Step, config: Any, quiet: bool) -> Any:
    from vitcompress.bench import bench
    from vitcompress.compress.finetune import finetune
    from vitcompress.compress.merge import merge
    from vitcompress.compress.prune import prune
    from vitcompress.compress.qat import qat
    from vitcompress.export.exporter import export

    if hasattr(config, "train"):
        config.train.quiet = config.train.quiet or quiet
    else:
        config.quiet = config.quiet or quiet
    stages = {"finetune": finetune, "prune": prune, "merge": merge, "qat": qat, "export": export, "bench": bench}
    return stages[step.stage](config)


def _load_bench(target: Path) -> Any:
    from vitcompress.bench import BenchResult

    return BenchResult(target, json.loads((target / "results.json").read_text()))


def read_state(root: Path) -> dict[str, Any]:
    """Each step of the run in ``root``, in run order: its stage, recipe digest and status (empty when unknown)."""
    path = root / STATE_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text()).get("steps", {})
    except (json.JSONDecodeError, AttributeError):
        return {}  # a damaged state file only means nothing is known to be complete


def _write_state(root: Path, state: dict[str, Any], recipe: dict[str, Any]) -> None:
    with atomic_file(root / STATE_FILE) as tmp:
        tmp.write_text(json.dumps({"recipe": recipe, "steps": state}, indent=2) + "\n")
