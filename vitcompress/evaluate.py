"""Evaluate a model on one split: loss plus the full metric report."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vitcompress.artifact import load_model
from vitcompress.augment import BatchTransform
from vitcompress.data import DataOptions, load_data
from vitcompress.datasets.imageset import ImageSet
from vitcompress.distributed import DistContext, resolve_device
from vitcompress.errors import require
from vitcompress.loader import BatchLoader
from vitcompress.metrics import metric_collection, to_report


@torch.no_grad()
def evaluate(model: nn.Module, data: ImageSet, transform: BatchTransform, ctx: DistContext,
             batch_size: int = 256, amp_dtype: torch.dtype | None = None) -> dict[str, Any]:
    """Metrics of ``model`` on ``data``; under DDP each rank scores its shard and results are merged."""
    loader = BatchLoader(data, batch_size, ctx.device, shuffle=False, drop_last=False,
                         rank=ctx.rank, world_size=ctx.world_size)
    metrics = metric_collection(len(data.classes), ctx.device)
    loss_sum = torch.zeros(2, device=ctx.device)
    was_training = model.training
    model.eval()
    for images, labels in loader:
        with torch.autocast(ctx.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = model(transform.eval(images)).float()
        count = torch.full((), len(labels), device=ctx.device, dtype=logits.dtype)
        loss_sum += torch.stack([F.cross_entropy(logits, labels, reduction="sum"), count])
        metrics.update(logits, labels)
    model.train(was_training)
    if ctx.distributed:
        torch.distributed.all_reduce(loss_sum)
    report = to_report(metrics.compute(), data.classes)
    report["loss"] = round(float(loss_sum[0] / loss_sum[1].clamp(min=1)), 6)
    report["samples"] = int(loss_sum[1])
    return report


def evaluate_artifact(src: str, data: str, data_dir: str | None = None, download: bool = False,
                      cache_dir: str | None = None, batch_size: int = 256, device: str = "auto",
                      quiet: bool = False) -> dict[str, Any]:
    """Rebuild the model in artifact ``src`` and score it on the test split of ``data``."""
    require(batch_size >= 1, f"--batch-size {batch_size} must be at least 1", "pass --batch-size 1 or more")
    ctx = DistContext(device=resolve_device(device))
    model, meta = load_model(src, ctx.device)
    splits = load_data(DataOptions(spec=data, data_dir=data_dir, download=download, img_size=meta.img_size,
                                   val_split=0.0, cache_dir=cache_dir, quiet=quiet, expected_classes=meta.classes))
    transform = BatchTransform(meta.img_size, meta.mean, meta.std)
    report = evaluate(model, splits.test, transform, ctx, batch_size=batch_size)
    return {"artifact": str(src), "data": data, "model": meta.model_name, "stage": meta.stage, **report}
