"""export: ONNX that matches PyTorch (FP32, FP16, INT8, pixels in), Triton repositories, TensorRT specs."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from tests.conftest import run_cli
from vitcompress.artifact import load_model
from vitcompress.compress.prune import prune
from vitcompress.config import ExportConfig, PruneConfig
from vitcompress.export import exporter
from vitcompress.export.exporter import export
from vitcompress.export.onnx_runtime import ort_runner, ort_session
from vitcompress.export.verify import Tolerance
from vitcompress.serving import served_max_batch_size, served_model_name
from vitcompress.sources import open_source

# Largest logit difference to PyTorch, relative to the largest logit: FP32 is the same arithmetic
# in another order; FP16 rounds every activation to 11 bits.
FP32_TOLERANCE = 1e-4
FP16_TOLERANCE = 3e-2
# INT8: ONNX Runtime's integer kernels against PyTorch's fake quantization; at least this share of
# top-1 predictions must agree on the verification images.
INT8_MIN_AGREEMENT = 0.95


@pytest.fixture(scope="module")
def pruned_artifact(shapes_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export-src") / "pruned"
    prune(PruneConfig(src=str(shapes_artifact), out=str(out), heads=0.5, mlp=0.25, finetune_epochs=0))
    return out


def images(pixels: bool, n: int = 7) -> np.ndarray:
    rng = np.random.default_rng(0)
    if pixels:
        return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    return rng.standard_normal((n, 3, 32, 32)).astype(np.float32)


def torch_logits(src: Path, x: np.ndarray) -> np.ndarray:
    model, _ = load_model(src)
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def onnx_logits(path: Path, x: np.ndarray) -> np.ndarray:
    return ort_runner(ort_session(path))(x)


def do_export(src: Path, out: Path, **options) -> exporter.ExportResult:
    return export(ExportConfig(src=str(src), out=str(out), verify_size=64, quiet=True, **options))


def assert_close_logits(expected: np.ndarray, got: np.ndarray, tolerance: float) -> None:
    scale = max(1.0, float(np.abs(expected).max()))
    assert float(np.abs(expected - got).max()) <= tolerance * scale


@pytest.mark.parametrize("target", ["ort", "standard"])
def test_fp32_onnx_matches_pytorch_at_batch_1_and_7(tmp_path: Path, shapes_artifact: Path, target: str) -> None:
    result = do_export(shapes_artifact, tmp_path / "onnx", target=target)
    path = result.path / "model.onnx"
    onnx.checker.check_model(onnx.load(str(path)))
    x = images(pixels=False)
    expected = torch_logits(shapes_artifact, x)
    assert_close_logits(expected, onnx_logits(path, x), FP32_TOLERANCE)
    assert_close_logits(expected[:1], onnx_logits(path, x[:1]), FP32_TOLERANCE)
    ops = result.manifest["graph"]["ops"]
    assert ("Attention" in ops) == (target == "ort")  # ORT's fused attention kernel, or standard ops only
    if target == "standard":
        assert result.manifest["graph"]["domains"] == ["ai.onnx"]


def test_export_writes_its_verification_and_contract(tmp_path: Path, shapes_artifact: Path) -> None:
    result = do_export(shapes_artifact, tmp_path / "onnx")
    assert sorted(p.name for p in result.path.iterdir()) == ["contract.json", "export.json", "model.onnx", "verify.json"]
    assert result.manifest["files"] == {p.name: p.stat().st_size for p in result.path.iterdir() if p.name != "export.json"}
    report = json.loads((result.path / "verify.json").read_text())["onnxruntime"]
    assert report["images"] == 64 and report["source"].startswith("shapes (test split")
    assert report["top1_agreement"] == 1.0 and report["max_abs_error"] < 1e-3
    trained_on = json.loads((shapes_artifact / "vitcompress.json").read_text())["data"]
    assert open_source(result.path).trained_on == trained_on == result.manifest["source_data"]  # what eval and bench need
    assert report["accuracy_onnx"] == pytest.approx(report["accuracy_torch"]) and report["accuracy_onnx"] > 0.2
    contract = json.loads((result.path / "contract.json").read_text())
    assert contract["input"] == {**contract["input"], "name": "input", "dtype": "float32", "shape": ["batch", 3, 32, 32]}
    assert len(contract["classes"]) == 10 and contract["output"]["name"] == "logits"


def test_info_describes_an_export(tmp_path: Path, shapes_artifact: Path, capsys: pytest.CaptureFixture) -> None:
    result = do_export(shapes_artifact, tmp_path / "onnx", input="uint8")
    capsys.readouterr()
    assert run_cli("info", result.path) == 0
    text = capsys.readouterr().out
    for expected in ("onnx (onnx: model.onnx", "'pixels' uint8 batchx32x32x3 (NHWC)", "10: circle, square",
                     f"{shapes_artifact} (finetune", "verified (onnxruntime)  passed: top-1 agreement 100.00%"):
        assert expected in text, expected
    assert run_cli("info", result.path, "--json") == 0
    assert json.loads(capsys.readouterr().out) == json.loads((result.path / "export.json").read_text())


def test_fp16_onnx_is_half_precision_and_close(tmp_path: Path, shapes_artifact: Path) -> None:
    fp32 = do_export(shapes_artifact, tmp_path / "fp32").path / "model.onnx"
    fp16 = do_export(shapes_artifact, tmp_path / "fp16", precision="fp16").path / "model.onnx"
    types = {t.data_type for t in onnx.load(str(fp16)).graph.initializer}
    assert onnx.TensorProto.FLOAT16 in types
    assert fp16.stat().st_size < 0.6 * fp32.stat().st_size
    x = images(pixels=False)
    assert_close_logits(torch_logits(shapes_artifact, x), onnx_logits(fp16, x), FP16_TOLERANCE)


def test_pixel_input_does_the_normalisation(tmp_path: Path, shapes_artifact: Path) -> None:
    result = do_export(shapes_artifact, tmp_path / "pixels", input="uint8")
    path = result.path / "model.onnx"
    graph_input = onnx.load(str(path)).graph.input[0]
    assert graph_input.name == "pixels" and graph_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_value or d.dim_param for d in graph_input.type.tensor_type.shape.dim] == ["batch", 32, 32, 3]
    pixels = images(pixels=True)
    model, meta = load_model(shapes_artifact)
    mean, std = torch.tensor(meta.mean).view(1, 3, 1, 1), torch.tensor(meta.std).view(1, 3, 1, 1)
    floats = ((torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255 - mean) / std).numpy()
    assert_close_logits(torch_logits(shapes_artifact, floats), onnx_logits(path, pixels), FP32_TOLERANCE)


def test_int8_onnx_holds_integer_weights_and_agrees(tmp_path: Path, int8_artifact: Path, shapes_artifact: Path) -> None:
    fp32 = do_export(shapes_artifact, tmp_path / "fp32").path / "model.onnx"
    result = do_export(int8_artifact, tmp_path / "int8")
    assert result.manifest["precision"] == "int8"  # chosen by --precision auto for a quantized artifact
    path = result.path / "model.onnx"
    ops = result.manifest["graph"]["ops"]
    assert ops["QAttention"] == 2 and ops["MatMulIntegerToFloat"] == 6  # qkv+attention, proj, fc1, fc2 per block
    int8_weights = [t for t in onnx.load(str(path)).graph.initializer if t.data_type == onnx.TensorProto.INT8
                    and len(t.dims) == 2]
    assert len(int8_weights) == 8
    assert path.stat().st_size < 0.6 * fp32.stat().st_size
    x = images(pixels=False, n=64)
    expected, got = torch_logits(int8_artifact, x), onnx_logits(path, x)
    assert (expected.argmax(1) == got.argmax(1)).mean() >= INT8_MIN_AGREEMENT
    assert result.manifest["verify"]["onnxruntime"]["top1_agreement"] >= INT8_MIN_AGREEMENT


def test_int8_for_tensorrt_is_qdq_with_fp16_elsewhere(tmp_path: Path, int8_artifact: Path) -> None:
    result = do_export(int8_artifact, tmp_path / "trt", target="standard")
    proto = onnx.load(str(result.path / "model.onnx"))
    ops = result.manifest["graph"]["ops"]
    assert result.manifest["graph"]["domains"] == ["ai.onnx"]
    assert ops["QuantizeLinear"] >= 16 and ops["DequantizeLinear"] >= 16  # weights and inputs of 8 layers
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer)
    x = images(pixels=False)
    assert (torch_logits(int8_artifact, x).argmax(1) == onnx_logits(result.path / "model.onnx", x).argmax(1)).mean() >= 0.8
    assert onnx_logits(result.path / "model.onnx", x[:1]).shape == (1, 10)


def test_pruned_artifact_exports(tmp_path: Path, pruned_artifact: Path) -> None:
    result = do_export(pruned_artifact, tmp_path / "pruned")
    x = images(pixels=False)
    assert_close_logits(torch_logits(pruned_artifact, x), onnx_logits(result.path / "model.onnx", x), FP32_TOLERANCE)


def test_weights_past_protobufs_limit_go_to_external_data(tmp_path: Path, shapes_artifact: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # A model past 2 GiB (ViT-H in FP32) cannot be one protobuf message; here the limit is lowered to 0 bytes.
    from PIL import Image

    from vitcompress.export import onnx as onnx_export
    from vitcompress.predict import predict
    from vitcompress.report import describe

    monkeypatch.setattr(onnx_export, "SINGLE_FILE_LIMIT", 0)
    result = do_export(shapes_artifact, tmp_path / "onnx")
    graph, data = result.path / "model.onnx", result.path / "model.onnx.data"
    assert result.manifest["graph"]["external_data"] and result.manifest["verify"]["onnxruntime"]["passed"]
    assert graph.stat().st_size * 10 < data.stat().st_size  # the weights are in the data file, not in the graph
    assert data.stat().st_mode == graph.stat().st_mode  # as readable as the graph (onnx creates it private)
    x = images(pixels=False)
    assert_close_logits(torch_logits(shapes_artifact, x), onnx_logits(graph, x), FP32_TOLERANCE)
    assert open_source(result.path).file_bytes == graph.stat().st_size + data.stat().st_size
    assert "onnx: model.onnx + model.onnx.data" in describe(result.path)  # what `vitcompress info` prints

    repo = do_export(shapes_artifact, tmp_path / "repo", format="triton", model_name="vit")
    version = repo.path / "vit" / "1"
    assert sorted(p.name for p in version.iterdir()) == ["model.onnx", "model.onnx.data"]
    picture = tmp_path / "square.png"
    Image.fromarray(images(pixels=True, n=1)[0]).save(picture)
    assert predict(str(repo.path), [str(picture)], 1, None, 1) == predict(str(result.path), [str(picture)], 1, None, 1)


@pytest.mark.parametrize("target", ["ort", "standard"])
def test_int8_graphs_take_external_data_too(tmp_path: Path, int8_artifact: Path, target: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from vitcompress.export import onnx as onnx_export

    single = do_export(int8_artifact, tmp_path / "single", target=target).path / "model.onnx"
    monkeypatch.setattr(onnx_export, "SINGLE_FILE_LIMIT", 0)
    result = do_export(int8_artifact, tmp_path / "split", target=target)
    assert result.manifest["graph"]["external_data"] and (result.path / "model.onnx.data").is_file()
    x = images(pixels=False)
    np.testing.assert_array_equal(onnx_logits(single, x), onnx_logits(result.path / "model.onnx", x))


def test_triton_repository_matches_the_model(tmp_path: Path, int8_artifact: Path) -> None:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    result = do_export(int8_artifact, tmp_path / "repo", format="triton", input="uint8", model_name="vit",
                       max_batch_size=16, instances=2, instance_kind="cpu")
    model_dir = result.path / "vit"
    config = text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    proto = onnx.load(str(model_dir / "1" / "model.onnx"))
    assert config.name == "vit" and config.platform == "onnxruntime_onnx" and config.max_batch_size == 16
    (graph_in,), (graph_out,) = proto.graph.input, proto.graph.output
    assert config.input[0].name == graph_in.name == "pixels"
    assert config.input[0].data_type == model_config_pb2.TYPE_UINT8
    assert list(config.input[0].dims) == [d.dim_value for d in graph_in.type.tensor_type.shape.dim][1:]
    assert config.output[0].name == graph_out.name and list(config.output[0].dims) == [10]
    labels = (model_dir / config.output[0].label_filename).read_text().split()
    assert labels == json.loads((model_dir / "contract.json").read_text())["classes"]
    assert config.instance_group[0].count == 2 and config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8, 16]
    source = open_source(result.path)  # `vitcompress serve` of the repository serves it under its own name
    assert served_model_name("", source) == "vit" and served_model_name("other", source) == "other"
    assert served_max_batch_size(0, source) == 16 and served_max_batch_size(4, source) == 4  # the repository's, unless asked


def test_tensorrt_spec_profile_and_trtexec_line(tmp_path: Path) -> None:
    from vitcompress.export.tensorrt import EngineSpec, engine_metadata, trtexec_command

    spec = EngineSpec(tmp_path / "model.onnx", tmp_path / "model.plan", "input", (3, 224, 224), (1, 8, 32), 2.0,
                      tmp_path / "timing.cache")
    assert spec.profile() == {"min": (1, 3, 224, 224), "opt": (8, 3, 224, 224), "max": (32, 3, 224, 224)}
    line = trtexec_command(spec)
    for part in ("--stronglyTyped", "--minShapes=input:1x3x224x224", "--optShapes=input:8x3x224x224",
                 "--maxShapes=input:32x3x224x224", "--memPoolSize=workspace:2048M", f"--timingCacheFile={tmp_path}"):
        assert part in line
    meta = engine_metadata("10.9.0", "12.8", "NVIDIA H100 80GB HBM3", "9.0", spec)
    assert meta["compute_capability"] == "9.0" and meta["profile"]["opt"] == [8, 3, 224, 224] and meta["trtexec"] == line


def test_tensorrt_without_tensorrt_says_how_to_install(tmp_path: Path, shapes_artifact: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    assert run_cli("export", shapes_artifact, "--format", "tensorrt", "--out", tmp_path / "engine") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "TensorRT is not installed" in err and "vitcompress[tensorrt]" in err
    assert not any(tmp_path.iterdir())


def test_tensorrt_without_a_gpu_is_one_line_before_any_work(tmp_path: Path, shapes_artifact: Path,
                                                            capsys: pytest.CaptureFixture,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """TensorRT installed (a stand-in module here) but no CUDA device: refused before the ONNX export, not after it."""
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert run_cli("export", shapes_artifact, "--format", "tensorrt", "--out", tmp_path / "engine") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no CUDA device is visible" in err and "--target standard" in err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("case", ["int8-of-fp32", "unknown-format", "corrupt", "exists", "verification"])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, shapes_artifact: Path, case: str,
                                                  capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    src: Path = shapes_artifact
    extra: list[str] = []
    if case == "int8-of-fp32":
        extra = ["--precision", "int8"]
    elif case == "unknown-format":
        extra = ["--format", "tflite"]
    elif case == "corrupt":
        src = tmp_path / "corrupt"
        src.mkdir()
        (src / "vitcompress.json").write_text("{not json")
    elif case == "exists":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    elif case == "verification":  # a tolerance nothing can meet: the real failure path
        monkeypatch.setitem(exporter.TOLERANCES, "fp32", Tolerance(0.0, 1.01))
    try:
        status = run_cli("export", src, "--out", out, "--verify-size", "16", *extra)
    except SystemExit as exit_:  # argparse's own errors (an unknown choice) exit from the parser
        status = exit_.code
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and err.count("\n") == 0
    if case == "exists":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
    else:
        assert not out.exists()
    assert not any(p.name.endswith(".tmp-export") for p in tmp_path.iterdir())
