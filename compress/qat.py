"""``vitcompress qat``: INT8 post-training quantization (calibration) and quantization-aware training.

The model gets modelopt's fake quantizers (``quantize.py``): INT8 weights per output channel and
INT8 activations per tensor on every Linear, except the layers ``--skip`` names. Calibration on
``--calib-size`` training images sets the ranges (PTQ); ``--epochs N`` then fine-tunes through the
quantizers (straight-through gradients) while distilling from the FP32 source model.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitcompress.artifact import ArtifactMeta, library_versions, load_model, now_iso, parent_ref, read_meta
from vitcompress.augment import BatchTransform
from vitcompress.compress.quantize import (
    calibrate,
    insert_quantizers,
    modelopt,
    parse_skip,
    quant_config,
    quantized_layers,
    restore_quantizers,
)
from vitcompress.compress.recovery import fine_tune_in_place, load_source_data, make_teacher, progress_label
from vitcompress.config import QatConfig
from vitcompress.datasets.imageset import DataSplits, ImageSet
from vitcompress.distributed import DistContext, process_group
from vitcompress.errors import UserError, require
from vitcompress.evaluate import evaluate
from vitcompress.fsutil import atomic_file
from vitcompress.loader import BatchLoader
from vitcompress.models import count_macs, count_params, require_transformer
from vitcompress.progress import progress_bar
from vitcompress.stage import StageResult, prepare_staging, publish_artifact, staging_guard
from vitcompress.train import CHECKPOINT_FILE, seed_everything

CALIB_BATCH = 64
PROGRESS_FILE = "qat_progress.json"  # in the staging dir: what --resume needs from before the QAT epochs


def qat(cfg: QatConfig) -> StageResult | dict[str, Any]:
    """Quantize the model in artifact ``cfg.src`` to INT8; write the quantized artifact to ``cfg.out``.

    With ``cfg.sensitivity`` nothing is written; the per-group sensitivity report is returned instead.
    """
    cfg.validate()
    meta = read_meta(cfg.src)
    if meta.quantization:
        raise UserError(f"{cfg.src} is already quantized ({meta.quantization['method']} calibration)",
                        "quantize the FP32 (or pruned) artifact it came from")
    modelopt()  # fail early, with the install hint, before any data is read
    with process_group(cfg.device) as ctx:  # under torchrun: rank 0's ranges on every rank, QAT with DDP
        return _qat(cfg, ctx)


def _qat(cfg: QatConfig, ctx: DistContext) -> StageResult | dict[str, Any]:
    model, meta = load_model(cfg.src, ctx.device)
    require_transformer(model, meta.model_name, "qat")
    if meta.merging and cfg.kd.kd_layers:
        raise UserError(f"{cfg.src} merges tokens, whose blocks --kd-layers cannot compare token by token",
                        "leave --kd-layers out (the logits are distilled)")
    if meta.merging and cfg.quantize_attention:
        raise UserError(f"{cfg.src} merges tokens, and merging's attention does not run quantized attention matmuls",
                        "drop --quantize-attention (the projections are INT8 either way)")
    if not cfg.sensitivity:
        out, staging = prepare_staging(cfg.out, cfg.force, cfg.resume, ctx.is_main, config=cfg)
    seed_everything(cfg.train.seed + ctx.rank)
    data = load_source_data(cfg.source, meta, cfg.src, cfg.train, ctx)
    require(cfg.calib_size <= len(data.train), f"--calib-size {cfg.calib_size} is more than the {len(data.train)} "
            "training images", f"pass --calib-size {len(data.train)} or less")
    transform = BatchTransform(meta.img_size, meta.mean, meta.std, cfg.train.augment)
    if cfg.sensitivity:
        from vitcompress.compress.sensitivity import sensitivity

        return sensitivity(model, cfg, data, transform, ctx)
    with staging_guard(staging, ctx.is_main, resumable=cfg.train.epochs > 0, config=cfg):
        return _quantize_and_publish(cfg, model, meta, data, transform, ctx, out, staging)


def _quantize_and_publish(cfg: QatConfig, model: nn.Module, meta: ArtifactMeta, data: DataSplits,
                          transform: BatchTransform, ctx: DistContext, out: Path, staging: Path) -> StageResult:
    teacher = make_teacher(model, cfg.kd, cfg.train.epochs)
    config = quant_config(cfg.calib_method, parse_skip(cfg.skip), cfg.quantize_attention)
    progress_file = staging / PROGRESS_FILE
    if cfg.resume:  # the ranges are in the checkpoint; calibration and the PTQ scores were done before the stop
        progress = json.loads(progress_file.read_text())
        checkpoint = torch.load(staging / CHECKPOINT_FILE, map_location="cpu", weights_only=True)["model"]
        restore_quantizers(model, config, checkpoint, progress["unreached"])
        model.to(ctx.device)
    else:
        def top1(label: str) -> float:
            return evaluate(model, data.test, transform, ctx, progress=progress_label(cfg.train, label))["top1"]

        progress = {"top1_fp32": top1("scoring FP32")}
        progress["unreached"] = quantize_and_calibrate(model, config, cfg, data, transform, ctx)
        progress["top1_ptq"] = top1("scoring PTQ")
        if ctx.is_main:
            with atomic_file(progress_file) as tmp:
                tmp.write_text(json.dumps(progress))
    top1_fp32, top1_ptq, unreached = progress["top1_fp32"], progress["top1_ptq"], progress["unreached"]
    fit = (fine_tune_in_place(model, teacher, cfg.kd, data, transform, ctx, staging, cfg.train, resume=cfg.resume)
           if cfg.train.epochs else None)
    test = evaluate(model, data.test, transform, ctx, progress=progress_label(cfg.train, "scoring INT8"))
    quantized, skipped = quantized_layers(model)
    quantization = {"format": "int8 fake-quant (nvidia-modelopt)", "method": cfg.calib_method,
                    "percentile": cfg.percentile if cfg.calib_method == "percentile" else None,
                    "weights": "int8 per output channel", "activations": "int8 per tensor",
                    "skip": parse_skip(cfg.skip), "quantized_layers": quantized, "skipped_layers": skipped,
                    "attention_matmuls": "int8 q/k/v per tensor" if cfg.quantize_attention else "full precision",
                    "unreached_quantizers": unreached, "modelopt_config": config}
    new_meta = ArtifactMeta(
        stage="qat", model_name=meta.model_name, model_kwargs=meta.model_kwargs, classes=meta.classes,
        img_size=meta.img_size, mean=meta.mean, std=meta.std, heads_per_block=meta.heads_per_block,
        mlp_per_block=meta.mlp_per_block, quantization=quantization, merging=meta.merging, parent=parent_ref(cfg.src),
        recipe={**asdict(cfg), "command": "qat"}, data=data.description, versions=library_versions(), created=now_iso(),
        metrics={**test, "params": count_params(model), "macs": count_macs(model, meta.img_size),
                 "qat": {"top1_fp32": top1_fp32, "top1_ptq": top1_ptq,
                         "top1_qat": test["top1"] if cfg.train.epochs else None, "calib_size": cfg.calib_size,
                         "epochs": len(fit.history) if fit else 0, "time_budget": cfg.train.time_budget or None,
                         "device": str(ctx.device), "world_size": ctx.world_size}},
    )
    publish_artifact(staging, out, model, new_meta, ctx, resume_files=(progress_file,))
    return StageResult(out, new_meta, model)


def quantize_and_calibrate(model: nn.Module, config: dict[str, Any], cfg: QatConfig, data: DataSplits,
                           transform: BatchTransform, ctx: DistContext) -> list[str]:
    """Insert quantizers and calibrate them on ``cfg.calib_size`` training images (PTQ).

    Returns the quantizers calibration never reached (switched off; see ``quantize.calibrate``).
    """
    insert_quantizers(model, config)
    unreached = calibrate(model, calibration_loop(data.train, cfg.calib_size, transform, ctx, cfg.train.seed,
                                                  quiet=cfg.train.quiet), cfg.calib_method, cfg.percentile)
    ctx.broadcast_state(model)  # every rank calibrated on the same images; rank 0's ranges are the ones kept
    return unreached


def calibration_loop(train: ImageSet, size: int, transform: BatchTransform, ctx: DistContext,
                     seed: int, quiet: bool = True) -> Callable[[nn.Module], None]:
    """A forward loop over ``size`` images of a seeded shuffle of ``train`` (what modelopt calls forward_loop)."""
    indices = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:size]
    subset = train.subset(indices.sort().values)

    def loop(model: nn.Module) -> None:
        batches = BatchLoader(subset, CALIB_BATCH, ctx.device, shuffle=False, drop_last=False)
        for images, _ in progress_bar(batches, "calibrating", quiet=quiet or not ctx.is_main):
            model(transform.eval(images))

    return loop
