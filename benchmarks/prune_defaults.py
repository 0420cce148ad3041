"""Prune's default recovery recipe, chosen on the validation split, then reported once on the test split, over seeds.

Trains the converged CIFAR-10 reference of benchmarks/prune_recovery.py once (unless ``--base`` names it), prunes it
(``--shape``, default half the heads) with each candidate recovery method of that script and each seed, and reads
each run's **validation** top-1 (the 5,000 held-out training images; recovery keeps its best validation epoch, so the
score is the best of its validation curve). The method with the highest mean validation top-1 is the choice; only
then is the test split read, for that method alone: test top-1 per seed, mean and standard deviation, against the
unpruned base. The prune stage scores every artifact it writes on the test split too (its ``metrics``); this script
reads that score for the chosen method only.

Usage:  python benchmarks/prune_defaults.py [--base ARTIFACT] [--methods derived,crop-pad,logits-only,plain]
        [--seeds 0,1,2] [--shape h0.5] [--work runs/prune-recovery]
Writes: benchmarks/results/prune_defaults_cpu.json (every command, the choice, the commit and the CPU).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from prune_recovery import BASE_MODEL, DEFAULT_DATA, METHODS, SHAPES, run, val_curve
from records import write_record
from tabulate import tabulate


def mean_sd(values: list[float]) -> dict[str, float]:
    return {"mean": round(statistics.fmean(values), 5), "sd": round(statistics.stdev(values), 5) if len(values) > 1 else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--base", help="an existing converged artifact (default: train one into WORK/base)")
    parser.add_argument("--base-epochs", type=int, default=30)
    parser.add_argument("--work", default="runs/prune-recovery")
    parser.add_argument("--shape", default="h0.5", choices=list(SHAPES))
    parser.add_argument("--methods", default="derived,crop-pad,logits-only,plain")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--recover-until", default="1.0")
    args = parser.parse_args()
    work = Path(args.work)
    base = Path(args.base) if args.base else work / "base"
    cmd = ["finetune", *BASE_MODEL, "--data", f"folder:{args.data}", "--epochs", str(args.base_epochs),
           "--out", str(base), "--quiet"]
    base_command: dict = {"command": "vitcompress " + " ".join(cmd)} if not args.base else {}
    if not (base / "vitcompress.json").is_file():
        base_command["seconds"] = run(cmd)
    elif base_command:
        base_command["made_by_an_earlier_run"] = True  # the same command, cut off after the base and run again
    seeds = [int(s) for s in args.seeds.split(",")]
    runs: dict[str, list[dict]] = {}
    for method in args.methods.split(","):
        for seed in seeds:
            out = work / f"defaults-{args.shape}-{method}-seed{seed}"
            cmd = ["prune", str(base), *SHAPES[args.shape], "--recover-until", args.recover_until, *METHODS[method],
                   "--seed", str(seed), "--out", str(out), "--force", "--quiet"]
            seconds = None if (out / "vitcompress.json").is_file() else run(cmd)  # done by an earlier, cut run
            curve = val_curve(out)
            runs.setdefault(method, []).append({"seed": seed, "command": "vitcompress " + " ".join(cmd),
                                                "seconds": seconds, "val_top1_per_epoch": curve,
                                                "val_top1": max(curve), "artifact": str(out)})
    validation = {method: mean_sd([r["val_top1"] for r in done]) for method, done in runs.items()}
    chosen = max(validation, key=lambda method: validation[method]["mean"])
    # the test split, read once, for the choice alone
    test = [json.loads((Path(r["artifact"]) / "vitcompress.json").read_text())["metrics"]["pruning"]["top1_after_recovery"]
            for r in runs[chosen]]
    base_meta = json.loads((base / "vitcompress.json").read_text())
    base_top1 = base_meta["metrics"]["top1"]
    test_summary = {"per_seed": dict(zip(seeds, test, strict=True)), **mean_sd(test),
                    "drop_points": mean_sd([100 * (base_top1 - t) for t in test])}
    out = write_record("prune_defaults_cpu", {
        "base": {"path": str(base), "test_top1": base_top1, "val_top1": base_meta["metrics"].get("best_val_top1"),
                 "recipe": base_meta["recipe"].get("train"),
                 "train_wall_seconds": base_meta["metrics"].get("train_wall_seconds"), **base_command},
        "shape": args.shape, "seeds": seeds, "runs": runs, "validation_top1": validation, "chosen": chosen,
        "test_top1_of_chosen": test_summary})
    print(tabulate([(m, f"{100 * v['mean']:.2f} ± {100 * v['sd']:.2f}", "<- chosen" if m == chosen else "")
                    for m, v in validation.items()], headers=("method", "validation top-1 %, mean ± sd", "")))
    print(f"{chosen} on test: {100 * test_summary['mean']:.2f} ± {100 * test_summary['sd']:.2f} % "
          f"(base {100 * base_top1:.2f} %; drop {test_summary['drop_points']['mean']:.2f} ± "
          f"{test_summary['drop_points']['sd']:.2f} points), seeds {seeds}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
