"""Token merging (``vitcompress merge``): speed of merged, merged + INT8 and pruned + merged + INT8 models against the
unmerged FP32 model on the same runtime, in one run; and accuracy and latency for each r in a list.

Speed (``--speed``): vit_small_patch16_224 at 224 px, random weights (speed does not depend on them): FP32, merged
(``--keep``), INT8 (qat --epochs 0), INT8 then merged, and pruned (half the heads, a quarter of the MLP) + merged +
INT8, exported
as ONNX Runtime's graph and as OpenVINO IR, timed in interleaved rounds with ``--threads`` threads on ONNX Runtime and
on OpenVINO (its default arithmetic), each against the unmerged FP32 export on the same runtime.

Sweep (``--artifact A --r 0,2,4,8``): ``merge A --r R`` for each R: test top-1 on the artifact's whole test split
(the merge stage's own score; with ``--recovery-epochs N`` also after N distilled recovery epochs), tokens left, and
the latency of its ONNX export on ONNX Runtime at batch 1 and 32.

Speed curve (``--curve 0.5,0.4,0.3``): vit_small merged at each keep, FP32 and INT8, on ONNX Runtime against the
unmerged FP32 model in one run: where a speed-up is reached.

Usage:  python benchmarks/merge_sweep.py --speed [--keep 0.4] [--rounds 12]
        python benchmarks/merge_sweep.py --curve 0.5,0.4,0.3,0.2 [--rounds 8]
        python benchmarks/merge_sweep.py --artifact runs/cifar-fp32 --r 0,2,4,6,8 [--schedule decreasing]
            [--recovery-epochs 1]
Writes: benchmarks/results/merge_speed_cpu.json, merge_speed_curve_cpu.json and merge_sweep_cpu.json (hardware and
command inside); with ``--schedule decreasing`` their names end in ``_decreasing``, with ``--tag T`` in ``_T``.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from export_ort import speed_artifacts
from records import write_record
from tabulate import tabulate
from timing import BATCHES, time_variants

from vitcompress.artifact import load_model, parent_ref, read_meta, write_artifact
from vitcompress.compress.merge import merge, per_block_schedule
from vitcompress.compress.qat import qat
from vitcompress.compress.surgery import mlp_widths, reshape_to
from vitcompress.compress.token_merging import describe, patch_tokens
from vitcompress.config import ExportConfig, MergeConfig, QatConfig, TrainConfig, recovery_train_config
from vitcompress.errors import UserError
from vitcompress.export.exporter import export
from vitcompress.export.onnx import export_onnx
from vitcompress.export.openvino import save_ir
from vitcompress.models import heads_per_block
from vitcompress.timing import ratio

RUNTIMES = {"ort": ("onnx", "model.onnx"), "ov": ("openvino", "model.xml")}


def speed_variants(work: Path, keep: float, schedule: str) -> dict[str, Path]:
    """The artifacts to time: FP32, merged, INT8, merged INT8 (INT8, then merged), pruned + merged + INT8 (pruned to
    half the heads and 0.75 of the MLP, merged, then calibrated by the qat stage). Random weights: which heads go
    does not change the speed, and neither merge nor a recovery-free prune changes a weight, so the merged and pruned
    artifacts are written directly (the stages would spend minutes scoring random weights on the test split)."""
    made = unmerged_variants(work)
    made["merged"] = with_merging(made["fp32"], work / "merged", keep, schedule)
    made["int8-merged"] = with_merging(made["int8"], work / "int8-merged", keep, schedule)
    pruned = pruned_copy(made["fp32"], work / "pruned", heads=0.5, mlp=0.25)
    merged = with_merging(pruned, work / "pruned-merged", keep, schedule)
    made["pruned-merged-int8"] = work / "pruned-merged-int8"
    if not (made["pruned-merged-int8"] / "vitcompress.json").is_file():  # made by an earlier run: reuse
        qat(QatConfig(src=str(merged), out=str(made["pruned-merged-int8"]), calib_size=64, force=True,
                      train=TrainConfig(epochs=0, quiet=True, batch_size=32)))
    return made


def unmerged_variants(work: Path) -> dict[str, Path]:
    """vit_small's FP32 and INT8 (qat --epochs 0) artifacts in ``work``, made by an earlier run or now."""
    made = {"fp32": work / "fp32", "int8": work / "int8"}
    if all((path / "vitcompress.json").is_file() for path in made.values()):
        return made
    return speed_artifacts(work)


def with_merging(src: Path, out: Path, keep: float, schedule: str) -> Path:
    """``src`` with ``merge --keep`` 's merging recorded (what the merge stage writes, without its scoring)."""
    model, meta = load_model(src)
    per_block = per_block_schedule(MergeConfig(src=str(src), keep=keep, schedule=schedule), model)
    meta.merging = describe(per_block, patch_tokens(model), int(model.num_prefix_tokens), True, schedule)
    meta.stage, meta.parent = "merge", parent_ref(src)
    write_artifact(out, model, meta)
    return out


def pruned_copy(src: Path, out: Path, heads: float, mlp: float) -> Path:
    """``src`` cut to ``1 - heads`` of its heads and ``1 - mlp`` of its MLP channels per block (the first ones kept)."""
    model, meta = load_model(src)
    meta.heads_per_block = [max(1, round(h * (1 - heads))) for h in heads_per_block(model)]
    meta.mlp_per_block = [round(w * (1 - mlp)) for w in mlp_widths(model)]
    reshape_to(model, meta.heads_per_block, meta.mlp_per_block, meta.img_size)
    meta.stage, meta.parent = "prune", parent_ref(src)
    write_artifact(out, model, meta)
    return out


def export_all(artifacts: dict[str, Path], work: Path, runtimes: tuple[str, ...] = tuple(RUNTIMES)
               ) -> tuple[dict[str, Path], list[str]]:
    """Each artifact as ONNX Runtime's graph (``NAME@ort``) and as OpenVINO IR (``NAME@ov``); also the exports whose
    verification failed and that were written without it: random weights give near-tied logits, so a top-1 flip in 2
    of 32 images misses the 0.95 INT8 agreement."""
    paths, unverified = {}, []
    for name, artifact in artifacts.items():
        for runtime in runtimes:
            fmt, file = RUNTIMES[runtime]
            out = work / f"{fmt}-{name}"
            try:
                export(ExportConfig(src=str(artifact), out=str(out), format=fmt, verify_size=32, force=True, quiet=True))
            except UserError:
                write_unverified(artifact, out / file)
                unverified.append(f"{name}@{runtime}")
            paths[f"{name}@{runtime}"] = out / file
    return paths, unverified


def write_unverified(artifact: Path, file: Path) -> None:
    """``artifact``'s graph at ``file`` without verification: ONNX Runtime's (``.onnx``) or OpenVINO IR converted from
    the standard ONNX graph (``.xml``)."""
    model, meta = load_model(artifact)
    precision = "int8" if meta.quantization else "fp32"
    file.parent.mkdir(parents=True, exist_ok=True)
    onnx_file = file if file.suffix == ".onnx" else file.parent / "standard.onnx"
    export_onnx(model, meta, onnx_file, precision=precision, target="ort" if file.suffix == ".onnx" else "standard",
                pixels=False, int8_fp16_elsewhere=False)
    if file.suffix == ".xml":
        save_ir(onnx_file, file, precision)


def same_runtime_fp32(name: str) -> str:
    """The baseline of variant ``NAME@RUNTIME``: the unmerged FP32 model on that runtime."""
    return f"fp32@{name.split('@')[1]}"


def baselines(paths: dict[str, Path]) -> list[str]:
    """The unmerged FP32 model on each runtime timed (each variant is bracketed by its own runtime's)."""
    return list(dict.fromkeys(same_runtime_fp32(name) for name in paths))


def speed(args: argparse.Namespace) -> dict:
    work = Path(args.work) / "speed"
    artifacts = speed_variants(work, args.keep, args.schedule)
    paths, unverified = export_all(artifacts, work)
    timing = time_variants(paths, args.threads, baselines(paths), args.rounds, 224,
                           bracket_of={name: same_runtime_fp32(name) for name in paths})
    variants = timing["variants"]
    merging = read_meta(artifacts["merged"]).merging
    rows = [(name, t["arithmetic"], t["median_ms"]["1"], t["median_ms"]["32"],
             ratio(timing, name, same_runtime_fp32(name), 1), ratio(timing, name, same_runtime_fp32(name), 32),
             round(t["size_bytes"] / variants[same_runtime_fp32(name)]["size_bytes"], 3)) for name, t in variants.items()]
    print(tabulate(rows, headers=("variant@runtime", "arithmetic", "b1 ms", "b32 ms", "b1 x", "b32 x", "size x")))
    return {"model": "vit_small_patch16_224 at 224 px, random weights, 10 classes", "merging": merging,
            "exported_without_verification": unverified, "timing": timing}


def speed_curve(args: argparse.Namespace) -> dict:
    """Merged FP32 and merged INT8 vit_small at each ``--curve`` keep, on ONNX Runtime, against the unmerged FP32 model
    in one run: the speed each share of tokens buys, and so the keep at which a speed-up is reached."""
    work = Path(args.work) / "speed"
    unmerged = unmerged_variants(work)
    artifacts = dict(unmerged)
    keeps = [float(v) for v in args.curve.split(",")]
    for keep in keeps:
        for base in ("fp32", "int8"):
            name = f"{base}-merged-keep{keep}"
            artifacts[name] = with_merging(unmerged[base], work / name, keep, args.schedule)
    paths, unverified = export_all(artifacts, work, runtimes=("ort",))
    timing = time_variants(paths, args.threads, ["fp32@ort"], args.rounds, 224)
    x = {(name, b): ratio(timing, name, "fp32@ort", b) for name in timing["variants"] for b in BATCHES}
    rows = []
    for keep in keeps:
        merging = read_meta(artifacts[f"fp32-merged-keep{keep}"]).merging
        rows.append({"keep": keep, "per_block": merging["per_block"], "keep_measured": merging["keep"],
                     "token_share_mean": merging["token_share_mean"],
                     **{f"{base}_merged_b{b}_x": round(x[(f"{base}-merged-keep{keep}@ort", b)], 3)
                        for base in ("fp32", "int8") for b in BATCHES}})
    print(f"INT8 unmerged: {x[('int8@ort', 1)]:.2f}x (b1), {x[('int8@ort', 32)]:.2f}x (b32)")
    print(tabulate([(r["keep"], r["keep_measured"], r["token_share_mean"], r["fp32_merged_b1_x"], r["fp32_merged_b32_x"],
                     r["int8_merged_b1_x"], r["int8_merged_b32_x"]) for r in rows],
                   headers=("keep", "left at last block", "mean token share", "FP32 b1 x", "FP32 b32 x", "INT8 b1 x",
                            "INT8 b32 x")))
    return {"model": "vit_small_patch16_224 at 224 px, random weights, 10 classes", "runtime": "onnxruntime",
            "schedule": args.schedule, "int8_unmerged_x": {f"b{b}": round(x[("int8@ort", b)], 3) for b in BATCHES},
            "exported_without_verification": unverified, "rows": rows, "timing": timing}


def sweep(args: argparse.Namespace) -> dict:
    work = Path(args.work) / "sweep"
    meta = read_meta(args.artifact)
    rows, paths = [], {}
    for r in [int(v) for v in args.r.split(",")]:
        name = f"r{r}"
        recovered = None
        if r:  # the stage scores the merged model before any recovery, so one run gives both numbers
            result = merge(MergeConfig(src=args.artifact, out=str(work / name), r=r, schedule=args.schedule, force=True,
                                       finetune_epochs=args.recovery_epochs,
                                       train=replace(recovery_train_config(), quiet=True)))
            report, merging = result.meta.metrics["merging"], result.meta.merging
            top1, recovered = report["top1_merged"], report["top1_after_recovery"]
        else:
            top1, merging = meta.metrics["top1"], None
        artifact = work / name if r else Path(args.artifact)
        export(ExportConfig(src=str(artifact), out=str(work / f"onnx-{name}"), verify_size=32, force=True, quiet=True))
        paths[name] = work / f"onnx-{name}" / "model.onnx"
        rows.append({"r": r, "top1": top1, "top1_after_recovery": recovered,
                     "tokens_last_block": merging["tokens_per_block"][-1] if merging else None,
                     "per_block": merging["per_block"] if merging else None})
    timing = time_variants(paths, args.threads, ["r0"], args.rounds, meta.img_size)
    for row in rows:
        row["latency_ms"] = timing["variants"][f"r{row['r']}"]["median_ms"]
        row["x_vs_r0"] = {str(b): ratio(timing, f"r{row['r']}", "r0", b) for b in BATCHES}
    print(tabulate([(r["r"], f"{100 * r['top1']:.2f}",
                     f"{100 * r['top1_after_recovery']:.2f}" if r["top1_after_recovery"] is not None else "",
                     r["tokens_last_block"], r["latency_ms"]["1"], r["latency_ms"]["32"]) for r in rows],
                   headers=("r", "top-1 %", f"after {args.recovery_epochs} epochs", "tokens at last block", "ORT b1 ms",
                            "ORT b32 ms")))
    return {"artifact": args.artifact, "model": meta.model_name, "data": meta.data.get("spec"), "img_size": meta.img_size,
            "schedule": args.schedule, "recovery_epochs": args.recovery_epochs, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--speed", action="store_true", help="time the merged variants of vit_small at 224 px")
    parser.add_argument("--artifact", default="", help="sweep r on this artifact (accuracy on its test split)")
    parser.add_argument("--r", default="0,2,4,8", help="tokens merged per block, a comma list (0: unmerged)")
    parser.add_argument("--recovery-epochs", type=int, default=0,
                        help="sweep: also merge each r with this many distilled recovery epochs")
    parser.add_argument("--keep", type=float, default=0.4, help="--speed: share of patch tokens left at the last block")
    parser.add_argument("--curve", default="", help="time vit_small merged at each of these keeps (a comma list)")
    parser.add_argument("--tag", default="", help="added to the name of each record written (..._cpu_TAG.json)")
    parser.add_argument("--schedule", default="constant", choices=("constant", "decreasing"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--work", default="runs/merge-bench")
    args = parser.parse_args()
    if not args.speed and not args.artifact and not args.curve:
        parser.error("pass --speed, --curve KEEPS, --artifact A, or several")
    for kind, run in (("speed", speed if args.speed else None), ("speed_curve", speed_curve if args.curve else None),
                      ("sweep", sweep if args.artifact else None)):
        if run is None:
            continue
        suffix = "".join(f"_{part}" for part in (args.schedule if args.schedule != "constant" else "", args.tag) if part)
        out = write_record(f"merge_{kind}_cpu{suffix}", {"threads": args.threads, **run(args)})
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
