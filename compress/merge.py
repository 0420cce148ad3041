"""``vitcompress merge``: token merging (ToMe, ``token_merging.py``) on any ViT/DeiT artifact, training-free by
default; ``--finetune-epochs N`` recovers with the unmerged model as teacher, as prune does.

The artifact keeps the source's weights (finetuned, pruned or INT8 alike) and records the merge schedule;
``load_model`` rebuilds the merging from it.
"""

from __future__ import annotations

from dataclasses import asdict

from torch import nn

from vitcompress.artifact import ArtifactMeta, library_versions, load_model, now_iso, parent_ref, read_meta
from vitcompress.augment import BatchTransform
from vitcompress.compress.recovery import (
    fine_tune_in_place,
    load_source_data,
    make_teacher,
    progress_label,
    size_and_speed,
)
from vitcompress.compress.token_merging import (
    apply_merging,
    check_mergeable,
    describe,
    feasible,
    patch_tokens,
    r_for_keep,
    schedule,
)
from vitcompress.config import MergeConfig
from vitcompress.distributed import DistContext, process_group
from vitcompress.errors import UserError
from vitcompress.evaluate import evaluate
from vitcompress.stage import StageResult, prepare_staging, publish_artifact, staging_guard
from vitcompress.train import seed_everything


def merge(cfg: MergeConfig) -> StageResult:
    """Merge tokens in the model of artifact ``cfg.src``; write the merged artifact to ``cfg.out``."""
    cfg.validate()
    meta = read_meta(cfg.src)
    if meta.merging:
        raise UserError(f"{cfg.src} already merges tokens ({meta.merging['per_block']} per block)",
                        "merge its parent (info shows it) with the schedule you want instead")
    if meta.quantization and meta.quantization.get("attention_matmuls", "full precision") != "full precision":
        raise UserError(f"{cfg.src} quantizes the attention matmuls (qat --quantize-attention), which merging's "
                        "attention does not run", "merge the FP32 (or pruned) artifact, then qat the merged one")
    with process_group(cfg.device) as ctx:
        return _merge(cfg, ctx)


def per_block_schedule(cfg: MergeConfig, model: nn.Module) -> list[int]:
    """Tokens merged per block: from ``--r`` or ``--keep``, each cut to what its block can merge."""
    blocks, patches = len(model.blocks), patch_tokens(model)
    if cfg.keep:
        return r_for_keep(cfg.keep, blocks, patches, cfg.schedule)
    return feasible(schedule(blocks, cfg.r, cfg.schedule), patches)


def _merge(cfg: MergeConfig, ctx: DistContext) -> StageResult:
    model, meta = load_model(cfg.src, ctx.device)
    check_mergeable(model, meta.model_name)
    per_block = per_block_schedule(cfg, model)
    out, staging = prepare_staging(cfg.out, cfg.force, cfg.resume, ctx.is_main, config=cfg)
    seed_everything(cfg.train.seed + ctx.rank)
    data = load_source_data(cfg.source, meta, cfg.src, cfg.train, ctx)
    transform = BatchTransform(meta.img_size, meta.mean, meta.std, cfg.train.augment)
    with staging_guard(staging, ctx.is_main, resumable=cfg.finetune_epochs > 0, config=cfg):
        teacher = make_teacher(model, cfg.kd, cfg.finetune_epochs)  # the unmerged model
        top1_before = evaluate(model, data.test, transform, ctx, progress=progress_label(cfg.train, "scoring unmerged"))["top1"]
        merging = describe(per_block, patch_tokens(model), int(model.num_prefix_tokens), cfg.prop_attn, cfg.schedule)
        apply_merging(model, merging)
        test = evaluate(model, data.test, transform, ctx, progress=progress_label(cfg.train, "scoring merged"))
        top1_merged, top1_recovered = test["top1"], None
        if cfg.finetune_epochs:
            fine_tune_in_place(model, teacher, cfg.kd, data, transform, ctx, staging, cfg.train, resume=cfg.resume)
            test = evaluate(model, data.test, transform, ctx, progress=progress_label(cfg.train, "scoring recovered"))
            top1_recovered = test["top1"]
        before, after = size_and_speed(load_model(cfg.src, ctx.device)[0], model, ctx, meta.img_size)
        report = {"top1_before": top1_before, "top1_merged": top1_merged, "top1_after_recovery": top1_recovered,
                  "finetune_epochs": cfg.finetune_epochs, "before": before, "after": after, "device": str(ctx.device)}
        new_meta = ArtifactMeta(
            stage="merge", model_name=meta.model_name, model_kwargs=meta.model_kwargs, classes=meta.classes,
            img_size=meta.img_size, mean=meta.mean, std=meta.std, heads_per_block=meta.heads_per_block,
            mlp_per_block=meta.mlp_per_block, quantization=meta.quantization, merging=merging,
            parent=parent_ref(cfg.src), recipe={**asdict(cfg), "command": "merge"}, data=data.description,
            versions=library_versions(), created=now_iso(),
            metrics={**test, "params": after["params"], "macs": after["macs"], "merging": report},
        )
        publish_artifact(staging, out, model, new_meta, ctx)
    return StageResult(out, new_meta, model)

