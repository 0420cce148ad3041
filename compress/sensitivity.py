"""Which layers INT8 hurts: accuracy with each group of layers quantized alone, and a ``--skip`` suggestion.

A group is the patch embedding, one block's attention, one block's MLP, or the classifier. The
model is calibrated once with every group quantized; then each group is switched on alone and scored
on the validation split (the test split only when there is none, and the report says so).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from vitcompress.augment import BatchTransform
from vitcompress.compress.qat import quantize_and_calibrate
from vitcompress.compress.quantize import active_quantizers, quant_config
from vitcompress.config import QatConfig
from vitcompress.datasets.imageset import DataSplits
from vitcompress.distributed import DistContext
from vitcompress.evaluate import evaluate


def group_of(quantizer_name: str) -> str:
    """``blocks.3.attn.qkv.input_quantizer`` -> ``blocks.3.attn``; Swin's ``layers.1.blocks.0.mlp.fc1...`` ->
    ``layers.1.blocks.0.mlp`` and ``layers.1.downsample.reduction...`` -> ``layers.1.downsample``;
    ``head.weight_quantizer`` -> ``head``."""
    parts = quantizer_name.split(".")
    if parts[0] == "blocks":
        return ".".join(parts[:3])
    if parts[0] == "layers" and len(parts) > 2:
        return ".".join(parts[:5] if parts[2] == "blocks" else parts[:3])
    return parts[0]


def sensitivity(model: nn.Module, cfg: QatConfig, data: DataSplits, transform: BatchTransform,
                ctx: DistContext) -> dict[str, Any]:
    """Score each group quantized alone; suggest skipping those that cost more than the threshold."""
    split, images = ("val", data.val) if data.val is not None else ("test", data.test)
    fp32 = evaluate(model, images, transform, ctx)["top1"]
    quantize_and_calibrate(model, quant_config(cfg.calib_method, [], cfg.quantize_attention), cfg, data, transform, ctx)
    quantizers = list(active_quantizers(model))
    all_int8 = evaluate(model, images, transform, ctx)["top1"]
    groups: dict[str, list[nn.Module]] = {}
    for name, q in quantizers:
        groups.setdefault(group_of(name), []).append(q)
    rows = []
    for group, members in groups.items():
        for _, q in quantizers:
            q.disable()
        for q in members:
            q.enable()
        top1 = evaluate(model, images, transform, ctx)["top1"]
        rows.append({"group": group, "top1": top1, "drop": round(fp32 - top1, 6)})
    rows.sort(key=lambda r: r["drop"], reverse=True)
    suggested = [f"{r['group']}*" for r in rows if r["drop"] > cfg.sensitivity_threshold]
    return {"split": split, "samples": len(images), "calib_method": cfg.calib_method, "top1_fp32": fp32,
            "top1_all_int8": all_int8, "threshold": cfg.sensitivity_threshold, "groups": rows,
            "suggested_skip": ",".join(suggested)}
