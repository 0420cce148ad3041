"""The headline tables of README.md and docs/results.md, generated from the current records so they cannot drift.

Each table stands between ``<!-- headlines:NAME -->`` and ``<!-- /headlines:NAME -->`` in the files that show it;
this script rewrites what is between them, and ``--check`` fails (exit 1) where a file differs from what the records
give (tests/test_headlines.py runs that check).

Usage:  python benchmarks/headlines.py [--check]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = RESULTS.parent.parent
SHOWN_IN = (ROOT / "README.md", ROOT / "docs" / "results.md")
SPEED_RECORD = "openvino_cpu.json"
VARIANT_NAMES = {"fp32-ort": "FP32, ONNX Runtime", "fp32-std": "FP32 standard-ops graph, ONNX Runtime",
                 "fp32-ov": "FP32 IR, OpenVINO default", "fp32-ov-f32": "FP32 IR, OpenVINO held to f32",
                 "int8-ort": "**vitcompress INT8**, ONNX Runtime", "ort-dynamic": "ORT `quantize_dynamic`, ONNX Runtime",
                 "nncf-ov": "NNCF PTQ INT8, OpenVINO", "int8-ov": "**vitcompress INT8 IR**, OpenVINO"}


def speed_table(record: dict) -> str:
    """vit_small at 224 px on the CPU: every variant against the fastest FP32 runtime (with the IQR of the per-round
    ratios), against FP32 on ONNX Runtime and against OpenVINO held to f32."""
    hw = record["hardware"]
    lines = [f"vit_small_patch16_224, 224 px, {record['threads']} threads, random weights; {hw['cpu']} "
             f"({', '.join(hw['cpu_flags'])}); commit `{record['commit'][:10]}`, "
             f"{record['timing']['method']['rounds']} rounds. Record `benchmarks/results/{SPEED_RECORD}`, made by "
             f"`{record['command']}`.", "",
             "| variant | arithmetic | b1 ms | b32 ms | b1 vs fastest FP32 | b32 vs fastest FP32 | b1 / b32 vs FP32 ORT "
             "| b1 / b32 vs OpenVINO f32 | size |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in record["table"]:
        x = row["x"]
        lines.append(f"| {VARIANT_NAMES.get(row['variant'], row['variant'])} | {row['arithmetic']} | {row['ms']['1']:.1f} "
                     f"| {row['ms']['32']:.0f} | {_headline(x['1'])} | {_headline(x['32'])} "
                     f"| {x['1']['fp32-ort']:.2f}x / {x['32']['fp32-ort']:.2f}x "
                     f"| {x['1']['fp32-ov-f32']:.2f}x / {x['32']['fp32-ov-f32']:.2f}x | {row['size_x']:.2f}x |")
    fastest = {b: VARIANT_NAMES[record["table"][0]["x"][b]["fastest FP32 is"]] for b in ("1", "32")}
    where = (f"{fastest['1']}, at both batch sizes" if fastest["1"] == fastest["32"]
             else f"{fastest['1']} at batch 1, {fastest['32']} at batch 32")
    lines += ["", f"Fastest FP32 here: {where}. Each figure is the ratio of the medians over interleaved rounds "
              "(docs/bench.md); in brackets the interquartile range of the per-round ratios, which a ratio of medians "
              "can fall just outside. Exports written without verification (random weights give near-tied logits; "
              f"the record lists them): {', '.join(record['exported_without_verification']) or 'none'}."]
    return "\n".join(lines)


SPREAD_RECORDS = (SPEED_RECORD, "openvino_cpu_repeat1.json", "archive/openvino_cpu_run_0423d8f.json")


def spread_table(records: list[dict]) -> str:
    """How far apart repeated runs of the speed table are: each variant's ratio against the fastest FP32 in every
    run, and the largest distance of a run from their mean."""
    names = ", ".join(f"`{name}` (commit `{r['commit'][:7]}`)" for name, r in zip(SPREAD_RECORDS, records, strict=True))
    lines = [f"{len(records)} runs of `python benchmarks/openvino_cpu.py` on the same machine: {names}.", "",
             "| variant | b1 vs fastest FP32, each run | b1 spread | b32 vs fastest FP32, each run | b32 spread |",
             "|---|---|---|---|---|"]
    for row in records[0]["table"]:
        cells = []
        for batch in ("1", "32"):
            values = [next(r for r in rec["table"] if r["variant"] == row["variant"])["x"][batch]["fastest FP32"]
                      for rec in records]
            mean = sum(values) / len(values)
            cells += [" / ".join(f"{v:.2f}x" for v in values), f"±{100 * max(abs(v - mean) for v in values) / mean:.0f} %"]
        lines.append(f"| {VARIANT_NAMES.get(row['variant'], row['variant'])} | {' | '.join(cells)} |")
    return "\n".join(lines)


PRUNE_RECORD = "prune_defaults_cpu.json"


def prune_table(record: dict) -> str:
    """Prune's recovery recipe chosen on validation: each candidate's validation top-1 over the seeds, and the test
    top-1 of the choice alone against the unpruned base."""
    base, test = record["base"], record["test_top1_of_chosen"]
    seeds = ", ".join(str(s) for s in record["seeds"])
    lines = [f"Half the heads of the converged CIFAR-10 ViT (test top-1 {100 * base['test_top1']:.2f} %), "
             f"`--recover-until 1.0`, seeds {seeds}; {record['hardware']['cpu']}, commit `{record['commit'][:7]}`. "
             f"Record `benchmarks/results/{PRUNE_RECORD}`, made by `{record['command']}`.", "",
             "| recovery method | validation top-1, mean ± sd | |", "|---|---|---|"]
    for method, v in record["validation_top1"].items():
        mark = "**chosen**" if method == record["chosen"] else ""
        lines.append(f"| `{method}` | {100 * v['mean']:.2f} ± {100 * v['sd']:.2f} % | {mark} |")
    per_seed = ", ".join(f"{100 * t:.2f}" for t in test["per_seed"].values())
    lines += ["", f"`{record['chosen']}` on the test split, read once after the choice: **{100 * test['mean']:.2f} ± "
              f"{100 * test['sd']:.2f} %** (seeds: {per_seed}), **{test['drop_points']['mean']:.2f} ± "
              f"{test['drop_points']['sd']:.2f} points** below the unpruned base."]
    return "\n".join(lines)


def _headline(cells: dict) -> str:
    low, high = cells["iqr vs fastest"]
    return f"{cells['fastest FP32']:.2f}x ({low:.2f}-{high:.2f})"


TABLES: dict[str, tuple[tuple[str, ...], Callable[..., str]]] = {
    "cpu-speed": ((SPEED_RECORD,), speed_table), "cpu-speed-spread": (SPREAD_RECORDS, lambda *r: spread_table(list(r))),
    "prune-defaults": ((PRUNE_RECORD,), prune_table)}


def generated() -> dict[str, str]:
    """Each headline table as its records give it."""
    return {name: render(*(json.loads((RESULTS / record).read_text()) for record in records))
            for name, (records, render) in TABLES.items()}


def marked(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- headlines:{name} -->)(.*?)(<!-- /headlines:{name} -->)", re.DOTALL)


def stale(files: tuple[Path, ...] = SHOWN_IN) -> list[str]:
    """The tables that some file shows otherwise than the records give them (``file: table``)."""
    tables = generated()
    return [f"{path.name}: {name}" for path in files for name, text in tables.items()
            if (found := marked(name).search(path.read_text())) and found.group(2) != f"\n{text}\n"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only say which files differ from the records")
    args = parser.parse_args()
    if args.check:
        differ = stale()
        print("\n".join(differ) or "every headline table is what its record gives")
        sys.exit(1 if differ else 0)
    for path in SHOWN_IN:
        text = path.read_text()
        for name, table in generated().items():
            text = marked(name).sub(lambda m, table=table: f"{m.group(1)}\n{table}\n{m.group(3)}", text)
        path.write_text(text)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
