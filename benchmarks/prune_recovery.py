"""Pruning recovery on a converged CIFAR-10 model: accuracy against recovery epochs, per criterion and method.

Trains the converged reference once (timm's ViT, depth 3, width 96, 4 heads, 32 px with 4 px patches, 30 epochs
from scratch: the 73 % model of docs/results.md) unless ``--base`` names one, then prunes it with ``--heads 0.5``
(and ``--heads 0.5 --mlp 0.25``) for each criterion and recovery method:

  - ``derived``:     no option but ``--recover-until``: the recovery LR, batch and epoch cap read from the base, and
                     prune's defaults (``--criterion taylor``, the least-squares refit, ``--kd-layers 1``),
  - ``logits-only``: the same with logits-only distillation (``--kd-layers 0``),
  - ``plain``:       neither the refit nor hidden-state distillation (``--no-reconstruct --kd-layers 0``),
  - ``iterative``:   the defaults, pruned in two steps (``--iterative 2``),
  - ``layers-3``:    the defaults with hidden-state distillation weighted 3 (``--kd-layers 3``),
  - ``lr-2x``:       logits only at the base's peak LR (``--lr 2e-3``) instead of half of it,
  - ``batch-64``, ``batch-32``: the defaults with twice / four times the steps (``--batch-size 64 --lr 1e-3`` and
                     ``--batch-size 32 --lr 1e-3``),
  - ``kd-only``:     distillation without the labels (``--kd-alpha 1``),
  - ``ema``:         an exponential moving average of the weights (``--ema --ema-decay 0.998``),
  - ``crop-pad``:    the defaults with the parent's random crop (``--crop pad``) instead of none,
  - ``seed-1``:      the defaults with another seed (other scoring batches and batch order),

and records, for each run, test top-1 before, after the surgery and after recovery, the epochs the recovery took
against its cap, and validation top-1 after every recovery epoch. Runs already in the record (same shape, criterion
and method) are kept, so the grid can be run in parts.

Usage:  python benchmarks/prune_recovery.py [--data PATH] [--base ARTIFACT] [--recover-until 1.0]
        [--criteria taylor,l1] [--methods derived,logits-only,plain] [--shapes h0.5,h0.5-m0.25] [--reuse] [--tag T]
Writes: benchmarks/results/prune_recovery_cpu.json, or prune_recovery_cpu_T.json with ``--tag T`` (hardware and
every command inside).
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

from records import write_record
from tabulate import tabulate

from vitcompress.cli import main as vitcompress

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "cifar10-jpeg.tar.xz"
BASE_MODEL = ["--model", "vit_tiny_patch16_224", "--img-size", "32", "--patch-size", "4", "--model-kwargs",
              "depth=3,embed_dim=96,num_heads=4", "--drop-path", "0", "--lr", "2e-3", "--batch-size", "128",
              "--warmup-epochs", "2", "--amp", "none"]
METHODS = {"derived": [], "logits-only": ["--kd-layers", "0"], "plain": ["--no-reconstruct", "--kd-layers", "0"],
           "iterative": ["--iterative", "2"], "lr-2x": ["--kd-layers", "0", "--lr", "2e-3"],
           "layers-3": ["--kd-layers", "3"], "batch-64": ["--batch-size", "64", "--lr", "1e-3"],
           "batch-32": ["--batch-size", "32", "--lr", "1e-3"], "kd-only": ["--kd-alpha", "1.0"],
           "ema": ["--ema", "--ema-decay", "0.998"], "crop-pad": ["--crop", "pad"], "seed-1": ["--seed", "1"]}
SHAPES = {"h0.5": ["--heads", "0.5"], "h0.5-m0.25": ["--heads", "0.5", "--mlp", "0.25"]}


def run(args: list[str]) -> float:
    """``vitcompress ARGS``; its wall seconds."""
    print("$ vitcompress " + " ".join(args), flush=True)
    started = time.time()
    if vitcompress(args) != 0:
        raise SystemExit(f"vitcompress {args[0]} failed")
    return round(time.time() - started, 1)


def val_curve(artifact: Path) -> list[float]:
    """Validation top-1 after each recovery epoch (every step's log, in order)."""
    curve = []
    for log in sorted(artifact.glob("train_log*.csv")):
        with open(log, newline="") as f:
            curve += [float(row["val_top1"]) for row in csv.DictReader(f) if row.get("val_top1")]
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--base", help="an existing converged artifact (default: train one)")
    parser.add_argument("--base-epochs", type=int, default=30)
    parser.add_argument("--work", default="runs/prune-recovery")
    parser.add_argument("--recover-until", default="1.0")
    parser.add_argument("--criteria", default="taylor")
    parser.add_argument("--methods", default="derived,logits-only,plain")
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--reuse", action="store_true", help="record runs whose artifact is already in --work")
    parser.add_argument("--tag", default="", help="write prune_recovery_cpu_TAG.json (another base, e.g. swin)")
    args = parser.parse_args()
    work = Path(args.work)
    base = Path(args.base) if args.base else work / "base"
    commands: dict = {}
    if not (base / "vitcompress.json").is_file():
        cmd = ["finetune", *BASE_MODEL, "--data", f"folder:{args.data}", "--epochs", str(args.base_epochs),
               "--out", str(base), "--quiet"]
        commands = {"command": "vitcompress " + " ".join(cmd), "seconds": run(cmd)}
    base_meta = json.loads((base / "vitcompress.json").read_text())
    record_path = HERE / "results" / f"prune_recovery_cpu{'_' + args.tag if args.tag else ''}.json"
    earlier = json.loads(record_path.read_text()) if record_path.is_file() else {}
    if earlier.get("base", {}).get("path") != str(base):
        earlier = {}
    records: list[dict] = []
    for shape in args.shapes.split(","):
        for criterion in args.criteria.split(","):
            for method in args.methods.split(","):
                out = work / f"{shape}-{criterion}-{method}"
                cmd = ["prune", str(base), *SHAPES[shape], "--criterion", criterion, "--recover-until",
                       args.recover_until, *METHODS[method], "--out", str(out), "--force", "--quiet"]
                reused = args.reuse and (out / "vitcompress.json").is_file()
                seconds = None if reused else run(cmd)  # a reused run's time is its log's
                pruning = json.loads((out / "vitcompress.json").read_text())["metrics"]["pruning"]
                records.append({"shape": shape, "criterion": criterion, "method": method, "seconds": seconds,
                                "command": "vitcompress " + " ".join(cmd), "recovery": pruning["recovery"],
                                "val_top1_per_epoch": val_curve(out),
                                **{k: pruning[k] for k in ("top1_before", "top1_after_surgery", "top1_after_recovery")}})
    done = {(r["shape"], r["criterion"], r["method"]) for r in records}
    records = [r for r in earlier.get("runs", []) if (r["shape"], r["criterion"], r["method"]) not in done] + records
    commands = commands or {k: v for k, v in earlier.get("base", {}).items() if k in ("command", "seconds")}
    write_record(record_path.stem, {
        "base": {"path": str(base), "top1": base_meta["metrics"]["top1"], "epochs": base_meta["metrics"].get("epochs_run"),
                 "train": base_meta["recipe"].get("train"), **commands},
        "runs": records})
    base_top1 = base_meta["metrics"]["top1"]
    print(tabulate([(r["shape"], r["criterion"], r["method"], f"{100 * r['top1_after_recovery']:.2f}",
                     f"{100 * (r['top1_after_recovery'] - base_top1):+.2f}",
                     f"{r['recovery']['epochs_run']}/{r['recovery']['epochs_cap']}", r["recovery"].get("reached"))
                    for r in records],
                   headers=("shape", "criterion", "method", "top-1 %", "vs base", "epochs", "within target")))
    print(f"wrote {record_path}")


if __name__ == "__main__":
    main()
