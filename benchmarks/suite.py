"""The benchmark suite: one model through every stage on CIFAR-10, then every variant side by side.

Stages (each skipped when its output directory already exists, like make; --force redoes them):
  base             vitcompress finetune (default vit_small_patch16_224 at 32 px, patch 4)
  pruned-0.25/0.5  vitcompress prune --heads R with recovery (distilled from base)
  base-ptq/qat, pruned-0.5-ptq/qat   vitcompress qat (--epochs 0 / --epochs N)
  onnx-*           vitcompress export: FP32 ONNX of base and the pruned models, INT8 ONNX of the rest
  bench            vitcompress bench of every export on ort-cpu and triton (served by a real Triton
                   server), accuracy on the CIFAR-10 test split
The targets of the issue are checked at the end: INT8 at least 1.8x the FP32 throughput in ONNX
Runtime at batch 1, pruned 0.5 + INT8 at least 2.5x; accuracy within 0.3 (INT8) and 1.0 (pruned +
INT8) points of FP32.

A trained model can stand in for the finetune step: put it (or a link to it) at WORK/base.

Usage:  python benchmarks/suite.py [--work runs/suite] [--epochs 30] [--recovery-epochs 5] [--qat-epochs 2]
                                   [--model-args '...'] [--amp bf16] [--recovery-args '--train-subset 5000']
                                   [--prune-args '--lr 1e-3'] [--tag cpu] [--results-dir benchmarks/results]
Writes: RESULTS_DIR/suite_<tag>.json and the bench report (report.md, plots) in RESULTS_DIR/suite_<tag>/;
WORK/steps.json, the record of the steps done so far, after each step.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

from vitcompress.artifact import META_FILE, read_meta
from vitcompress.cli import main as vitcompress

HERE = Path(__file__).resolve().parent
CIFAR = HERE.parent.parent / "shared" / "data" / "cifar10-jpeg.tar.xz"
INT8_VARIANTS = ("base-ptq", "base-qat", "pruned-0.5-ptq", "pruned-0.5-qat")
FP32_VARIANTS = ("base", "pruned-0.25", "pruned-0.5")
STEPS_FILE = "steps.json"


def step(out: Path, args: list[str], force: bool, log: list[dict]) -> None:
    """Run one vitcompress command unless ``out`` exists; record it, in ``log`` and in WORK/steps.json (a suite
    stopped from outside, at a lease's deadline say, keeps the record of the steps it finished)."""
    if out.exists() and not force:
        log.append({"command": "vitcompress " + shlex.join(args), "skipped": "output exists", "existing": _describe(out)})
    else:
        print("$ vitcompress " + shlex.join(args), flush=True)
        started = time.time()
        if vitcompress(args + (["--force"] if force else [])) != 0:
            raise SystemExit(f"vitcompress {args[0]} failed")
        log.append({"command": "vitcompress " + shlex.join(args), "seconds": round(time.time() - started, 1)})
    (out.parent / STEPS_FILE).write_text(json.dumps(log, indent=2) + "\n")


def _describe(out: Path) -> dict:
    """What an existing artifact is (a base put at WORK/base need not be what the skipped command would make)."""
    if not (out / META_FILE).is_file():
        return {}
    meta = read_meta(out)
    return {"stage": meta.stage, "model": meta.model_name, "model_kwargs": meta.model_kwargs,
            "top1": meta.metrics.get("top1"), "path": str(out.resolve())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="runs/suite")
    parser.add_argument("--data", default=f"folder:{CIFAR}")
    parser.add_argument("--model", default="vit_small_patch16_224")
    parser.add_argument("--model-args", default="--img-size 32 --patch-size 4 --lr 1e-3 --batch-size 128")
    parser.add_argument("--amp", default="bf16", help="precision of finetune and of prune's recovery (qat keeps its own)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--recovery-epochs", type=int, default=5)
    parser.add_argument("--qat-epochs", type=int, default=2)
    parser.add_argument("--recovery-args", default="", help="extra options for prune and qat, e.g. '--train-subset 5000'")
    parser.add_argument("--prune-args", default="", help="extra options for prune alone, e.g. '--lr 1e-3' for a model "
                                                         "trained from scratch (docs/pruning.md)")
    parser.add_argument("--backends", default="ort-cpu,triton")
    parser.add_argument("--batch", default="1,8,32")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--bench-args", default="", help="extra options for bench, e.g. '--max-seconds 1 --eval-size 2000'")
    parser.add_argument("--tag", default="cpu")
    parser.add_argument("--results-dir", default=str(HERE / "results"), help="where the record and the report land")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    work, log = Path(args.work), []
    quiet = ["--quiet"]
    recovery = shlex.split(args.recovery_args)
    step(work / "base", ["finetune", "--model", args.model, *shlex.split(args.model_args), "--amp", args.amp,
                         "--data", args.data, "--epochs", str(args.epochs), "--out", str(work / "base"), *quiet], args.force, log)
    for ratio in ("0.25", "0.5"):
        step(work / f"pruned-{ratio}", ["prune", str(work / "base"), "--heads", ratio, "--criterion", "taylor",
                                        "--finetune-epochs", str(args.recovery_epochs), "--amp", args.amp, *recovery,
                                        *shlex.split(args.prune_args), "--out",
                                        str(work / f"pruned-{ratio}"), *quiet], args.force, log)
    for src in ("base", "pruned-0.5"):
        step(work / f"{src}-ptq", ["qat", str(work / src), "--epochs", "0", *recovery, "--out", str(work / f"{src}-ptq"), *quiet],
             args.force, log)
        step(work / f"{src}-qat", ["qat", str(work / src), "--epochs", str(args.qat_epochs), *recovery, "--out",
                                   str(work / f"{src}-qat"), *quiet], args.force, log)
    exports = []
    for name in FP32_VARIANTS + INT8_VARIANTS:
        out = work / f"onnx-{name}"
        step(out, ["export", str(work / name), "--out", str(out), "--quiet"], args.force, log)
        exports.append(str(out))
    bench_out = work / "bench"
    step(bench_out, ["bench", *exports, "--baseline", exports[0], "--data", args.data, "--backends", args.backends,
                     "--batch", args.batch, "--threads", str(args.threads), *shlex.split(args.bench_args),
                     "--out", str(bench_out), *quiet],
         True, log)
    results = json.loads((bench_out / "results.json").read_text())
    record = {"benchmark": "suite", "date": time.strftime("%Y-%m-%d"),
              "command": "python " + " ".join(shlex.quote(a) for a in sys.argv), "steps": log,
              "hardware": results["hardware"], "targets": check_targets(results), "bench": results}
    results_dir = Path(args.results_dir)
    target = results_dir / f"suite_{args.tag}"
    target.mkdir(parents=True, exist_ok=True)
    for name in ("report.md", "latency_vs_batch.png", "accuracy_vs_latency.png"):
        if (bench_out / name).exists():
            shutil.copy(bench_out / name, target / name)
    (results_dir / f"suite_{args.tag}.json").write_text(json.dumps(record, indent=2) + "\n")
    for name, outcome in record["targets"].items():
        print(f"{name}: {outcome}")


def check_targets(results: dict) -> dict[str, str]:
    """The issue's targets on ONNX Runtime (CPU), from the bench records."""
    rows = {(r["variant"].split("/")[-1], r["batch"]): r for r in results["records"]
            if r["backend"] == "ort-cpu" and r["mode"] == "batch"}

    def ratio(variant: str) -> float:
        return rows[(f"onnx-{variant}", 1)]["throughput_ips"] / rows[("onnx-base", 1)]["throughput_ips"]

    def drop(variant: str) -> float:
        return 100 * (rows[("onnx-base", 1)]["top1"] - rows[(f"onnx-{variant}", 1)]["top1"])

    out = {}
    for variant in ("base-qat", "base-ptq"):
        out[f"{variant} throughput b1 >= 1.8x"] = _verdict(ratio(variant) >= 1.8, f"{ratio(variant):.2f}x")
        out[f"{variant} accuracy within 0.3 points"] = _verdict(drop(variant) <= 0.3, f"{-drop(variant):+.2f} points")
    for variant in ("pruned-0.5-qat", "pruned-0.5-ptq"):
        out[f"{variant} throughput b1 >= 2.5x"] = _verdict(ratio(variant) >= 2.5, f"{ratio(variant):.2f}x")
        out[f"{variant} accuracy within 1.0 point"] = _verdict(drop(variant) <= 1.0, f"{-drop(variant):+.2f} points")
    return out


def _verdict(met: bool, measured: str) -> str:
    return f"{'met' if met else 'NOT met'} ({measured})"


if __name__ == "__main__":
    main()
