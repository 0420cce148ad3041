"""Classification metrics (torchmetrics; synchronised across DDP ranks when computed)."""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)


def metric_collection(num_classes: int, device: torch.device) -> MetricCollection:
    """Top-1/top-5 accuracy, macro precision/recall/F1, per-class accuracy and the confusion matrix."""
    return MetricCollection({
        "top1": MulticlassAccuracy(num_classes, top_k=1, average="micro"),
        "top5": MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro"),
        "precision_macro": MulticlassPrecision(num_classes, average="macro"),
        "recall_macro": MulticlassRecall(num_classes, average="macro"),
        "f1_macro": MulticlassF1Score(num_classes, average="macro"),
        "per_class_accuracy": MulticlassAccuracy(num_classes, average=None),
        "confusion": MulticlassConfusionMatrix(num_classes),
    }).to(device)


def to_report(values: dict[str, torch.Tensor], classes: list[str]) -> dict[str, Any]:
    """Plain-JSON form of :func:`metric_collection` results."""
    headline = ("top1", "top5", "precision_macro", "recall_macro", "f1_macro")
    report: dict[str, Any] = {k: round(float(values[k]), 6) for k in headline}
    per_class = values["per_class_accuracy"].tolist()
    report["per_class_accuracy"] = {c: round(float(a), 6) for c, a in zip(classes, per_class, strict=True)}
    report["confusion_matrix"] = values["confusion"].long().tolist()
    return report
