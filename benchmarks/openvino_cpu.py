"""OpenVINO on the CPU against what a user would otherwise pick, in one run: speed, size and accuracy.

Speed and size: vit_small_patch16_224 at 224 px (random weights, 10 classes; INT8 calibrated with
``vitcompress qat --epochs 0`` on `shapes`, as benchmarks/export_ort.py does), every variant timed in the same
run by vitcompress's timing method (vitcompress/timing.py), each with ``--threads`` threads, against three FP32
baselines, (a) fp32-ort, (b) fp32-ov, (c) fp32-ov-f32; every variant is bracketed by (b), the headline baseline:
  - fp32-ort       FP32, ONNX Runtime's fused graph, on ONNX Runtime (baseline a)
  - fp32-std       FP32, the standard-ops graph (what a plain torch.onnx.export gives), on ONNX Runtime
  - int8-ort       vitcompress's INT8 fused graph (QAttention, MatMulIntegerToFloat) on ONNX Runtime
  - ort-dynamic    ONNX Runtime's own ``quantize_dynamic`` of the FP32 standard graph, on ONNX Runtime
  - fp32-ov        vitcompress's FP32 IR on OpenVINO, in the arithmetic OpenVINO picks (bf16 on CPUs with AMX or
                   AVX-512 BF16: the fastest FP32 a user gets there; baseline b)
  - fp32-ov-f32    the same IR held to FP32 arithmetic (``INFERENCE_PRECISION_HINT f32``; baseline c)
  - nncf-ov        NNCF's own post-training INT8 of that IR (300 calibration images), on OpenVINO
  - int8-ov        vitcompress's INT8 IR (``export --format openvino``: QAT's scales) on OpenVINO
Accuracy (``--qat ARTIFACT``, optional): a QAT artifact's INT8 IR on OpenVINO, scored on its whole test split
against the QAT model in PyTorch.

The table gives each variant's ratio against each baseline and against the fastest of them at each batch (the
ratio of medians; the interquartile range of the per-round ratios is in the record).

Usage:  python benchmarks/openvino_cpu.py [--threads 2] [--rounds 8] [--qat runs/x-int8] [--accuracy-only] [--tag T]
Needs:  pip install -e '.[compare]' (NNCF)
Writes: benchmarks/results/openvino_cpu[_T].json, with every round, the hardware (CPU flags included), the command
and the commit.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from merge_sweep import unmerged_variants, write_unverified
from records import write_record
from tabulate import tabulate
from timing import BATCHES, time_variants

from vitcompress.artifact import load_model
from vitcompress.augment import BatchTransform
from vitcompress.bench import cpu_flags, cpu_name
from vitcompress.config import ExportConfig
from vitcompress.errors import UserError
from vitcompress.export.exporter import export
from vitcompress.export.onnx_runtime import run_in_batches
from vitcompress.export.verify import torch_logits, verification_set
from vitcompress.runtimes.openvino_backend import OpenVINOModel
from vitcompress.timing import ratio

# The FP32 baselines every variant is bracketed by and compared with: (a) ONNX Runtime's FP32, (b) OpenVINO's
# default arithmetic for an FP32 model (bf16 on CPUs with AMX or AVX-512 BF16: the fastest FP32 a user gets there),
# (c) OpenVINO held to FP32 arithmetic.
BASELINES = {"fp32-ort": "(a) FP32 on ONNX Runtime", "fp32-ov": "(b) OpenVINO default",
             "fp32-ov-f32": "(c) OpenVINO f32"}
BRACKET = "fp32-ov"  # timed on either side of every variant: the baseline the docs' headline figures use
CALIBRATION_IMAGES = 300


def exports(artifacts: dict[str, Path], work: Path) -> tuple[dict[str, Path], list[str]]:
    """The model file of each variant that vitcompress exports (and of ONNX Runtime's and NNCF's own INT8), and the
    exports written without verification (random weights give near-tied logits: see merge_sweep.export_all)."""
    made, unverified = {}, []
    for name, (source, fmt, target) in {"fp32-ort": ("fp32", "onnx", "ort"), "int8-ort": ("int8", "onnx", "ort"),
                                        "fp32-std": ("fp32", "onnx", "standard"), "fp32-ov": ("fp32", "openvino", "auto"),
                                        "int8-ov": ("int8", "openvino", "auto")}.items():
        out = work / name
        made[name] = out / ("model.xml" if fmt == "openvino" else "model.onnx")
        try:
            export(ExportConfig(src=str(artifacts[source]), out=str(out), format=fmt, target=target, verify_size=32,
                                force=True, quiet=True))
        except UserError:
            if target == "standard":
                raise
            write_unverified(artifacts[source], made[name])
            unverified.append(name)
    made["ort-dynamic"] = ort_dynamic(made["fp32-std"], work)
    made["nncf-ov"] = nncf_ptq(made["fp32-ov"], work)
    return made, unverified


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
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--qat", default="", help="QAT artifacts (comma list) to score on their whole test split")
    parser.add_argument("--work", default="runs/openvino-bench")
    parser.add_argument("--accuracy-only", action="store_true",
                        help="score the --qat artifacts only; write results/openvino_cpu_accuracy.json")
    parser.add_argument("--tag", default="", help="written to results/openvino_cpu[_TAG].json")
    args = parser.parse_args()
    work = Path(args.work)
    # scored first: one full run (2026-12-06) died with a segfault in OpenVINO when scoring came after the timing
    accuracies = [accuracy(Path(p), work) for p in args.qat.split(",") if p]
    if args.accuracy_only:
        out = write_record("openvino_cpu_accuracy", {"accuracy": accuracies})
        print(json.dumps(accuracies, indent=2))
        print(f"wrote {out}")
        return
    paths, unverified = exports(unmerged_variants(work), work)
    paths["fp32-ov-f32"] = paths["fp32-ov"]
    baselines = [BRACKET, *(b for b in BASELINES if b != BRACKET)]
    timing = time_variants(paths, args.threads, baselines, args.rounds, precisions={"fp32-ov-f32": "f32"})
    table = speed_table(timing)
    out = write_record("openvino_cpu" + (f"_{args.tag}" if args.tag else ""),
                       {"threads": args.threads, "model": "vit_small_patch16_224 at 224 px, random weights, 10 classes",
                        "baselines": BASELINES, "exported_without_verification": unverified, "table": table,
                        "timing": timing, "accuracy": accuracies})
    print(f"{cpu_name()} ({', '.join(cpu_flags())}), {args.threads} threads; written without verification: {unverified}")
    headers = ["variant", "arithmetic", "b1 ms", "b32 ms", "size x"] + [
        f"b{b} vs {k}" for b in BATCHES for k in (*BASELINES, "fastest FP32")]
    print(tabulate([[r["variant"], r["arithmetic"], r["ms"]["1"], r["ms"]["32"], r["size_x"]]
                    + [r["x"][str(b)][k] for b in BATCHES for k in (*BASELINES, "fastest FP32")] for r in table],
                   headers=headers))
    for a in accuracies:
        print(f"{a['artifact']}: PyTorch {a['top1_qat_torch']:.4f}, OpenVINO INT8 ({a['arithmetic']}) "
              f"{a['top1_int8_openvino']:.4f}, agreement {a['top1_agreement']:.4f} on {a['images']} images")
    print(f"wrote {out}")


def speed_table(timing: dict) -> list[dict]:
    """A row per variant: its arithmetic, medians, size against FP32 ONNX, and its ratio against each baseline and
    against the fastest FP32 runtime at each batch (the ratio of medians, IQR of the per-round ratios beside it)."""
    variants = timing["variants"]
    fastest = {b: min(BASELINES, key=lambda name: variants[name]["median_ms"][str(b)]) for b in BATCHES}
    rows = []
    for name, v in variants.items():
        per_batch: dict[str, dict] = {}
        for b in BATCHES:
            cells = {k: ratio(timing, name, k, b) for k in BASELINES}
            cells["fastest FP32"] = cells[fastest[b]]
            cells["fastest FP32 is"] = fastest[b]
            cells["iqr vs fastest"] = (timing["ratios"][name][fastest[b]][str(b)]["iqr"] if name != fastest[b]
                                       else [1.0, 1.0])
            per_batch[str(b)] = cells
        rows.append({"variant": name, "arithmetic": v["arithmetic"], "ms": v["median_ms"],
                     "size_x": round(v["size_bytes"] / variants["fp32-ort"]["size_bytes"], 3), "x": per_batch})
    return rows


if __name__ == "__main__":
    main()
