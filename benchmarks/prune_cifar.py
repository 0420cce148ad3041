"""Pruning benchmark on CIFAR-10: accuracy and torch latency of pruned children against their parent.

Trains a base model with ``vitcompress finetune`` (unless ``--base`` names one), then prunes it at
heads 0.25 and 0.5 (and 0.5 with ``--mlp 0.25``) with the ``l1``, ``taylor`` and ``random`` criteria,
each with distillation recovery. Every run records accuracy before pruning, right after the surgery
(no recovery) and after recovery, params, MACs and torch latency before/after, measured on this
machine in this run.

Usage:  python benchmarks/prune_cifar.py [--data PATH] [--base ARTIFACT] [--recovery-epochs 2]
Writes: benchmarks/results/prune_cifar_<device>.json, with the hardware and every command.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from records import write_record
from tabulate import tabulate

from vitcompress.cli import main as vitcompress

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "cifar10-jpeg.tar.xz"
BASE_MODEL = ["--model", "vit_tiny_patch16_224", "--img-size", "32", "--patch-size", "8",
              "--model-kwargs", "depth=6,num_heads=6", "--drop-path", "0", "--batch-size", "128", "--lr", "1e-3",
              "--warmup-epochs", "1", "--amp", "bf16"]
GRID = [("l1", 0.25, 0.0), ("l1", 0.5, 0.0), ("l1", 0.5, 0.25),
        ("taylor", 0.25, 0.0), ("taylor", 0.5, 0.0), ("taylor", 0.5, 0.25),
        ("random", 0.25, 0.0), ("random", 0.5, 0.0), ("random", 0.5, 0.25)]


def run(args: list[str]) -> None:
    print("$ vitcompress " + " ".join(args), flush=True)
    code = vitcompress(args)
    if code != 0:
        raise SystemExit(f"vitcompress {args[0]} failed with exit status {code}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--base", help="an existing artifact to prune (default: train one)")
    parser.add_argument("--base-epochs", type=int, default=10)
    parser.add_argument("--recovery-epochs", type=int, default=2)
    parser.add_argument("--work", default="runs/prune-bench")
    parser.add_argument("--criteria", default="l1,taylor,random")
    parser.add_argument("--runs", help="instead of the grid: criterion:heads:mlp,... e.g. l1:0.5:0,taylor:0.5:0")
    parser.add_argument("--tag", default="", help="suffix of the results file")
    args = parser.parse_args()
    work = Path(args.work)
    commands = []
    base = Path(args.base) if args.base else work / "base"
    if not (base / "vitcompress.json").is_file():
        cmd = ["finetune", *BASE_MODEL, "--data", f"folder:{args.data}", "--epochs", str(args.base_epochs),
               "--out", str(base), "--quiet"]
        run(cmd)
        commands.append(cmd)
    records = []
    grid = [(c, float(h), float(m)) for c, h, m in (r.split(":") for r in args.runs.split(","))] if args.runs else GRID
    for criterion, heads, mlp in grid:
        if criterion not in args.criteria.split(","):
            continue
        out = work / (f"{criterion}-h{heads}-m{mlp}" + (f"-r{args.recovery_epochs}" if args.runs else ""))
        cmd = ["prune", str(base), "--heads", str(heads), "--mlp", str(mlp), "--criterion", criterion,
               "--finetune-epochs", str(args.recovery_epochs), "--batch-size", "128", "--lr", "2e-4",
               "--amp", "bf16", "--out", str(out), "--force", "--quiet"]
        started = time.time()
        run(cmd)
        pruning = json.loads((out / "vitcompress.json").read_text())["metrics"]["pruning"]
        records.append({"criterion": criterion, "heads": heads, "mlp": mlp, "seconds": round(time.time() - started, 1),
                        "command": "vitcompress " + " ".join(cmd),
                        **{k: pruning[k] for k in ("top1_before", "top1_after_surgery", "top1_after_recovery",
                                                     "heads_after", "mlp_after", "before", "after")}})
    base_meta = json.loads((base / "vitcompress.json").read_text())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    path = write_record(f"prune_cifar_{device}{args.tag}", {
        "base": {"artifact": str(base), "recipe": base_meta["recipe"], "top1": base_meta["metrics"]["top1"]},
        "base_commands": ["vitcompress " + " ".join(c) for c in commands], "runs": records})
    rows = [(r["criterion"], r["heads"], r["mlp"], f"{100 * r['top1_before']:.2f}", f"{100 * r['top1_after_surgery']:.2f}",
             f"{100 * r['top1_after_recovery']:.2f}", f"{r['after']['params'] / r['before']['params']:.3f}",
             f"{r['before']['latency_ms']['1'] / r['after']['latency_ms']['1']:.2f}x",
             f"{r['before']['latency_ms']['64'] / r['after']['latency_ms']['64']:.2f}x") for r in records]
    print(tabulate(rows, headers=("criterion", "heads", "mlp", "top1 base", "no recovery", "recovered", "params",
                                  "speed b1", "speed b64")))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
