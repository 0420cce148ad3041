"""``vitcompress finetune``: train a timm Vision Transformer on a dataset and write an fp32 artifact."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from timm.data import resolve_data_config
from torch import nn

from vitcompress.artifact import ArtifactMeta, library_versions, now_iso
from vitcompress.augment import BatchTransform
from vitcompress.compress.distill import DistillationLoss
from vitcompress.compress.recovery import progress_label
from vitcompress.compress.teacher import load_teacher
from vitcompress.config import FinetuneConfig
from vitcompress.data import DataOptions, load_data
from vitcompress.datasets.imageset import DataSplits
from vitcompress.distributed import DistContext, process_group
from vitcompress.evaluate import evaluate
from vitcompress.models import (
    build_kwargs,
    check_geometry,
    check_model_name,
    count_macs,
    count_params,
    create_model,
    default_img_size,
    heads_per_block,
    load_init_checkpoint,
    parse_model_kwargs,
)
from vitcompress.plots import save_confusion_png
from vitcompress.stage import StageResult, prepare_staging, publish_artifact, staging_guard
from vitcompress.train import BEST_WEIGHTS_FILE, Trainer, seed_everything


def finetune(cfg: FinetuneConfig) -> StageResult:
    """Fine-tune (or train from scratch) ``cfg.model`` on ``cfg.data``; write the artifact to ``cfg.out``.

    Started by ``torchrun``, every process trains its shard (DDP) and rank 0 writes the files.
    """
    cfg.validate()
    check_model_name(cfg.model)
    img_size = cfg.img_size if cfg.img_size is not None else default_img_size(cfg.model)
    check_geometry(img_size, cfg.patch_size, cfg.model)
    with process_group(cfg.device) as ctx:
        return _finetune(cfg, img_size, ctx)


def _finetune(cfg: FinetuneConfig, img_size: int, ctx: DistContext) -> StageResult:
    out, staging = prepare_staging(cfg.out, cfg.force, cfg.resume, ctx.is_main, config=cfg)
    seed_everything(cfg.train.seed + ctx.rank)
    data = ctx.main_first(lambda: load_data(_data_options(cfg, img_size, ctx)))  # rank 0 builds any decode cache
    kwargs = build_kwargs(data.num_classes, img_size, cfg.patch_size, parse_model_kwargs(cfg.model_kwargs), cfg.model)
    if cfg.drop_path:
        kwargs.setdefault("drop_path_rate", cfg.drop_path)
    model = create_model(cfg.model, kwargs, pretrained=cfg.pretrained)
    initialised = None
    if cfg.init_checkpoint:
        keys = load_init_checkpoint(model, cfg.init_checkpoint)
        initialised = {"loaded": len(keys["loaded"]), "resampled": keys["resampled"], "new": keys["new"]}
        if ctx.is_main and not cfg.train.quiet:
            print(f"{cfg.init_checkpoint}: {initialised['loaded']} tensors loaded, resampled to this model: "
                  f"{', '.join(keys['resampled']) or 'none'}, new: {', '.join(keys['new']) or 'none'}", flush=True)
    data_cfg = resolve_data_config({}, model=model)
    transform = BatchTransform(img_size, data_cfg["mean"], data_cfg["std"], cfg.train.augment)
    with staging_guard(staging, ctx.is_main, config=cfg):
        return _train_and_publish(cfg, ctx, model, data, transform, kwargs, out, staging, initialised)


def _train_and_publish(cfg: FinetuneConfig, ctx: DistContext, model: nn.Module, data: DataSplits,
                       transform: BatchTransform, kwargs: dict[str, Any], out: Path, staging: Path,
                       initialised: dict[str, Any] | None) -> StageResult:
    distill = _distillation(cfg, model, data, transform)
    trainer = Trainer(model, data, cfg.train, transform, ctx, staging, distill=distill)
    try:
        if cfg.resume:
            trainer.load_checkpoint()
        started = time.time()
        fit = trainer.fit()
    finally:
        if distill is not None:
            distill.close()
    final = trainer.eval_model()
    if (staging / BEST_WEIGHTS_FILE).is_file():
        ctx.barrier()
        final.load_state_dict(load_file(str(staging / BEST_WEIGHTS_FILE), device=str(ctx.device)))
    # full precision, as `vitcompress eval` scores the artifact
    test = evaluate(final, data.test, transform, ctx, progress=progress_label(cfg.train, "scoring"))
    meta = ArtifactMeta(
        stage="finetune", model_name=cfg.model, model_kwargs=kwargs, classes=data.classes, img_size=transform.img_size,
        mean=transform.mean_rgb, std=transform.std_rgb, heads_per_block=heads_per_block(final),
        recipe=_recipe(cfg), data=data.description, versions=library_versions(), created=now_iso(),
        metrics={**test, "params": count_params(final), "macs": count_macs(final, transform.img_size),
                 "best_epoch": fit.best_epoch, "best_val_top1": fit.best_val_top1, "epochs_run": len(fit.history),
                 "stopped_early": fit.stopped_early, "train_images_per_s": round(fit.images_per_second, 2),
                 "train_seconds": round(fit.seconds, 2), "train_wall_seconds": round(fit.wall_seconds, 2),
                 "time_budget": cfg.train.time_budget or None, "world_size": ctx.world_size,
                 "device": _device_name(ctx.device), "wall_seconds_this_run": round(time.time() - started, 2),
                 "init_checkpoint": initialised},
    )
    publish_artifact(staging, out, final, meta, ctx,
                     also=lambda folder: save_confusion_png(test["confusion_matrix"], data.classes, folder / "confusion.png",
                                                            title=f"{cfg.model} on {cfg.data}: top-1 {test['top1']:.3f}"))
    return StageResult(out, meta)


def _distillation(cfg: FinetuneConfig, model: nn.Module, data: DataSplits,
                  transform: BatchTransform) -> DistillationLoss | None:
    """``--teacher``'s loss, as DeiT trains: a distilled student (``deit_*_distilled_*``) learns the labels through
    its class token and the teacher through its distillation token; any other student mixes both on its one head."""
    if not cfg.teacher:
        return None
    teacher = load_teacher(cfg.teacher, cfg.teacher_checkpoint, data.classes, transform)
    if hasattr(model, "set_distilled_training"):
        model.set_distilled_training(True)  # training returns (class, distillation) logits; eval their mean
    return DistillationLoss(teacher, cfg.kd.distill, cfg.kd.kd_temperature, cfg.kd.kd_alpha, cfg.kd.kd_layers,
                            student=model, teacher_body=teacher.model)


def _data_options(cfg: FinetuneConfig, img_size: int, ctx: DistContext) -> DataOptions:
    return DataOptions(spec=cfg.data, data_dir=cfg.data_dir, download=cfg.download, img_size=img_size,
                       val_split=cfg.val_split, train_subset=cfg.train_subset, seed=cfg.train.seed, cache_dir=cfg.cache_dir,
                       quiet=cfg.train.quiet or not ctx.is_main, stream=cfg.stream, workers=cfg.workers)


def _recipe(cfg: FinetuneConfig) -> dict[str, Any]:
    recipe = asdict(cfg)
    recipe["command"] = "finetune"
    return recipe


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


