"""What prune, merge and qat share: the source artifact's data, fine-tuning a compressed model in place
with the source model as teacher (through the one ``Trainer``), and the model's size and speed before and after."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

from safetensors.torch import load_file
from torch import nn

from vitcompress.artifact import ArtifactMeta
from vitcompress.augment import BatchTransform
from vitcompress.compress.distill import DistillationLoss
from vitcompress.config import DistillOptions, SourceData, TrainConfig
from vitcompress.data import DataOptions, load_data, streamed_before
from vitcompress.datasets.imageset import DataSplits
from vitcompress.datasets.torchvision_catalog import data_dir_for
from vitcompress.distributed import DistContext
from vitcompress.errors import require
from vitcompress.latency import torch_runs
from vitcompress.models import count_macs, count_params
from vitcompress.timing import TimingMethod, compare, local_timer
from vitcompress.train import BEST_WEIGHTS_FILE, CHECKPOINT_FILE, LOG_FILE, FitResult, Trainer


def load_source_data(source: SourceData, meta: ArtifactMeta, src: str, train: TrainConfig, ctx: DistContext) -> DataSplits:
    """The data the artifact names (or ``source.data``), split for validation as its parent was.

    Under torchrun rank 0 loads first (building any decode cache), then the other ranks, quietly.
    """
    spec = source.data or meta.data.get("spec")
    require(bool(spec), f"{src} does not say which data it was trained on", "pass --data")
    if not source.data:
        check_recorded_data(spec, src)
    seed = meta.recipe.get("train", {}).get("seed", train.seed)  # the parent's validation split
    options = DataOptions(spec=spec, data_dir=data_dir_for(spec, source.data_dir, meta.data), download=source.download,
                          img_size=meta.img_size, val_split=source.val_split, train_subset=source.train_subset, seed=seed,
                          cache_dir=source.cache_dir, quiet=train.quiet or not ctx.is_main, expected_classes=meta.classes,
                          stream=source.stream or streamed_before(spec, meta.data), workers=source.workers)
    return ctx.main_first(lambda: load_data(options))


def check_recorded_data(spec: str, src: str) -> None:
    """The data an artifact records is still where it was: else say whose it was and how to name it now (the
    check of ``--data`` would blame a flag the user never passed)."""
    name, _, path = spec.partition(":")
    require(name != "folder" or Path(path).expanduser().exists(),
            f"{src} was trained on {spec}, which is not there any more",
            "pass --data folder:PATH naming where that data is now (or other data with the same classes)")


def progress_label(train: TrainConfig, label: str) -> str:
    """``label`` for an evaluation's progress bar (``evaluate(progress=...)``), none under ``--quiet``."""
    return "" if train.quiet else label


def make_teacher(model: nn.Module, kd: DistillOptions, epochs: int) -> nn.Module | None:
    """A frozen copy of ``model`` to distill from, when distillation is on and there is training."""
    return copy.deepcopy(model).eval() if kd.distill != "none" and epochs else None


def fine_tune_in_place(model: nn.Module, teacher: nn.Module | None, kd: DistillOptions, data: DataSplits,
                       transform: BatchTransform, ctx: DistContext, workdir: Path, train: TrainConfig,
                       log_name: str | None = None, resume: bool = False,
                       stop_at_val_top1: float | None = None) -> FitResult:
    """Train ``model`` for ``train.epochs`` (distilling from ``teacher``), keep its best validation weights,
    and return how training went.

    ``resume`` continues from ``workdir/last.ckpt`` (the model must already have the checkpoint's shape);
    ``stop_at_val_top1`` ends training after the first epoch whose validation top-1 reaches it.
    """
    distill = (DistillationLoss(teacher, kd.distill, kd.kd_temperature, kd.kd_alpha, kd.kd_layers, student=model)
               if teacher is not None else None)
    trainer = Trainer(model, data, train, transform, ctx, workdir, distill=distill, stop_at_val_top1=stop_at_val_top1)
    try:
        if resume:
            trainer.load_checkpoint()
        fit = trainer.fit()
    finally:
        if distill is not None:
            distill.close()
    best = workdir / BEST_WEIGHTS_FILE
    if best.is_file():
        model.load_state_dict(load_file(str(best), device=str(ctx.device)))
    else:
        model.load_state_dict(trainer.eval_model().state_dict())
    ctx.barrier()  # every rank has read the best weights before rank 0 removes them
    if ctx.is_main:
        for name in (BEST_WEIGHTS_FILE, CHECKPOINT_FILE):
            (workdir / name).unlink(missing_ok=True)
        if log_name and (workdir / LOG_FILE).is_file():
            (workdir / LOG_FILE).rename(workdir / log_name)
    model.eval()
    return fit


FIXED_RECOVERY = {"lr": 2e-4, "epochs": 5, "batch_size": 128}  # for a source whose training is not recorded
SCRATCH_LR_SHARE = 0.5  # a from-scratch model recovers best near half its peak LR (docs/results.md, converged model)
EPOCH_SHARE = 0.1  # the recovery budget: a tenth of the source's training


def derive_recovery(train: TrainConfig, finetune_epochs: int | None, meta: ArtifactMeta) -> tuple[int, str]:
    """Fill what the user left unset of the recovery (``train.lr``, ``train.batch_size``, the epochs) from the
    source's own training; return the epochs and a line saying what was chosen and why.

    From scratch: half the source's peak LR; fine-tuned from pretrained weights: its own (already small) LR; both
    scaled linearly by the batch-size ratio; at most a tenth of its epochs. A source whose training is not recorded
    (not made by ``finetune``) gets fixed defaults (lr 2e-4, 5 epochs, batch 128), suited to fine-tuned models.
    """
    recipe = meta.recipe if meta.recipe.get("command") == "finetune" else {}
    parent = recipe.get("train", {})
    chosen = []
    if train.batch_size is None:
        train.batch_size = int(parent.get("batch_size", FIXED_RECOVERY["batch_size"]))
        chosen.append(f"batch {train.batch_size}")
    if not parent:
        why = "its training is not recorded (fixed defaults, suited to fine-tuned models)"
        if train.lr is None:
            train.lr = FIXED_RECOVERY["lr"]
            chosen.insert(0, f"lr {train.lr:.1e}")
        epochs = FIXED_RECOVERY["epochs"] if finetune_epochs is None else finetune_epochs
    else:
        scratch = not recipe.get("pretrained") and not recipe.get("init_checkpoint")
        trained = int(meta.metrics.get("epochs_run") or parent["epochs"])
        why = (f"{'trained from scratch' if scratch else 'fine-tuned from pretrained weights'}, peak lr "
               f"{parent['lr']:.1e} at batch {parent['batch_size']}, {trained} epochs")
        if train.lr is None:
            share = SCRATCH_LR_SHARE if scratch else 1.0
            train.lr = float(parent["lr"]) * share * train.batch_size / int(parent["batch_size"])
            chosen.insert(0, f"lr {train.lr:.1e}")
        epochs = max(1, math.ceil(EPOCH_SHARE * trained)) if finetune_epochs is None else finetune_epochs
    if finetune_epochs is None:
        chosen.append(f"up to {epochs} epochs" if epochs else "no epochs")
    line = f"recovery: {', '.join(chosen)} (derived from the source: {why})" if chosen and epochs else ""
    return epochs, line


LATENCY_BATCHES = (1, 64)
STAGE_TIMING = TimingMethod(rounds=3, seconds_per_timing=0.2, warmup_seconds=3.0)  # a stage's own check, kept short


def size(model: nn.Module, img_size: int) -> dict[str, Any]:
    """Parameters and MACs per image of ``model``."""
    return {"params": count_params(model), "macs": count_macs(model, img_size)}


def size_and_speed(parent: nn.Module, child: nn.Module, ctx: DistContext, img_size: int
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Size and torch latency of a stage's input and output (``before``, ``after``), timed against each other by the
    timing method (vitcompress/timing.py) on this device; ``after["speedup"]``: the ratio of medians per batch, with
    the interquartile range of the per-round ratios."""
    models = {"parent": parent, "child": child}
    training = child.training
    timing = compare({name: local_timer(torch_runs(m.eval(), img_size, LATENCY_BATCHES, ctx.device))
                      for name, m in models.items()}, ["parent"], LATENCY_BATCHES, STAGE_TIMING)
    child.train(training)
    ms = {name: timing["variants"][name]["median_ms"] for name in models}
    speedup = {str(b): {k: timing["ratios"]["child"]["parent"][str(b)][k] for k in ("ratio", "iqr")} for b in LATENCY_BATCHES}
    return ({**size(parent, img_size), "latency_ms": ms["parent"]},
            {**size(child, img_size), "latency_ms": ms["child"], "speedup": speedup})
