"""INT8 ONNX on ONNX Runtime's CPU provider: speed and size against the best FP32 export, and accuracy.

Speed and size: vit_small_patch16_224 at 224 px (random weights, 10 classes; calibrated with
``vitcompress qat --epochs 0`` on `shapes`), exported three ways and timed in the same run, in
vitcompress's timing method (vitcompress/timing.py), each session with ``--threads`` intra-op threads:
  - fp32-ort:  FP32 with ONNX Runtime's fused attention kernel (the best FP32 graph; the baseline),
  - fp32-std:  FP32 in standard ONNX ops (what a plain torch.onnx.export gives),
  - int8-ort:  the INT8 export (QAttention + MatMulIntegerToFloat, int8 weights).
Accuracy: the QAT artifacts of benchmarks/qat_cifar.py (CIFAR-10), exported to INT8 and scored by
ONNX Runtime on the whole test split, against the QAT model's own top-1 in PyTorch.

``--model`` times another timm transformer the same way (Swin: its window attention has no fused kernel, so fp32-ort
and fp32-std are the same graph but for the Linear layers ORT fuses).

Usage:  python benchmarks/export_ort.py [--threads 2] [--rounds 12] [--qat runs/qat-bench/base-qat-max,...] [--model M]
Writes: benchmarks/results/export_ort_cpu[_MODEL].json, with every round, the hardware, the command and the commit.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from records import write_record
from tabulate import tabulate
from timing import time_variants

from vitcompress.artifact import ArtifactMeta, load_model, write_artifact
from vitcompress.augment import BatchTransform
from vitcompress.compress.qat import qat
from vitcompress.config import ExportConfig, QatConfig, TrainConfig
from vitcompress.datasets.shapes import CLASSES
from vitcompress.export.exporter import export
from vitcompress.export.onnx_runtime import ort_runner, ort_session, run_in_batches
from vitcompress.export.verify import torch_logits, verification_set
from vitcompress.models import build_kwargs, create_model, heads_per_block
from vitcompress.timing import ratio

MODEL = "vit_small_patch16_224"
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
VARIANTS = {"fp32-ort": ("fp32", "fp32", "ort"), "fp32-std": ("fp32", "fp32", "standard"),
            "int8-ort": ("int8", "int8", "ort")}


def speed_artifacts(work: Path, model_name: str = MODEL) -> dict[str, Path]:
    """An FP32 artifact of ``model_name`` at 224 px (random weights) and its INT8 PTQ child, made by the qat stage."""
    torch.manual_seed(0)
    kwargs = build_kwargs(len(CLASSES), 224, None, {}, model_name)
    model = create_model(model_name, kwargs)
    meta = ArtifactMeta(stage="finetune", model_name=model_name, model_kwargs=kwargs, classes=list(CLASSES), img_size=224,
                        mean=IMAGENET_MEAN, std=IMAGENET_STD, heads_per_block=heads_per_block(model),
                        data={"spec": "shapes"})
    write_artifact(work / "fp32", model, meta)
    qat(QatConfig(src=str(work / "fp32"), out=str(work / "int8"), calib_size=64, force=True,
                  train=TrainConfig(epochs=0, quiet=True, batch_size=32)))
    return {"fp32": work / "fp32", "int8": work / "int8"}


def export_variants(sources: dict[str, Path], work: Path) -> dict[str, Path]:
    paths = {}
    for name, (source, precision, target) in VARIANTS.items():
        out = work / f"onnx-{name}"
        export(ExportConfig(src=str(sources[source]), out=str(out), precision=precision, target=target, verify_size=32,
                            force=True, quiet=True))
        paths[name] = out / "model.onnx"
    return paths


def accuracy(qat_artifact: Path, work: Path) -> dict:
    """INT8 ONNX top-1 on the whole test split of the artifact's data, against the QAT model in PyTorch."""
    out = work / f"onnx-{qat_artifact.name}"
    result = export(ExportConfig(src=str(qat_artifact), out=str(out), force=True, quiet=True))
    model, meta = load_model(qat_artifact)
    data = verification_set(meta, None, 10**9)
    labels = data.labels.numpy()
    inputs = BatchTransform(meta.img_size, meta.mean, meta.std).model_input(data.pixels, False)
    got = run_in_batches(ort_runner(ort_session(out / "model.onnx")), inputs, 256)
    expected = torch_logits(model, meta, data.pixels)
    return {"artifact": str(qat_artifact), "images": len(labels), "data": data.source,
            "top1_qat_torch_stage": meta.metrics["top1"], "top1_qat_torch": float((expected.argmax(1) == labels).mean()),
            "top1_int8_onnx": float((got.argmax(1) == labels).mean()),
            "top1_agreement": float((expected.argmax(1) == got.argmax(1)).mean()),
            "onnx_bytes": (out / "model.onnx").stat().st_size, "graph_ops": result.manifest["graph"]["ops"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--qat", default="runs/qat-bench/base-qat-max,runs/qat-bench/l1-h0.5-m0.0-qat-max",
                        help="QAT artifacts to score (from benchmarks/qat_cifar.py); empty to skip")
    parser.add_argument("--work", default="runs/export-bench")
    parser.add_argument("--model", default=MODEL, help="any timm transformer at 224 px (e.g. swin_tiny_patch4_window7_224)")
    args = parser.parse_args()
    work = Path(args.work)
    missing = [p for p in args.qat.split(",") if p and not Path(p).is_dir()]
    if missing:
        raise SystemExit(f"missing QAT artifacts {missing}: run `make bench-prune bench-qat` first, or pass --qat ''")
    timing = time_variants(export_variants(speed_artifacts(work, args.model), work), args.threads, ["fp32-ort"],
                           args.rounds)
    variants = timing["variants"]
    size_ratio = variants["int8-ort"]["size_bytes"] / variants["fp32-ort"]["size_bytes"]
    accuracies = [accuracy(Path(p), work) for p in args.qat.split(",") if p]
    out = write_record("export_ort_cpu" if args.model == MODEL else f"export_ort_cpu_{args.model}",
                       {"threads": args.threads, "model": f"{args.model} at 224 px, random weights, 10 classes",
                        "timing": timing, "int8_size_ratio": round(size_ratio, 4), "accuracy": accuracies})
    rows = [(name, t["median_ms"]["1"], t["median_ms"]["32"], f"{t['size_bytes'] / 1e6:.1f}",
             ratio(timing, name, "fp32-ort", 1), ratio(timing, name, "fp32-ort", 32)) for name, t in variants.items()]
    print(tabulate(rows, headers=("variant", "b1 ms", "b32 ms", "MB", "b1 x fp32-ort", "b32 x fp32-ort")))
    print(f"INT8 size / FP32 size: {size_ratio:.3f}")
    print(tabulate([(a["artifact"], a["top1_qat_torch"], a["top1_int8_onnx"], a["top1_agreement"]) for a in accuracies],
                   headers=("QAT artifact", "PyTorch top-1", "INT8 ONNX top-1", "agreement")))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
