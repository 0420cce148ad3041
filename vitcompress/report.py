"""Human-readable summaries of artifacts and metrics (tables via tabulate)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tabulate import tabulate

from vitcompress.artifact import ArtifactMeta, read_meta


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, int) and value >= 10_000:
        return f"{value:,}"
    return str(value)


def metrics_table(metrics: dict[str, Any]) -> str:
    """The headline metrics of a report as a two-column table."""
    keys = ("top1", "top5", "precision_macro", "recall_macro", "f1_macro", "loss", "samples", "params", "macs",
            "best_epoch", "epochs_run", "train_images_per_s", "train_seconds", "train_wall_seconds", "device")
    rows = [(k, _fmt(metrics[k])) for k in keys if metrics.get(k) is not None]
    return tabulate(rows, headers=("metric", "value"), tablefmt="simple", disable_numparse=True)


def per_class_table(metrics: dict[str, Any]) -> str:
    rows = [(c, _fmt(a)) for c, a in metrics.get("per_class_accuracy", {}).items()]
    return tabulate(rows, headers=("class", "accuracy"), tablefmt="simple", disable_numparse=True)


def stage_summary(path: Path, meta: ArtifactMeta) -> str:
    """Printed at the end of a stage: the metrics table and where the artifact is."""
    return f"\n{metrics_table(meta.metrics)}\n\nartifact: {path}"


def _precision(meta: ArtifactMeta) -> str:
    q = meta.quantization
    if not q:
        return "fp32"
    method = q["method"] + (f" {q['percentile']}" if q.get("percentile") else "")
    skipped = ", ".join(q["skipped_layers"]) or "none"
    return f"INT8 ({q['weights']}, activations {q['activations']}; {method} calibration; full precision: {skipped})"


def info_json(path: str | Path) -> dict[str, Any]:
    """What ``vitcompress info --json`` prints: an artifact's metadata, an export's manifest, a run's state."""
    from vitcompress.run_report import run_json
    from vitcompress.runs import is_pipeline_run
    from vitcompress.sources import open_source, read_manifest

    if is_pipeline_run(path):
        return run_json(path)
    source = open_source(path)  # one line for anything that is neither
    return read_meta(path).to_json() if source.kind == "artifact" else read_manifest(path)


def describe(path: str | Path) -> str:
    """What ``vitcompress info`` prints about an artifact, an export or a pipeline's output directory."""
    from vitcompress.run_report import describe_run
    from vitcompress.runs import is_pipeline_run
    from vitcompress.sources import open_source

    if is_pipeline_run(path):
        return describe_run(path)
    source = open_source(path)
    return _describe_artifact(path) if source.kind == "artifact" else _describe_export(path, source)


def _describe_export(path: str | Path, source: Any) -> str:
    """Format, arithmetic, the input contract, where it came from and how it was verified."""
    from vitcompress.sources import read_manifest

    manifest = read_manifest(path)
    model_input, output = manifest["contract"]["input"], manifest["contract"]["output"]
    shape = "x".join(str(d) for d in model_input["shape"])
    rows = [
        ("export", str(path)),
        ("format", f"{manifest['format']} ({source.kind}: {' + '.join(f.name for f in source.files)}, "
                   f"{source.file_bytes / 1e6:.2f} MB)"),
        ("precision", f"{manifest['precision']} (graph for {manifest['target']})"),
        ("input", f"'{model_input['name']}' {model_input['dtype']} {shape} ({model_input['layout']})"
                  + (f", batches up to {source.max_batch}" if source.max_batch else "")),
        ("output", f"'{output['name']}' {output['dtype']} {'x'.join(str(d) for d in output['shape'])}"),
        ("classes", _classes(source.classes)),
        ("source", f"{manifest['source']['path']} ({manifest.get('source_stage', '?')}, "
                   f"sha256 {manifest['source']['sha256'][:12]})"),
        ("params", _fmt(source.params if source.params is not None else "?")),
        ("MACs", _fmt(source.macs if source.macs is not None else "?")),
        *[(f"verified ({runtime})", _verification(report)) for runtime, report in manifest.get("verify", {}).items()],
    ]
    if manifest.get("engine"):
        engine = manifest["engine"]
        rows.append(("engine", f"TensorRT {engine['tensorrt']} on {engine['gpu']} (compute {engine['compute_capability']})"))
    if manifest.get("triton"):
        rows.append(("triton model", f"{manifest['triton']['name']}, max batch {manifest['triton'].get('max_batch_size')}"))
    rows += [("created", manifest.get("created", "?")),
             ("versions", ", ".join(f"{k} {v}" for k, v in manifest.get("versions", {}).items()))]
    return tabulate(rows, tablefmt="plain", disable_numparse=True)


def _verification(report: dict[str, Any]) -> str:
    verdict = "passed" if report.get("passed") else f"FAILED: {report.get('failure')}"
    return (f"{verdict}: top-1 agreement {100 * report['top1_agreement']:.2f}%, largest logit error "
            f"{report['max_abs_error']:.2e}, on {report['source']}")


def _classes(classes: list[str]) -> str:
    return f"{len(classes)}: {', '.join(classes[:12])}{' ...' if len(classes) > 12 else ''}"


def _describe_artifact(path: str | Path) -> str:
    meta = read_meta(path)
    heads = meta.heads_per_block
    rows = [
        ("artifact", str(path)),
        ("stage", meta.stage),
        ("model", meta.model_name),
        ("model kwargs", ", ".join(f"{k}={v}" for k, v in meta.model_kwargs.items())),
        ("classes", _classes(meta.classes)),
        ("input", f"3x{meta.img_size}x{meta.img_size}, mean {meta.mean}, std {meta.std}"),
        ("heads per block", f"{heads} (total {sum(heads)})" if heads else "n/a"),
        ("MLP width per block", str(meta.mlp_per_block) if meta.mlp_per_block else "unpruned"),
        ("precision", _precision(meta)),
        ("token merging", _merging(meta.merging)),
        ("params", _fmt(meta.metrics.get("params", "?"))),
        ("MACs", _fmt(meta.metrics.get("macs", "?"))),
        ("data", meta.data.get("spec", "?") + (" (streamed: --stream)" if meta.data.get("streamed") else "")),
        ("parent", f"{meta.parent['path']} (sha256 {meta.parent['sha256'][:12]})" if meta.parent else "none"),
        ("created", meta.created),
        ("versions", ", ".join(f"{k} {v}" for k, v in meta.versions.items())),
    ]
    table = tabulate(rows, tablefmt="plain", disable_numparse=True)
    return f"{table}\n\n{metrics_table(meta.metrics)}" if meta.metrics else table


def _merging(merging: dict[str, Any] | None) -> str:
    if not merging:
        return "none"
    attention = "proportional attention" if merging["prop_attn"] else "plain attention"
    return (f"r per block {merging['per_block']} ({merging['schedule']}, {attention}); tokens per block "
            f"{merging['tokens_in']} -> {merging['tokens_per_block']}; {100 * merging['keep']:.0f}% of patch tokens left")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def prune_table(pruning: dict[str, Any]) -> str:
    """Before/after of a pruning run: accuracy at each point, size, and torch latency."""
    before, after = pruning["before"], pruning["after"]
    rows = [
        ("test top-1", _pct(pruning["top1_before"]), _pct(pruning["top1_after_surgery"]), _pct(pruning["top1_after_recovery"])),
        ("heads", sum(pruning["heads_before"]), sum(pruning["heads_after"]), ""),
        ("MLP channels", sum(pruning["mlp_before"]) or "-", sum(pruning["mlp_after"]) or "-", ""),
        _size_row("params", before["params"], after["params"]),
        _size_row("MACs", before["macs"], after["macs"]),
    ]
    rows += _latency_rows(before, after, pruning["device"])
    table = tabulate(rows, headers=("", "before", "after surgery", "after recovery / ratio"), tablefmt="simple",
                     disable_numparse=True)
    per_block = _per_block_table(pruning["heads_before"], pruning["heads_after"], pruning["removed_heads"],
                                 pruning["mlp_before"], pruning["mlp_after"], "removed heads")
    return f"{table}\n\n{per_block}"


def _latency_rows(before: dict[str, Any], after: dict[str, Any], device: str) -> list[tuple[str, str, str, str]]:
    """Torch latency before and after a stage (``recovery.size_and_speed``'s), one row per batch size: the medians
    and the speed-up by the timing method (the ratio of medians, the per-round interquartile range in brackets)."""
    rows = []
    for batch, ms in before["latency_ms"].items():
        speedup = after["speedup"][batch]
        low, high = speedup["iqr"]
        rows.append((f"latency b{batch} ({device})", f"{ms:.2f} ms", f"{after['latency_ms'][batch]:.2f} ms",
                     f"{speedup['ratio']:.2f}x faster ({low:.2f}-{high:.2f})"))
    return rows


def _size_row(name: str, before: int, after: int) -> tuple[str, str, str, str]:
    return name, f"{before:,}", f"{after:,}", f"x{after / before:.3f}"


def _per_block_table(heads_before: list[int], heads_after: list[int], removed: list[Any], mlp_before: list[int],
                     mlp_after: list[int], removed_header: str) -> str:
    """One row per block: heads and MLP width before and after ("-" for MLPs prune does not cut), and which heads go."""
    unknown = ["-"] * len(heads_before)
    rows = [(i, *row) for i, row in enumerate(zip(heads_before, heads_after, removed, mlp_before or unknown,
                                                  mlp_after or unknown, strict=True))]
    return tabulate(rows, headers=("block", "heads", "kept", removed_header, "MLP", "kept"), tablefmt="simple",
                    disable_numparse=True)


def prune_summary(path: Path, meta: ArtifactMeta) -> str:
    """Printed at the end of ``prune``."""
    pruning = meta.metrics["pruning"]
    return f"\n{prune_table(pruning)}\n\n{recovery_line(pruning.get('recovery', {}))}artifact: {path}"


def recovery_line(recovery: dict[str, Any]) -> str:
    """What the recovery did, with ``--recover-until`` whether it got within reach of the parent (else nothing)."""
    if not recovery.get("recover_until_points") or "reached" not in recovery:
        return ""
    run, cap, target = recovery["epochs_run"], recovery["epochs_cap"], recovery["recover_until_points"]
    below = recovery["points_below_parent"]
    if recovery["reached"]:
        return (f"recovery: validation top-1 within {target:g} points of the unpruned model ({below:+.2f} below) "
                f"after {run} of at most {cap} epochs\n")
    return (f"recovery: the cap of {cap} epoch{'s' if cap != 1 else ''} was reached {below:.2f} points below the "
            f"unpruned model's validation "
            f"top-1, {below - target:.2f} more than --recover-until {target:g}: pass more --finetune-epochs or a "
            f"higher --lr\n")


def prune_preview(preview: Any) -> str:
    """What ``prune --dry-run`` prints (``preview`` is a ``PrunePreview``)."""
    blocks = _per_block_table(preview.heads_before, preview.heads_after, [r or "-" for r in preview.removed_heads],
                              preview.mlp_before, preview.mlp_after, "heads that would go")
    size = tabulate([_size_row("params", preview.params_before, preview.params_after),
                     _size_row("MACs", preview.macs_before, preview.macs_after)],
                    headers=("", "now", "would remain", "ratio"), tablefmt="simple", disable_numparse=True)
    return f"dry run ({preview.model_name}, criterion {preview.criterion}): nothing written\n\n{blocks}\n\n{size}"


def merge_summary(path: Path, meta: ArtifactMeta) -> str:
    """Printed at the end of ``merge``: accuracy and torch latency unmerged, merged and recovered, tokens per block."""
    report, merging = meta.metrics["merging"], meta.merging
    before, after = report["before"], report["after"]
    rows = [("test top-1", _pct(report["top1_before"]), _pct(report["top1_merged"]), _pct(report["top1_after_recovery"])),
            ("tokens in the last block", merging["tokens_in"], merging["tokens_per_block"][-1], ""),
            _size_row("MACs", before["macs"], after["macs"])]
    rows += _latency_rows(before, after, report["device"])
    table = tabulate(rows, headers=("", "unmerged", "merged", "after recovery / ratio"), tablefmt="simple",
                     disable_numparse=True)
    return f"\n{table}\n\ntoken merging: {_merging(merging)}\n\nartifact: {path}"


def qat_summary(path: Path, meta: ArtifactMeta) -> str:
    """Printed at the end of ``qat``: FP32 -> PTQ -> QAT accuracy and what was quantized."""
    q, metrics = meta.quantization, meta.metrics["qat"]
    rows = [("FP32 (source)", _pct(metrics["top1_fp32"])), (f"INT8 PTQ ({q['method']} calibration)", _pct(metrics["top1_ptq"]))]
    if metrics["top1_qat"] is not None:  # --epochs 0 is PTQ only: no QAT row to show
        rows.append((f"INT8 QAT ({metrics['epochs']} epoch{'' if metrics['epochs'] == 1 else 's'})", _pct(metrics["top1_qat"])))
    table = tabulate(rows, headers=("model", "test top-1"), tablefmt="simple", disable_numparse=True)
    layers = f"{len(q['quantized_layers'])} layers in INT8; full precision: {', '.join(q['skipped_layers']) or 'none'}"
    return f"\n{table}\n\n{layers}\n\nartifact: {path}"


def sensitivity_table(report: dict[str, Any]) -> str:
    """What ``qat --sensitivity`` prints: each group's accuracy quantized alone, worst first."""
    rows = [(r["group"], _pct(r["top1"]), f"{100 * r['drop']:+.2f}") for r in report["groups"]]
    table = tabulate(rows, headers=("group quantized alone", f"{report['split']} top-1", "drop (points)"),
                     tablefmt="simple", disable_numparse=True)
    suggestion = f"--skip '{report['suggested_skip']}'" if report["suggested_skip"] else "nothing to skip"
    return (f"FP32 {_pct(report['top1_fp32'])}, everything INT8 {_pct(report['top1_all_int8'])} "
            f"({report['calib_method']} calibration, {report['samples']} {report['split']} images)\n\n{table}\n\n"
            f"suggested (drop above {100 * report['threshold']:.2f} points): {suggestion}")


def export_summary(path: Path, manifest: dict[str, Any]) -> str:
    """Printed at the end of ``export``: what was written and how well it matched PyTorch."""
    contract = manifest["contract"]["input"]
    rows = [("format", manifest["format"]), ("precision", manifest["precision"]), ("graph for", manifest["target"]),
            ("input", f"{contract['name']}: {contract['dtype']} {contract['layout']} {contract['shape']}")]
    for runtime, report in manifest["verify"].items():
        rows += [(f"{runtime} vs PyTorch", f"{report['images']} images from {report['source']}"),
                 ("  max abs logit error", f"{report['max_abs_error']:.2e}"),
                 ("  top-1 agreement", _pct(report["top1_agreement"]))]
        if "accuracy_onnx" in report:
            accuracies = f"{_pct(report['accuracy_onnx'])} / {_pct(report['accuracy_torch'])}"
            rows.append(("  accuracy (exported / PyTorch)", accuracies))
    if "engine" in manifest:
        rows.append(("trtexec equivalent", manifest["engine"]["trtexec"]))
    files = tabulate([(name, f"{size / 1e6:.2f} MB") for name, size in manifest["files"].items()],
                     headers=("file", "size"), tablefmt="simple", disable_numparse=True)
    table = tabulate(rows, tablefmt="simple", disable_numparse=True)
    return f"\n{table}\n\n{files}\n\nexport: {path}"


def predictions_table(records: list[dict[str, Any]]) -> str:
    """What ``predict`` prints: each image's top classes with their probabilities."""
    blocks = []
    for record in records:
        if "error" in record:
            blocks.append(f"{record['image']}\n{record['error']}")
            continue
        rows = [(item["class"], f"{100 * item['probability']:.2f}%") for item in record["top"]]
        blocks.append(f"{record['image']}\n" + tabulate(rows, headers=("class", "probability"), tablefmt="simple",
                                                          disable_numparse=True))
    return "\n\n".join(blocks)
