"""OpenVINO on the CPU against what a user would otherwise pick, in one run: speed, size and accuracy.

Speed and size: vit_small_patch16_224 at 224 px (random weights, 10 classes; INT8 calibrated with
``vitcompress qat --epochs 0`` on `shapes`, as benchmarks/export_ort.py does), every variant timed in the same
run, in interleaved rounds, each with ``--threads`` threads, against vitcompress's best FP32 ONNX on ONNX Runtime:
  - fp32-ort       FP32, ONNX Runtime's fused graph, on ONNX Runtime (the baseline)
  - int8-ort       vitcompress's INT8 fused graph (QAttention, MatMulIntegerToFloat) on ONNX Runtime
  - ort-dynamic    ONNX Runtime's own ``quantize_dynamic`` of the FP32 standard graph, on ONNX Runtime
  - fp32-ov        vitcompress's FP32 IR on OpenVINO, in the arithmetic OpenVINO picks (bf16 on AMX CPUs)
  - nncf-ov        NNCF's own post-training INT8 of that IR (300 calibration images), on OpenVINO
  - int8-ov        vitcompress's INT8 IR (``export --format openvino``: QAT's scales) on OpenVINO
Accuracy (``--qat ARTIFACT``, optional): a QAT artifact's INT8 IR on OpenVINO, scored on its whole test split
against the QAT model in PyTorch.

Usage:  python benchmarks/openvino_cpu.py [--threads 2] [--rounds 12] [--qat runs/x-int8] [--accuracy-only]
Needs:  pip install -e '.[compare]' (NNCF)
Writes: benchmarks/results/openvino_cpu.json, with the hardware (CPU flags included) and the command.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import onnxruntime
from export_ort import speed_artifacts
from tabulate import tabulate
from timing import BATCHES, ratio_per_round, time_variants

from vitcompress.artifact import load_model
from vitcompress.augment import BatchTransform
from vitcompress.bench import cpu_flags, cpu_name
from vitcompress.config import ExportConfig
from vitcompress.export.exporter import export
from vitcompress.export.onnx_runtime import run_in_batches
from vitcompress.export.verify import torch_logits, verification_set
from vitcompress.runtimes.openvino_backend import OpenVINOModel

HERE = Path(__file__).resolve().parent
BASELINE = "fp32-ort"
CALIBRATION_IMAGES = 300


def exports(artifacts: dict[str, Path], work: Path) -> dict[str, Path]:
    """The model file of each variant that vitcompress exports (and of ONNX Runtime's and NNCF's own INT8)."""
    made = {}
    for name, (source, fmt, target) in {"fp32-ort": ("fp32", "onnx", "ort"), "int8-ort": ("int8", "onnx", "ort"),
                                        "fp32-std": ("fp32", "onnx", "standard"), "fp32-ov": ("fp32", "openvino", "auto"),
                                        "int8-ov": ("int8", "openvino", "auto")}.items():
        out = work / name
        export(ExportConfig(src=str(artifacts[source]), out=str(out), format=fmt, target=target, verify_size=32, force=True,
                            quiet=True))
        made[name] = out / ("model.xml" if fmt == "openvino" else "model.onnx")
    made["ort-dynamic"] = ort_dynamic(made.pop("fp32-std"), work)
    made["nncf-ov"] = nncf_ptq(made["fp32-ov"], work)
    return made


def ort_dynamic(fp32_standard: Path, work: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = work / "ort-dynamic.onnx"
    quantize_dynamic(str(fp32_standard), str(out), weight_type=QuantType.QInt8)
    return out


def nncf_ptq(fp32_ir: Path, work: Path) -> Path:
    """NNCF's default INT8 PTQ (transformer preset) of the FP32 IR, calibrated on `shapes` images at 224 px."""
    import nncf
    import openvino as ov

    from vitcompress.data import DataOptions, test_sample

    pixels = test_sample(DataOptions(spec="shapes", img_size=224, val_split=0.0, quiet=True), CALIBRATION_IMAGES).images
    normalised = BatchTransform(224, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]).model_input(pixels, False)
    dataset = nncf.Dataset([normalised[i : i + 1] for i in range(len(normalised))])
    quantized = nncf.quantize(ov.Core().read_model(str(fp32_ir)), dataset, model_type=nncf.ModelType.TRANSFORMER,
                              subset_size=CALIBRATION_IMAGES)
    out = work / "nncf-ov" / "model.xml"
    out.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(out))
    return out


def accuracy(qat_artifact: Path, work: Path) -> dict:
    """The QAT artifact's INT8 IR on OpenVINO (its default arithmetic) on the whole test split, against PyTorch."""
    out = work / f"ir-{qat_artifact.name}"
    export(ExportConfig(src=str(qat_artifact), out=str(out), format="openvino", force=True, quiet=True))
    model, meta = load_model(qat_artifact)
    data = verification_set(meta, None, 10**9)
    labels = data.labels.numpy()
    inputs = BatchTransform(meta.img_size, meta.mean, meta.std).model_input(data.pixels, False)
    ir = OpenVINOModel(str(out / "model.xml"))
    got = run_in_batches(ir.run, inputs, 64)
    expected = torch_logits(model, meta, data.pixels)
    return {"artifact": str(qat_artifact), "images": len(labels), "data": data.source, "arithmetic": ir.arithmetic,
            "top1_qat_torch": float((expected.argmax(1) == labels).mean()),
            "top1_int8_openvino": float((got.argmax(1) == labels).mean()),
            "top1_agreement": float((expected.argmax(1) == got.argmax(1)).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--qat", default="", help="QAT artifacts (comma list) to score on their whole test split")
    parser.add_argument("--work", default="runs/openvino-bench")
    parser.add_argument("--accuracy-only", action="store_true",
                        help="score the --qat artifacts only; write results/openvino_cpu_accuracy.json")
    args = parser.parse_args()
    work = Path(args.work)
    import openvino

    # scored first: one full run (2026-12-06) died with a segfault in OpenVINO when scoring came after the timing
    accuracies = [accuracy(Path(p), work) for p in args.qat.split(",") if p]
    if args.accuracy_only:
        record = {"benchmark": "openvino_cpu accuracy", "date": time.strftime("%Y-%m-%d"),
                  "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
                  "hardware": {"processor": cpu_name(), "cpu_flags": cpu_flags(), "openvino": openvino.__version__},
                  "accuracy": accuracies}
        (HERE / "results" / "openvino_cpu_accuracy.json").write_text(json.dumps(record, indent=2) + "\n")
        print(json.dumps(accuracies, indent=2))
        return
    paths = exports(speed_artifacts(work), work)
    timing = time_variants(paths, args.threads, args.rounds)
    ratios = {f"{v} vs {BASELINE} b{b}": ratio_per_round(timing, BASELINE, v, str(b)) for v in timing if v != BASELINE
              for b in BATCHES}
    ours_vs = {f"int8-ov vs {v} b{b}": ratio_per_round(timing, v, "int8-ov", str(b)) for v in ("nncf-ov", "fp32-ov")
               for b in BATCHES}
    record = {"benchmark": "openvino_cpu", "date": time.strftime("%Y-%m-%d"),
              "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
              "hardware": {"platform": platform.platform(), "processor": cpu_name(), "cpu_flags": cpu_flags(),
                           "cpu_count": os.cpu_count(), "threads": args.threads, "onnxruntime": onnxruntime.__version__,
                           "openvino": openvino.__version__},
              "model": "vit_small_patch16_224 at 224 px, random weights, 10 classes", "timing": timing,
              "speedup_per_round": {**ratios, **ours_vs},
              "size_vs_fp32_onnx": {n: round(t["size_bytes"] / timing[BASELINE]["size_bytes"], 3) for n, t in timing.items()},
              "accuracy": accuracies}
    out = HERE / "results" / "openvino_cpu.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    rows = [(n, t["arithmetic"], t["latency_ms"]["1"], t["latency_ms"]["32"],
             statistics.median(ratios[f"{n} vs {BASELINE} b1"]) if n != BASELINE else 1.0,
             statistics.median(ratios[f"{n} vs {BASELINE} b32"]) if n != BASELINE else 1.0,
             record["size_vs_fp32_onnx"][n]) for n, t in timing.items()]
    print(f"{cpu_name()} ({', '.join(cpu_flags())}), {args.threads} threads")
    print(tabulate(rows, headers=("variant", "arithmetic", "b1 ms", "b32 ms", "b1 x", "b32 x", "size x")))
    print(tabulate([(k, v, statistics.median(v)) for k, v in ours_vs.items()], headers=("ours", "per round", "median")))
    for a in accuracies:
        print(f"{a['artifact']}: PyTorch {a['top1_qat_torch']:.4f}, OpenVINO INT8 ({a['arithmetic']}) "
              f"{a['top1_int8_openvino']:.4f}, agreement {a['top1_agreement']:.4f} on {a['images']} images")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
