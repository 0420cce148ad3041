"""``vitcompress prune``: remove whole attention heads (and MLP channels), then recover by distillation.

One step scores every head and MLP channel (``importance.py``), chooses what goes (``plan.py``),
cuts it out (``surgery.py``) and fine-tunes with the unpruned model as teacher (``distill.py``,
through the one ``Trainer``). ``--iterative K`` repeats the step K times towards the final ratio.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitcompress.artifact import ArtifactMeta, library_versions, load_model, now_iso, parent_ref, read_meta
from vitcompress.augment import BatchTransform
from vitcompress.compress.importance import CRITERIA
from vitcompress.compress.plan import PrunePlan, choose_per_stage
from vitcompress.compress.reconstruct import reconstruct
from vitcompress.compress.recovery import (
    derive_recovery,
    fine_tune_in_place,
    load_source_data,
    make_teacher,
    progress_label,
    size,
    size_and_speed,
)
from vitcompress.compress.scoring import score_blocks
from vitcompress.compress.surgery import (
    blocks_of,
    check_prunable,
    dependency_graph,
    mlp_widths,
    remove_heads,
    remove_mlp_channels,
    reshape_to,
)
from vitcompress.config import PruneConfig, apply_recovery_epochs
from vitcompress.datasets.imageset import DataSplits
from vitcompress.distributed import DistContext, process_group
from vitcompress.errors import UserError, require
from vitcompress.evaluate import evaluate
from vitcompress.fsutil import atomic_file
from vitcompress.loader import BatchLoader
from vitcompress.models import block_stages, count_macs, count_params, heads_per_block
from vitcompress.stage import StageResult, prepare_staging, publish_artifact, staging_guard
from vitcompress.train import FitResult, seed_everything

PROGRESS_FILE = "prune_progress.json"  # in the staging dir: what --resume needs from before a recovery


@dataclass
class PruneStep:
    """One scoring-surgery-recovery round, with what it removed (indices of the original model)."""

    ratio_heads: float
    ratio_mlp: float
    removed_heads: list[list[int]]
    removed_mlp: int
    reconstruction_error: dict[str, float] | None = None
    top1_after_surgery: float | None = None
    top1_after_recovery: float | None = None


@dataclass
class PrunePreview:
    """What ``--dry-run`` reports: the plan and the size of the model it would leave."""

    model_name: str
    heads_before: list[int]
    heads_after: list[int]
    removed_heads: list[list[int]]
    mlp_before: list[int]
    mlp_after: list[int]
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    criterion: str


class _Alive:
    """Maps current head indices back to the original model's, across iterative steps."""

    def __init__(self, heads: list[int]) -> None:
        self.heads = [list(range(n)) for n in heads]

    def remove(self, drops: list[list[int]]) -> list[list[int]]:
        removed = []
        for alive, drop in zip(self.heads, drops, strict=True):
            removed.append([alive[i] for i in drop])
            for i in sorted(drop, reverse=True):
                del alive[i]
        return removed


def prune(cfg: PruneConfig) -> StageResult | PrunePreview:
    """Prune the model in artifact ``cfg.src``; write the pruned artifact to ``cfg.out``.

    With ``cfg.dry_run`` nothing is written and a :class:`PrunePreview` is returned instead.
    """
    cfg.validate()
    meta = read_meta(cfg.src)
    if meta.quantization:
        raise UserError(f"{cfg.src} is already quantized ({meta.quantization.get('method', 'int8')})",
                        "prune the FP32 artifact it came from, then quantize the pruned one")
    if meta.merging:
        raise UserError(f"{cfg.src} merges tokens: head importance would be scored on merged tokens",
                        "prune the artifact it was merged from, then merge the pruned one")
    cfg.finetune_epochs, derived = derive_recovery(cfg.train, cfg.finetune_epochs, meta)
    apply_recovery_epochs(cfg)
    with process_group(cfg.device) as ctx:  # under torchrun: one plan (rank 0's), recovery with DDP
        if derived and ctx.is_main and not cfg.train.quiet and not cfg.dry_run:
            print(derived, flush=True)
        return _prune(cfg, ctx)


def _prune(cfg: PruneConfig, ctx: DistContext) -> StageResult | PrunePreview:
    model, meta = load_model(cfg.src, ctx.device)
    check_prunable(model, meta.model_name, mlp=cfg.mlp > 0)
    if cfg.dry_run:
        return _preview(cfg, model, meta, ctx)
    out, staging = prepare_staging(cfg.out, cfg.force, cfg.resume, ctx.is_main, config=cfg)
    seed_everything(cfg.train.seed + ctx.rank)
    data = load_source_data(cfg.source, meta, cfg.src, cfg.train, ctx)
    transform = BatchTransform(meta.img_size, meta.mean, meta.std, cfg.train.augment)
    with staging_guard(staging, ctx.is_main, resumable=cfg.finetune_epochs > 0, config=cfg):
        return _prune_and_publish(cfg, model, meta, data, transform, ctx, out, staging)


def _prune_and_publish(cfg: PruneConfig, model: nn.Module, meta: ArtifactMeta, data: DataSplits,
                       transform: BatchTransform, ctx: DistContext, out: Path, staging: Path) -> StageResult:
    teacher = make_teacher(model, cfg.kd, cfg.finetune_epochs)  # the unpruned model, in both paths
    reference = (teacher or copy.deepcopy(model).eval()) if cfg.reconstruct else None
    heads0, mlp0 = heads_per_block(model), mlp_widths(model)
    alive = _Alive(heads0)
    epochs = _epochs_per_step(cfg.finetune_epochs, cfg.iterative)
    progress_file = staging / PROGRESS_FILE
    if cfg.resume:  # a recovery was cut off: take the pruned shape and the report so far from before the stop
        progress = json.loads(progress_file.read_text())
        reshape_to(model, progress["heads"], progress["mlp"], meta.img_size)
        model.to(ctx.device)
        alive.heads = progress["alive"]
        steps = [PruneStep(**s) for s in progress["steps"]]
        before_top1, before, first = progress["top1_before"], progress["before"], progress["step"]
        parent_val = progress.get("parent_val_top1")
    else:
        before_top1 = evaluate(model, data.test, transform, ctx, progress=progress_label(cfg.train, "scoring unpruned"))["top1"]
        parent_val = _parent_val_top1(cfg, model, data, transform, ctx)
        before = size(model, meta.img_size)
        steps, first = [], 1
    stop_at = parent_val - cfg.recover_until / 100 if parent_val is not None else None
    fits: list[FitResult] = []
    for k in range(first, cfg.iterative + 1):
        resuming = cfg.resume and k == first
        if not resuming:
            steps.append(_prune_step(cfg, model, reference, data, transform, ctx, heads0, mlp0, alive, k,
                                     meta.img_size))
            # the last evaluation is the artifact's test report
            test = evaluate(model, data.test, transform, ctx, progress=progress_label(cfg.train, "scoring pruned"))
            steps[-1].top1_after_surgery = test["top1"]
        if epochs[k - 1]:
            if not resuming and ctx.is_main:
                _save_progress(progress_file, k, steps, alive, model, before_top1, before, parent_val)
            train = copy.deepcopy(cfg.train)
            train.epochs = epochs[k - 1]
            fits.append(fine_tune_in_place(model, teacher, cfg.kd, data, transform, ctx, staging, train,
                                           log_name=f"train_log_step{k}.csv" if cfg.iterative > 1 else None,
                                           resume=resuming, stop_at_val_top1=stop_at))
            test = evaluate(model, data.test, transform, ctx, progress=progress_label(cfg.train, "scoring recovered"))
            steps[-1].top1_after_recovery = test["top1"]
    before, after = size_and_speed(load_model(cfg.src, ctx.device)[0], model, ctx, meta.img_size)
    pruning = {
        "criterion": cfg.criterion, "ranking": cfg.ranking, "iterative": cfg.iterative,
        "heads_ratio": cfg.heads, "mlp_ratio": cfg.mlp,
        "heads_before": heads0, "heads_after": heads_per_block(model),
        "mlp_before": mlp0, "mlp_after": mlp_widths(model),
        "removed_heads": [sorted(sum((s.removed_heads[b] for s in steps), [])) for b in range(len(heads0))],
        "top1_before": before_top1, "top1_after_surgery": steps[-1].top1_after_surgery,
        "top1_after_recovery": steps[-1].top1_after_recovery,
        "steps": [asdict(s) for s in steps], "before": before, "after": after,
        "device": str(ctx.device), "world_size": ctx.world_size,
        "recovery": _recovery_report(cfg, parent_val, fits),
    }
    new_meta = ArtifactMeta(
        stage="prune", model_name=meta.model_name, model_kwargs=meta.model_kwargs, classes=meta.classes,
        img_size=meta.img_size, mean=meta.mean, std=meta.std, heads_per_block=heads_per_block(model),
        mlp_per_block=mlp_widths(model), parent=parent_ref(cfg.src), recipe={**asdict(cfg), "command": "prune"},
        data=data.description, versions=library_versions(), created=now_iso(),
        metrics={**test, "params": after["params"], "macs": after["macs"], "pruning": pruning},
    )
    publish_artifact(staging, out, model, new_meta, ctx, resume_files=(progress_file,))
    return StageResult(out, new_meta, model)


def _parent_val_top1(cfg: PruneConfig, model: nn.Module, data: DataSplits, transform: BatchTransform,
                     ctx: DistContext) -> float | None:
    """The unpruned model's validation top-1, which ``--recover-until`` measures the recovery against (on the same
    split the recovery validates on)."""
    if not cfg.recover_until:
        return None
    require(data.val is not None, "--recover-until compares validation scores, and this data has no validation split",
            "pass --val-split 0.1 (or leave --recover-until out)")
    return evaluate(model, data.val, transform, ctx, progress=progress_label(cfg.train, "validating unpruned"))["top1"]


def _recovery_report(cfg: PruneConfig, parent_val: float | None, fits: list[FitResult]) -> dict[str, Any]:
    """How the recovery went: its epochs against the cap and, with ``--recover-until``, whether it got there."""
    report: dict[str, Any] = {"epochs_cap": cfg.finetune_epochs, "epochs_run": sum(len(f.history) for f in fits),
                              "lr": cfg.train.lr, "batch_size": cfg.train.batch_size,
                              "recover_until_points": cfg.recover_until or None}
    if parent_val is not None and fits:
        best = fits[-1].best_val_top1 or 0.0
        report.update(parent_val_top1=parent_val, val_top1=best,
                      reached=100 * (parent_val - best) <= cfg.recover_until + 1e-9,
                      points_below_parent=round(100 * (parent_val - best), 2))
    return report


def _save_progress(path: Path, step: int, steps: list[PruneStep], alive: _Alive, model: nn.Module,
                   top1_before: float, before: dict[str, Any], parent_val: float | None) -> None:
    """What ``--resume`` needs before step ``step``'s recovery: the shape, the head mapping, the report so far."""
    progress = {"step": step, "steps": [asdict(s) for s in steps], "alive": alive.heads, "heads": heads_per_block(model),
                "mlp": mlp_widths(model), "top1_before": top1_before, "before": before, "parent_val_top1": parent_val}
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(progress))


def _prune_step(cfg: PruneConfig, model: nn.Module, reference: nn.Module | None, data: DataSplits,
                transform: BatchTransform, ctx: DistContext, heads0: list[int], mlp0: list[int], alive: _Alive, k: int,
                img_size: int) -> PruneStep:
    """Score, choose and cut towards ``k / iterative`` of the final ratios; then, with a ``reference`` (the unpruned
    model), refit the output projections to it (``reconstruct.py``)."""
    ratio_heads, ratio_mlp = cfg.heads * k / cfg.iterative, cfg.mlp * k / cfg.iterative
    needs_data = CRITERIA[cfg.criterion]().needs_data or reference is not None
    batches = _score_batches(cfg, data, transform, ctx) if needs_data else []
    plan = _plan(cfg, model, batches, ctx, heads0, mlp0, ratio_heads, ratio_mlp, seed=cfg.train.seed + k)
    removed = alive.remove(plan.heads)
    apply_plan(model, plan, img_size)
    step = PruneStep(ratio_heads, ratio_mlp, removed, sum(len(m) for m in plan.mlp))
    if reference is not None:
        errors = reconstruct(model, reference, [images for images, _ in batches])
        ctx.broadcast_state(model)  # every rank keeps rank 0's fit (the solves can round apart across GPUs)
        step.reconstruction_error = {"before": sum(e[0] for e in errors) / len(errors),
                                     "after": sum(e[1] for e in errors) / len(errors)}
    return step


def apply_plan(model: nn.Module, plan: PrunePlan, img_size: int) -> None:
    """Cut out what ``plan`` names: heads first, then MLP channels (through the dependency graph)."""
    blocks = blocks_of(model)
    for block, drop in zip(blocks, plan.heads, strict=True):
        remove_heads(block.attn, drop)
    if any(plan.mlp):
        graph = dependency_graph(model, img_size)
        for block, drop in zip(blocks, plan.mlp, strict=True):
            remove_mlp_channels(graph, block.mlp.fc1, drop)


def _plan(cfg: PruneConfig, model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], ctx: DistContext,
          heads0: list[int], mlp0: list[int], ratio_heads: float, ratio_mlp: float, seed: int) -> PrunePlan:
    criterion = CRITERIA[cfg.criterion]()
    scores = score_blocks(model, criterion, batches if criterion.needs_data else [], seed=seed, mlp=cfg.mlp > 0)
    stages = [len(stage) for stage in block_stages(model)]
    heads = choose_per_stage(scores.heads, heads0, ratio_heads, cfg.ranking, "heads", stages)
    mlp = (choose_per_stage(scores.mlp, mlp0, ratio_mlp, cfg.ranking, "MLP channels", stages) if cfg.mlp
           else [[] for _ in heads])
    return ctx.broadcast_object(PrunePlan(heads, mlp))  # every rank cuts the same: scores can round apart across GPUs


def _score_batches(cfg: PruneConfig, data: DataSplits, transform: BatchTransform,
                   ctx: DistContext) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``score_batches`` batches of a seeded shuffle of train, as the model sees them in eval."""
    loader = BatchLoader(data.train, min(cfg.train.batch_size, 64), ctx.device, shuffle=True, drop_last=False,
                         seed=cfg.train.seed)
    batches = []
    for images, labels in loader:
        batches.append((transform.eval(images), labels))
        if len(batches) == cfg.score_batches:
            break
    return batches


def _epochs_per_step(total: int, steps: int) -> list[int]:
    """Split the recovery epochs over the steps, the later steps taking any remainder."""
    base, extra = divmod(total, steps)
    return [base + (1 if i >= steps - extra else 0) for i in range(steps)]


def _preview(cfg: PruneConfig, model: nn.Module, meta: ArtifactMeta, ctx: DistContext) -> PrunePreview:
    """The plan of a one-shot run, and the params/MACs it would leave; nothing is written."""
    needs_data = CRITERIA[cfg.criterion]().needs_data
    data = load_source_data(cfg.source, meta, cfg.src, cfg.train, ctx) if needs_data else None
    transform = BatchTransform(meta.img_size, meta.mean, meta.std) if needs_data else None
    heads0, mlp0 = heads_per_block(model), mlp_widths(model)
    params0, macs0 = count_params(model), count_macs(model, meta.img_size)
    batches = _score_batches(cfg, data, transform, ctx) if needs_data else []
    plan = _plan(cfg, model, batches, ctx, heads0, mlp0, cfg.heads, cfg.mlp, seed=cfg.train.seed + cfg.iterative)
    apply_plan(model, plan, meta.img_size)
    return PrunePreview(meta.model_name, heads0, heads_per_block(model), plan.heads, mlp0, mlp_widths(model),
                        params0, count_params(model), macs0, count_macs(model, meta.img_size), cfg.criterion)
