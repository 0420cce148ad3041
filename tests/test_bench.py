"""bench: every variant x backend x batch measured, every file written, skipped backends listed with a reason."""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from tests.conftest import SMALL_FILESYSTEMS, TINY, run_cli, with_small_filesystem
from vitcompress.bench import bench
from vitcompress.config import BENCH_BACKENDS, BenchConfig, ExportConfig
from vitcompress.evaluate import evaluate_artifact
from vitcompress.export.exporter import export
from vitcompress.plots import pareto_front
from vitcompress.predict import Classifier
from vitcompress.runtimes import RUNTIMES
from vitcompress.runtimes.ort_backend import OrtRuntime
from vitcompress.sources import ModelSource, open_source

LATENCY_FIELDS = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "throughput_ips", "peak_memory_bytes")
MODEL_FIELDS = ("file_bytes", "params", "macs", "top1", "f1_macro", "agreement", "speedup")


@pytest.fixture(scope="module")
def onnx_export(shapes_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench-src") / "onnx"
    export(ExportConfig(src=str(shapes_artifact), out=str(out), verify_size=32, quiet=True))
    return out


def small_bench(srcs: list[Path], out: Path, **options) -> BenchConfig:
    defaults = {"batch": "1,3", "data": "shapes", "eval_size": 96, "warmup": 1, "min_iters": 3, "max_seconds": 0.2,
                "rounds": 2, "quiet": True}
    return BenchConfig(srcs=[str(s) for s in srcs], out=str(out), **{**defaults, **options})


def test_bench_writes_every_file_with_every_field(tmp_path: Path, shapes_artifact: Path, onnx_export: Path) -> None:
    result = bench(small_bench([shapes_artifact, onnx_export], tmp_path / "bench", backends="torch,ort-cpu,ort-cuda"))
    files = sorted(p.name for p in result.path.iterdir())
    assert files == ["accuracy_vs_latency.png", "latency_vs_batch.png", "report.md", "results.csv", "results.json"]
    results = json.loads((result.path / "results.json").read_text())
    records = results["records"]
    cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers() and torch.cuda.is_available()
    ran = [("onnx", "ort-cpu"), *([("onnx", "ort-cuda")] if cuda else []), ("shapes", "torch")]
    assert sorted((r["variant"], r["backend"], r["batch"]) for r in records) == [(*pair, b) for pair in ran for b in (1, 3)]
    for record in records:
        for field in LATENCY_FIELDS + MODEL_FIELDS:
            assert record[field] is not None, field
        assert record["p50_ms"] <= record["p99_ms"] and record["iters"] >= 3
    timing = results["timing"]  # the speed-ups: the timing method's rounds, every variant bracketed by the baseline
    assert timing["order"][:3] == ["shapes on torch", "onnx on ort-cpu", "shapes on torch"]
    assert timing["order"][::2] == ["shapes on torch"] * len(ran)
    assert len(timing["variants"]["onnx on ort-cpu"]["rounds_ms"]["3"]) == 2
    onnx_b3 = next(r for r in records if (r["variant"], r["batch"]) == ("onnx", 3))
    assert onnx_b3["speedup"] == timing["ratios"]["onnx on ort-cpu"]["shapes on torch"]["3"]["ratio"]
    assert onnx_b3["speedup_against"] == "shapes on torch" and len(onnx_b3["speedup_iqr"]) == 2
    baseline = [r for r in records if r["baseline"]]
    assert {r["variant"] for r in baseline} == {"shapes"} and all(r["agreement"] == 1.0 for r in baseline)
    assert all(r["agreement"] >= 0.99 for r in records)  # the FP32 ONNX export predicts what PyTorch does
    assert results["hardware"]["cpu_count"] and results["versions"]["onnxruntime"] and results["config"]["batch"] == "1,3"
    skipped = {(s["variant"], s["backend"]): s["reason"] for s in results["skipped"]}
    if cuda:
        assert ("onnx", "ort-cuda") not in skipped
    else:  # listed with why, never dropped
        assert "CUDAExecutionProvider" in skipped[("onnx", "ort-cuda")]
    with open(result.path / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == len(records)
    report = (result.path / "report.md").read_text()
    assert "vs baseline" in report and "latency_vs_batch.png" in report
    if skipped:
        assert "## Skipped" in report


def test_every_bench_backend_name_is_a_runtime() -> None:
    """config's names (the CLI's choices, kept free of torch) and the runtimes registry list the same backends."""
    assert list(BENCH_BACKENDS) == list(RUNTIMES)


def test_a_backend_with_nothing_to_run_is_listed_with_why(tmp_path: Path, shapes_artifact: Path) -> None:
    result = bench(small_bench([shapes_artifact], tmp_path / "bench", backends="torch,ort-cpu,tensorrt", batch="1"))
    skipped = {(s["variant"], s["backend"]): s["reason"] for s in result.results["skipped"]}
    assert "runs onnx models" in skipped[("(none)", "ort-cpu")]  # an artifact is not an ONNX export
    why = skipped[("(none)", "tensorrt")]  # not installed here, or no engine among the inputs: either way, why
    if importlib.util.find_spec("tensorrt") is None:
        assert "TensorRT is not installed" in why and "pip install 'vitcompress[tensorrt]'" in why
    elif not torch.cuda.is_available():
        assert "no CUDA GPU" in why
    else:
        assert "runs engine models, and none of the inputs is one" in why
    assert {r["backend"] for r in result.results["records"]} == {"torch"}
    assert "ort-cpu" in (result.path / "report.md").read_text().split("## Skipped")[1]


@pytest.mark.parametrize("backend", ["torch-compile", pytest.param("torch-cudagraphs", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="CUDA graphs need an NVIDIA GPU"))])
def test_torch_compile_predicts_what_eager_torch_does(tmp_path: Path, shapes_artifact: Path, backend: str) -> None:
    result = bench(small_bench([shapes_artifact], tmp_path / "bench", backends=f"torch,{backend}", batch="1,3"))
    compiled = [r for r in result.results["records"] if r["backend"] == backend]
    assert sorted(r["batch"] for r in compiled) == [1, 3]
    assert all(r["agreement"] >= 0.99 and r["top1"] is not None for r in compiled)


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the backend runs (test above)")
def test_cuda_graphs_without_a_gpu_are_skipped_with_why(tmp_path: Path, shapes_artifact: Path) -> None:
    result = bench(small_bench([shapes_artifact], tmp_path / "bench", backends="torch,torch-cudagraphs", batch="1"))
    reasons = [s["reason"] for s in result.results["skipped"] if s["backend"] == "torch-cudagraphs"]
    assert reasons == ["CUDA graphs need an NVIDIA GPU"]
    assert {r["backend"] for r in result.results["records"]} == {"torch"}


def test_speed_only_without_data(tmp_path: Path, onnx_export: Path) -> None:
    result = bench(small_bench([onnx_export], tmp_path / "bench", data=None, backends="ort-cpu"))
    assert all("top1" not in r for r in result.results["records"])
    assert not (result.path / "accuracy_vs_latency.png").exists()


def test_each_variant_s_peak_memory_is_its_own(tmp_path: Path) -> None:
    """A wide model's FP32 export, then its INT8 export (a quarter of the bytes): the INT8 one must report less,
    by most of the weights it saves. In one process it reported more: the RSS of everything benched before it."""
    base, int8 = tmp_path / "wide", tmp_path / "wide-int8"
    assert run_cli("finetune", *TINY[:4], "--patch-size", "8", "--model-kwargs", "depth=2,embed_dim=512,num_heads=2",
                   "--data", "shapes", "--train-subset", "100", "--batch-size", "50", "--epochs", "1", "--quiet",
                   "--out", base) == 0
    assert run_cli("qat", base, "--epochs", "0", "--calib-size", "64", "--quiet", "--out", int8) == 0
    exports = []
    for artifact in (base, int8):
        exports.append(tmp_path / f"{artifact.name}-onnx")
        export(ExportConfig(src=str(artifact), out=str(exports[-1]), verify_size=16, quiet=True))
    records = bench(small_bench(exports, tmp_path / "bench", backends="ort-cpu", batch="8")).results["records"]
    memory = {r["variant"]: r["peak_memory_bytes"] for r in records}
    saved = records[0]["file_bytes"] - records[1]["file_bytes"]  # about 19 MB of weights
    assert records[0]["memory_kind"].startswith("peak RSS added") and memory["wide-onnx"] >= records[0]["file_bytes"]
    assert memory["wide-onnx"] - memory["wide-int8-onnx"] >= saved / 2


def test_a_measuring_process_that_dies_says_why(tmp_path: Path, onnx_export: Path) -> None:
    """An unguarded script: the fresh process imports it again, and its bench call cannot start another."""
    script = tmp_path / "unguarded.py"
    script.write_text("from vitcompress.bench import bench\nfrom vitcompress.config import BenchConfig\n"
                      f"bench(BenchConfig(srcs=[{str(onnx_export)!r}], out={str(tmp_path / 'out')!r}, "
                      "backends='ort-cpu', batch='1', quiet=True))\n")
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode != 0 and "died" in run.stderr and 'if __name__ == "__main__":' in run.stderr
    assert not (tmp_path / "out").exists()


def test_pareto_front() -> None:
    points = [(1.0, 0.80), (2.0, 0.90), (1.5, 0.70), (3.0, 0.85), (0.5, 0.60)]
    assert pareto_front(points) == [(0.5, 0.60), (1.0, 0.80), (2.0, 0.90)]


@pytest.mark.parametrize("case, needle", [
    ("missing", "neither an artifact nor an export"), ("corrupt", "export.json is corrupt"),
    ("unloadable", "ONNX Runtime cannot load"),  # why no backend ran, not only that none did
    ("weights-left-behind", "keeps its weights in model.onnx.data, which is not beside it"),
    ("exists", "already exists"), ("unknown-backend", "tflite"), ("twice", "more than once")])
def test_bad_input_is_one_line(tmp_path: Path, onnx_export: Path, case: str, needle: str,
                               capsys: pytest.CaptureFixture) -> None:
    src, out, extra, more = onnx_export, tmp_path / "out", [], []
    if case == "missing":
        src = tmp_path / "nothing-here"
    elif case == "corrupt":
        src = tmp_path / "corrupt"
        src.mkdir()
        (src / "export.json").write_text("{not json")
    elif case in ("unloadable", "weights-left-behind"):
        src = Path(shutil.copytree(onnx_export, tmp_path / case))
        if case == "unloadable":
            (src / "model.onnx").write_bytes(b"not a protobuf")
        else:  # an export past 2 GiB copied without its data file
            manifest = json.loads((src / "export.json").read_text())
            manifest["graph"]["external_data"] = True
            (src / "export.json").write_text(json.dumps(manifest))
    elif case == "exists":
        out.mkdir()
    elif case == "twice":
        more = [onnx_export.parent / ".." / onnx_export.parent.name / onnx_export.name]  # the same model, spelt otherwise
    else:
        extra = ["--backends", "tflite"]
    assert run_cli("bench", src, *more, "--out", out, "--quiet", *extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and err.count("\n") == 0 and needle in err
    assert (case == "exists") == out.exists()


def test_accuracy_is_what_eval_reports(tmp_path: Path, shapes_artifact: Path, onnx_export: Path) -> None:
    result = bench(small_bench([shapes_artifact, onnx_export], tmp_path / "bench", backends="torch,ort-cpu", batch="1",
                               eval_size=0))  # the whole test split, as eval scores it
    for src in (shapes_artifact, onnx_export):
        report = evaluate_artifact(str(src), "shapes")
        (record,) = [r for r in result.results["records"] if r["path"] == str(src)]
        assert record["top1"] == pytest.approx(report["top1"], abs=1e-6)
        assert record["f1_macro"] == pytest.approx(report["f1_macro"], abs=1e-6)


@SMALL_FILESYSTEMS
def test_bench_measures_in_a_container_s_small_dev_shm(tmp_path: Path, onnx_export: Path) -> None:
    """Docker gives containers 64 MB of /dev/shm. The 3 MB of test images here, with 1 MB of it: handed to the
    measuring process as a tensor they went through /dev/shm, and it never started."""
    out = tmp_path / "bench"
    run = with_small_filesystem("bench", str(onnx_export), "--data", "shapes", "--backends", "ort-cpu", "--batch", "1",
                                "--max-seconds", "0.2", "--quiet", "--out", str(out))
    assert run.returncode == 0, run.stderr[-2000:]
    (record,) = json.loads((out / "results.json").read_text())["records"]
    assert record["top1"] > 0.2 and record["peak_memory_bytes"] > 0  # 10 classes: chance is 0.1


@SMALL_FILESYSTEMS
def test_no_room_for_the_test_images_is_one_line(tmp_path: Path, onnx_export: Path) -> None:
    cache, out = tmp_path / "cache", tmp_path / "bench"
    cache.mkdir()
    run = with_small_filesystem("bench", str(onnx_export), "--data", "shapes", "--backends", "ort-cpu", "--batch", "1",
                                "--cache-dir", str(cache), "--quiet", "--out", str(out), mountpoint=str(cache))
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr[-2000:]
    assert "cannot save the test images" in run.stderr and "--eval-size" in run.stderr and not out.exists()


def test_a_model_at_another_size_than_the_data_scores_what_eval_reports(tmp_path: Path) -> None:
    """bench brings the 32 px test images to a 40 px model's size a call at a time; eval does it a batch at a time."""
    artifact, onnx = tmp_path / "at40", tmp_path / "at40-onnx"
    assert run_cli("finetune", *TINY, "--img-size", "40", "--data", "shapes", "--train-subset", "300", "--epochs", "2",
                   "--out", artifact) == 0
    assert json.loads((artifact / "vitcompress.json").read_text())["input"]["size"] == [3, 40, 40]
    export(ExportConfig(src=str(artifact), out=str(onnx), verify_size=16, quiet=True))
    result = bench(small_bench([artifact, onnx], tmp_path / "bench", backends="torch,ort-cpu", batch="1", eval_size=0))
    for src in (artifact, onnx):
        report = evaluate_artifact(str(src), "shapes")
        (record,) = [r for r in result.results["records"] if r["path"] == str(src)]
        assert record["top1"] == pytest.approx(report["top1"], abs=1e-6) and report["samples"] == 1000


ENGINE_MAX_BATCH = 4


class OnnxAsEngine(OrtRuntime):
    """Stands in for TensorRT (not installable here): ONNX Runtime on the export's ONNX file, refusing batches
    above the engine profile's maximum as TensorRT does."""

    name, kinds, calls = "tensorrt", ("engine",), []

    def __init__(self, source: ModelSource, threads: int | None = None, max_batch: int | None = None) -> None:
        super().__init__(dataclasses.replace(source, kind="onnx", file=source.path / "model.onnx"), threads, max_batch)

    def run(self, batch: np.ndarray) -> np.ndarray:
        assert len(batch) <= ENGINE_MAX_BATCH, f"batch {len(batch)} is above the engine's profile"
        OnnxAsEngine.calls.append(len(batch))
        return super().run(batch)


@pytest.fixture
def engine_export(onnx_export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An export shaped like `export --format tensorrt --batch 1,2,4` (an engine whose profile stops at 4)."""
    engine = tmp_path / "engine"
    engine.mkdir()
    for name in ("model.onnx", "contract.json"):
        (engine / name).write_bytes((onnx_export / name).read_bytes())
    manifest = json.loads((onnx_export / "export.json").read_text())
    manifest["engine"] = {"profile": {name: [b, 3, 32, 32] for name, b in (("min", 1), ("opt", 2), ("max", 4))}}
    (engine / "export.json").write_text(json.dumps(manifest))
    (engine / "model.plan").write_bytes(b"stands for a serialized engine")
    monkeypatch.setitem(RUNTIMES, "tensorrt", OnnxAsEngine)
    OnnxAsEngine.calls = []
    return engine


def test_an_engine_is_never_sent_a_batch_above_its_profile(tmp_path: Path, engine_export: Path) -> None:
    source = open_source(engine_export)
    assert source.kind == "engine" and source.max_batch == ENGINE_MAX_BATCH
    result = bench(small_bench([engine_export], tmp_path / "bench", backends="tensorrt", batch="1,4,8",
                               in_process=True))  # the stand-in engine runtime is patched into this process only
    timed = [r["batch"] for r in result.results["records"]]
    assert timed == [1, 4] and result.results["records"][0]["top1"] > 0.2  # accuracy in chunks of 4
    skipped = [s["reason"] for s in result.results["skipped"]]
    assert any("batch 8 is above the engine's profile maximum 4" in r for r in skipped)
    report = evaluate_artifact(str(engine_export), "shapes", batch_size=256, quiet=True)  # eval's default batch
    assert report["runtime"] == "tensorrt" and report["samples"] == 1000
    assert Classifier(engine_export, batch_size=32).batch_size == ENGINE_MAX_BATCH
    assert max(OnnxAsEngine.calls) == ENGINE_MAX_BATCH


class OutOfMemoryAtBatch3(OrtRuntime):
    """ONNX Runtime that runs out of device memory on batches of 3, as a GPU does on a batch too large for it."""

    def run(self, batch: np.ndarray) -> np.ndarray:
        if len(batch) == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().run(batch)


def test_a_batch_the_device_has_no_memory_for_is_skipped_and_the_rest_measured(
        tmp_path: Path, onnx_export: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(RUNTIMES, "ort-cpu", OutOfMemoryAtBatch3)
    result = bench(small_bench([onnx_export], tmp_path / "bench", backends="ort-cpu", batch="1,3,4",
                               in_process=True))  # the patched runtime lives in this process only
    records = result.results["records"]
    assert [r["batch"] for r in records] == [1, 4] and all(r["top1"] > 0.2 for r in records)
    assert [s["reason"] for s in result.results["skipped"]] == ["batch 3: out of memory on cpu"]
    assert "out of memory" in (result.path / "report.md").read_text()
