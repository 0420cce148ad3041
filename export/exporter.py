"""``vitcompress export``: an artifact as a verified ONNX model, a TensorRT engine, or a Triton model repository.

Every format starts from the same verified ONNX file. The export is built in ``OUT.tmp-export/``
and published by one rename, only after ONNX Runtime has matched PyTorch on real images; a failed
verification leaves nothing behind.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import nn

from vitcompress.artifact import ArtifactMeta, library_versions, load_model, now_iso, parent_ref, read_meta
from vitcompress.augment import BatchTransform
from vitcompress.config import ExportConfig, parse_batch_profile
from vitcompress.data import default_cache_dir
from vitcompress.errors import UserError, require
from vitcompress.export.onnx import OUTPUT, export_onnx, input_name
from vitcompress.export.verify import TOLERANCES, Tolerance, VerificationSet, tolerance_for, verification_set, verify_onnx
from vitcompress.fsutil import atomic_file, check_output_dir, staged_directory
from vitcompress.locks import LOCK_FILE

ONNX_FILE = "model.onnx"
ENGINE_FILE = "model.plan"
CONTRACT_FILE = "contract.json"
VERIFY_FILE = "verify.json"
MANIFEST_FILE = "export.json"
STAGING_SUFFIX = ".tmp-export"
EXPORT_LIBRARIES = ("vitcompress", "torch", "timm", "onnx", "onnxruntime", "nvidia-modelopt")
ENGINE_TOLERANCE = Tolerance(3e-2, 0.98)  # TensorRT may pick TF32/FP16 tactics for FP32 layers


@dataclass
class ExportJob:
    """What every format writer gets: the options, the model, and the images to verify on."""

    cfg: ExportConfig
    model: nn.Module
    meta: ArtifactMeta
    precision: str
    target: str
    data: VerificationSet

    @property
    def pixels(self) -> bool:
        return self.cfg.input == "uint8"


@dataclass
class ExportResult:
    path: Path
    manifest: dict[str, Any]


def export(cfg: ExportConfig) -> ExportResult:
    """Export artifact ``cfg.src`` as ``cfg.format`` into ``cfg.out``."""
    cfg.validate()
    meta = read_meta(cfg.src)
    precision = resolve_precision(cfg.precision, meta, cfg.src)
    target = cfg.resolved_target()
    if needs_engine(cfg):
        require(target == "standard", "a TensorRT engine is built from the standard graph, not --target ort",
                "drop --target or pass --target standard")
        from vitcompress.export.tensorrt import require_cuda_device, tensorrt

        tensorrt()  # the install hint, before any work
        require_cuda_device()
    out = check_output_dir(cfg.out, cfg.force)
    model, meta = load_model(cfg.src)
    data = verification_set(meta, cfg.verify_data, cfg.verify_size, cfg.data_dir, cfg.cache_dir, quiet=cfg.quiet)
    job = ExportJob(cfg, model, meta, precision, target, data)
    with staged_directory(out, STAGING_SUFFIX) as staging:
        manifest = FORMAT_WRITERS[cfg.format](job, staging)
        _write_json(staging / MANIFEST_FILE, manifest)
    return ExportResult(out, manifest)


def cached_export(src: str, cache_dir: str | None = None, on_build: Callable[[Path], None] = lambda _: None) -> Path:
    """Artifact ``src``'s default export (a verified ONNX file for ONNX Runtime, INT8 for a quantized artifact) in
    the cache, made on first use (``on_build(path)`` is called first), for commands that take an artifact where a
    deployed model runs (``serve``). Keyed by the digests of the artifact's two files: a retrained artifact gets a
    new export.
    """
    from vitcompress.artifact import META_FILE, WEIGHTS_FILE
    from vitcompress.fsutil import sha256_file
    from vitcompress.locks import build_once

    folder = Path(src)
    digest = sha256_file(folder / WEIGHTS_FILE)[:16] + sha256_file(folder / META_FILE)[:8]
    target = (Path(cache_dir) if cache_dir else default_cache_dir()) / "exports" / f"{folder.resolve().name}-{digest}"

    def build() -> None:
        on_build(target)
        export(ExportConfig(src=src, out=str(target), cache_dir=cache_dir, quiet=True))

    build_once(target, lambda t: (t / MANIFEST_FILE).is_file(), build)
    return target


def resolve_precision(requested: str, meta: ArtifactMeta, src: str) -> str:
    """``auto`` is INT8 for a quantized artifact and FP32 otherwise; a mismatch is the user's to fix."""
    if requested == "auto":
        return "int8" if meta.quantization else "fp32"
    if requested == "int8":
        require(bool(meta.quantization), f"{src} was never quantized, so it has no INT8 ranges to export",
                f"run `vitcompress qat {src} --out DIR` and export DIR, or pass --precision fp32 or fp16")
    elif meta.quantization:
        raise UserError(f"{src} is an INT8 artifact; --precision {requested} would drop what qat learned",
                        "export it with --precision int8 (the default), or export the FP32 artifact it came from")
    return requested


def needs_engine(cfg: ExportConfig) -> bool:
    return cfg.format == "tensorrt" or (cfg.format == "triton" and cfg.triton_platform == "tensorrt")


def write_verified_onnx(job: ExportJob, directory: Path) -> dict[str, Any]:
    """``model.onnx``, its input contract and its verification report in ``directory``; the manifest's core."""
    cfg = job.cfg
    graph = export_onnx(job.model, job.meta, directory / ONNX_FILE, precision=job.precision, target=job.target,
                        pixels=job.pixels, opset=cfg.opset, simplify=cfg.simplify,
                        int8_fp16_elsewhere=cfg.runtime_family() != "openvino")
    report = verify_onnx(directory / ONNX_FILE, job.model, job.meta, job.data, job.pixels,
                         tolerance_for(job.precision, job.meta))
    contract = input_contract(job)
    _write_json(directory / CONTRACT_FILE, contract)
    _write_json(directory / VERIFY_FILE, {"onnxruntime": report})
    return {"format": cfg.format, "precision": job.precision, "target": job.target, "source": parent_ref(cfg.src),
            "source_stage": job.meta.stage, "source_metrics": {k: job.meta.metrics.get(k) for k in ("params", "macs", "top1")},
            "source_data": job.meta.data,
            "contract": contract, "graph": graph, "verify": {"onnxruntime": report},
            "versions": library_versions(EXPORT_LIBRARIES), "recipe": {**asdict(cfg), "command": "export"}, "created": now_iso()}


def input_contract(job: ExportJob) -> dict[str, Any]:
    """What a client sends and gets back; written beside every exported model."""
    meta, size = job.meta, job.meta.img_size
    if job.pixels:
        model_input = {"name": input_name(True), "dtype": "uint8", "layout": "NHWC", "shape": ["batch", size, size, 3],
                       "preprocessing": "none: send RGB pixels resized to the model's size; the graph scales by 1/255 "
                                        "and normalises with mean and std"}
    else:
        model_input = {"name": input_name(False), "dtype": "float32", "layout": "NCHW", "shape": ["batch", 3, size, size],
                       "preprocessing": "RGB resized to the model's size, scaled to [0, 1], then (x - mean) / std"}
    return {"input": model_input, "mean": meta.mean, "std": meta.std,
            "output": {"name": OUTPUT, "dtype": "float32", "shape": ["batch", len(meta.classes)],
                       "meaning": "class scores (logits); softmax gives probabilities"},
            "classes": meta.classes, "precision": job.precision, "target": job.target}


def _sample_shape(job: ExportJob) -> tuple[int, ...]:
    size = job.meta.img_size
    return (size, size, 3) if job.pixels else (3, size, size)


def _write_onnx(job: ExportJob, staging: Path) -> dict[str, Any]:
    manifest = write_verified_onnx(job, staging)
    manifest["files"] = _file_sizes(staging)
    return manifest


def _build_engine(job: ExportJob, directory: Path) -> dict[str, Any]:
    """Build ``model.plan`` from the verified ONNX in ``directory``, run it on the same images, describe it."""
    from vitcompress.export.onnx_runtime import run_in_batches
    from vitcompress.export.tensorrt import EngineSpec, TensorRTRunner, build_engine
    from vitcompress.export.verify import compare, torch_logits

    cfg = job.cfg
    cache = Path(cfg.timing_cache) if cfg.timing_cache else default_cache_dir() / "tensorrt-timing.cache"
    spec = EngineSpec(directory / ONNX_FILE, directory / ENGINE_FILE, input_name(job.pixels), _sample_shape(job),
                      parse_batch_profile(cfg.batch), cfg.workspace_gb, cache)
    engine = build_engine(spec)
    runner = TensorRTRunner(spec.engine_path)
    inputs = BatchTransform(job.meta.img_size, job.meta.mean, job.meta.std).model_input(job.data.pixels, job.pixels)
    got = run_in_batches(runner.run, inputs, min(spec.batch[2], 8))
    tolerance = TOLERANCES["int8"] if job.precision == "int8" else ENGINE_TOLERANCE
    report = compare(torch_logits(job.model, job.meta, job.data.pixels), got, job.data.labels, tolerance)
    report.update(images=len(inputs), source=job.data.source)  # as every verification report says
    if not report["passed"]:
        raise UserError(f"engine verification failed: {report['failure']}; nothing was written",
                        "re-run with --debug and report it")
    return {"engine": engine, "report": report}


def _convert_to_ir(job: ExportJob, directory: Path) -> dict[str, Any]:
    """``model.xml`` + ``model.bin`` from the verified ONNX in ``directory`` (which is then removed), checked against
    PyTorch on the same images and tolerances as the ONNX file; returns the IR's description and its report."""
    from vitcompress.export.onnx import model_files
    from vitcompress.export.openvino import IR_FILE, ir_runner, save_ir
    from vitcompress.export.verify import verify_runner

    described = save_ir(directory / ONNX_FILE, directory / IR_FILE, job.precision)
    report = verify_runner(ir_runner(directory / IR_FILE), job.model, job.meta, job.data, job.pixels,
                           tolerance_for(job.precision, job.meta))
    if not report["passed"]:
        raise UserError(f"OpenVINO IR verification failed: {report['failure']}; nothing was written",
                        "re-run with --debug and report it; --format onnx exports the ONNX file")
    for file in model_files(directory / ONNX_FILE):  # the IR holds the model now
        file.unlink()
    return {"openvino": described, "report": report}


def _write_openvino(job: ExportJob, staging: Path) -> dict[str, Any]:
    manifest = write_verified_onnx(job, staging)
    converted = _convert_to_ir(job, staging)
    manifest["openvino"] = converted["openvino"]
    manifest["verify"]["openvino"] = converted["report"]
    _write_json(staging / VERIFY_FILE, manifest["verify"])
    manifest["files"] = _file_sizes(staging)
    return manifest


def _write_tensorrt(job: ExportJob, staging: Path) -> dict[str, Any]:
    manifest = write_verified_onnx(job, staging)
    built = _build_engine(job, staging)
    _write_json(staging / "engine.json", built["engine"])
    manifest["engine"] = built["engine"]
    manifest["verify"]["tensorrt"] = built["report"]
    _write_json(staging / VERIFY_FILE, manifest["verify"])
    manifest["files"] = _file_sizes(staging)
    return manifest


def _write_triton(job: ExportJob, staging: Path) -> dict[str, Any]:
    from vitcompress.export.triton import TritonModel, describe, model_name_for, write_model_repository

    cfg = job.cfg
    name = cfg.model_name or model_name_for(Path(cfg.src).resolve())
    work = staging / name
    work.mkdir()
    manifest = write_verified_onnx(job, work)
    model_file = work / ONNX_FILE
    if cfg.triton_platform == "tensorrt":
        built = _build_engine(job, work)
        manifest["engine"] = built["engine"]
        manifest["verify"]["tensorrt"] = built["report"]
        model_file = work / ENGINE_FILE
    elif cfg.triton_platform == "openvino":
        from vitcompress.export.openvino import IR_FILE

        converted = _convert_to_ir(job, work)
        manifest["openvino"] = converted["openvino"]
        manifest["verify"]["openvino"] = converted["report"]
        model_file = work / IR_FILE
    contract = manifest["contract"]["input"]
    model = TritonModel(name=name, platform=cfg.triton_platform, input_name=contract["name"],
                        input_dtype=contract["dtype"], input_dims=_sample_shape(job), output_name=OUTPUT,
                        num_classes=len(job.meta.classes), max_batch_size=cfg.max_batch_size,
                        dynamic_batching=cfg.dynamic_batching, max_queue_delay_us=cfg.max_queue_delay_us,
                        instances=cfg.instances, instance_kind=cfg.instance_kind)
    write_model_repository(staging, model, model_file, job.meta.classes)
    manifest["triton"] = describe(model)
    manifest["files"] = _file_sizes(staging)
    return manifest


FORMAT_WRITERS: dict[str, Callable[[ExportJob, Path], dict[str, Any]]] = {
    "onnx": _write_onnx,
    "openvino": _write_openvino,
    "tensorrt": _write_tensorrt,
    "triton": _write_triton,
}


def _file_sizes(root: Path) -> dict[str, int]:
    """What the export holds (the staging directory's lock file is not part of it)."""
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file() and p.name != LOCK_FILE}


def _write_json(path: Path, obj: Any) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


