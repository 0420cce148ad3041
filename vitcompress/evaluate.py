"""Evaluate a model on one split: loss plus the full metric report."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vitcompress.artifact import load_model
from vitcompress.augment import BatchTransform
from vitcompress.data import DataOptions, load_test_split
from vitcompress.datasets.imageset import ImageSet
from vitcompress.distributed import DistContext, resolve_device
from vitcompress.errors import require
from vitcompress.loader import BatchLoader
from vitcompress.metrics import metric_collection, to_report
from vitcompress.progress import progress_bar
from vitcompress.runtimes import Runtime, open_runtime
from vitcompress.sources import ModelSource, open_source


@torch.no_grad()
def evaluate(model: nn.Module, data: ImageSet, transform: BatchTransform, ctx: DistContext,
             batch_size: int = 256, amp_dtype: torch.dtype | None = None, progress: str = "") -> dict[str, Any]:
    """Metrics of ``model`` on ``data``; under DDP each rank scores its shard and results are merged.

    ``progress``: the label of a progress bar (rank 0's, on a terminal), none when empty.
    """
    loader = progress_bar(BatchLoader(data, batch_size, ctx.device, shuffle=False, drop_last=False,
                                      rank=ctx.rank, world_size=ctx.world_size), progress, quiet=not progress or not ctx.is_main)
    was_training = model.training
    model.eval()

    def scored() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels in loader:
            with torch.autocast(ctx.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                yield model(transform.eval(images)).float(), labels

    report = score(scored(), data.classes, ctx)
    model.train(was_training)
    return report


def evaluate_runtime(runtime: Runtime, source: ModelSource, data: ImageSet, batch_size: int = 256,
                     progress: str = "") -> dict[str, Any]:
    """Metrics of a deployed model (an ONNX export, an engine) as ``runtime`` runs it, on ``data`` (``progress``: as
    :func:`evaluate`'s)."""
    transform = BatchTransform(source.img_size, source.mean, source.std)
    loader = progress_bar(BatchLoader(data, batch_size, torch.device("cpu"), shuffle=False, drop_last=False), progress,
                          quiet=not progress)

    def scored() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels in loader:
            pixels = transform.eval_pixels(images)
            yield torch.from_numpy(runtime.run(source.prepare(pixels))).float(), labels

    return score(scored(), data.classes, DistContext())


def score(batches: Iterable[tuple[torch.Tensor, torch.Tensor]], classes: list[str], ctx: DistContext) -> dict[str, Any]:
    """The metric report (and mean cross-entropy) of ``(logits, labels)`` batches, merged across ranks under DDP."""
    metrics = metric_collection(len(classes), ctx.device)
    loss_sum = torch.zeros(2, device=ctx.device)
    for logits, labels in batches:
        logits, labels = logits.to(ctx.device), labels.to(ctx.device)
        count = torch.full((), len(labels), device=ctx.device, dtype=logits.dtype)
        loss_sum += torch.stack([F.cross_entropy(logits, labels, reduction="sum"), count])
        metrics.update(logits, labels)
    if ctx.distributed:
        torch.distributed.all_reduce(loss_sum)
    report = to_report(metrics.compute(), classes)
    report["loss"] = round(float(loss_sum[0] / loss_sum[1].clamp(min=1)), 6)
    report["samples"] = int(loss_sum[1])
    return report


def evaluate_artifact(src: str, data: str, data_dir: str | None = None, download: bool = False,
                      cache_dir: str | None = None, batch_size: int = 256, device: str = "auto",
                      quiet: bool = False, backend: str | None = None, stream: bool = False) -> dict[str, Any]:
    """Score artifact or export ``src`` on the test split of ``data``.

    An artifact is rebuilt in PyTorch on ``device``; an export (ONNX, engine, Triton repository) runs in
    ``backend`` (default: ONNX Runtime on the CPU for ONNX, TensorRT for engines), as it will be deployed.
    """
    require(batch_size >= 1, f"--batch-size {batch_size} must be at least 1", "pass --batch-size 1 or more")
    source = open_source(src)
    options = DataOptions(spec=data, data_dir=data_dir, download=download, img_size=source.img_size, val_split=0.0,
                          cache_dir=cache_dir, quiet=quiet, expected_classes=source.classes, stream=stream,
                          trained_on=source.trained_on)
    if source.kind == "artifact" and backend in (None, "torch"):
        ctx = DistContext(device=resolve_device(device))
        model, meta = load_model(src, ctx.device)
        test = load_test_split(options)
        report = evaluate(model, test, BatchTransform(meta.img_size, meta.mean, meta.std), ctx, batch_size=batch_size,
                          progress="" if quiet else "scoring")
        return {"artifact": str(src), "data": data, "model": meta.model_name, "stage": meta.stage, **report}
    runtime = open_runtime(source, backend, max_batch=batch_size)
    try:
        report = evaluate_runtime(runtime, source, load_test_split(options), runtime.batch_limit(source, batch_size),
                                  progress="" if quiet else "scoring")
    finally:
        runtime.close()
    return {"export": str(src), "data": data, "runtime": runtime.name, "precision": source.precision, **report}
