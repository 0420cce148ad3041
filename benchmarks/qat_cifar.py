"""INT8 benchmark on CIFAR-10: FP32 against PTQ (each calibration method) and QAT, in PyTorch fake-quant.

Runs on a trained artifact and on its pruned child (defaults: the artifacts benchmarks/prune_cifar.py
leaves in runs/prune-bench). Every run records test top-1 of the FP32 source, after calibration and
after QAT, measured on this machine in this run.

Usage:  python benchmarks/qat_cifar.py [--sources runs/prune-bench/base,runs/prune-bench/l1-h0.5-m0.0] [--qat-epochs 1]
Writes: benchmarks/results/qat_cifar_<device>.json, with the hardware and every command.
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
from vitcompress.config import CALIBRATION_METHODS

HERE = Path(__file__).resolve().parent


def run(args: list[str]) -> dict:
    print("$ vitcompress " + " ".join(args), flush=True)
    started = time.time()
    if vitcompress(args) != 0:
        raise SystemExit(f"vitcompress {args[0]} failed")
    meta = json.loads((Path(args[args.index("--out") + 1]) / "vitcompress.json").read_text())
    return {"command": "vitcompress " + " ".join(args), "seconds": round(time.time() - started, 1), **meta["metrics"]["qat"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", default="runs/prune-bench/base,runs/prune-bench/l1-h0.5-m0.0")
    parser.add_argument("--qat-epochs", type=int, default=1)
    parser.add_argument("--qat-method", default="max", help="calibration method the QAT runs start from")
    parser.add_argument("--work", default="runs/qat-bench")
    args = parser.parse_args()
    records = []
    for src in args.sources.split(","):
        name = Path(src).name
        for method in CALIBRATION_METHODS:
            out = Path(args.work) / f"{name}-ptq-{method}"
            records.append({"source": src, "kind": "ptq", "method": method,
                            **run(["qat", src, "--calib-method", method, "--epochs", "0", "--out", str(out), "--force",
                                   "--quiet"])})
        out = Path(args.work) / f"{name}-qat-{args.qat_method}"
        records.append({"source": src, "kind": "qat", "method": args.qat_method,
                        **run(["qat", src, "--calib-method", args.qat_method, "--epochs", str(args.qat_epochs),
                               "--batch-size", "128", "--amp", "bf16", "--out", str(out), "--force", "--quiet"])})
    device = "cuda" if torch.cuda.is_available() else "cpu"
    path = write_record(f"qat_cifar_{device}", {"runs": records})
    rows = [(Path(r["source"]).name, r["kind"], r["method"], f"{100 * r['top1_fp32']:.2f}",
             f"{100 * r['top1_ptq']:.2f}", "-" if r["top1_qat"] is None else f"{100 * r['top1_qat']:.2f}",
             f"{100 * ((r['top1_qat'] if r['top1_qat'] is not None else r['top1_ptq']) - r['top1_fp32']):+.2f}")
            for r in records]
    print(tabulate(rows, headers=("source", "kind", "calibration", "FP32", "PTQ", "QAT", "INT8 - FP32 (points)")))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
