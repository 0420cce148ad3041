"""OpenVINO: the IR export round-trips and matches PyTorch, INT8 attention is traced in the form OpenVINO fuses, the
openvino runtime reports the arithmetic it used, bench lists its rows, the Triton repository for OpenVINO's backend
validates, and what it cannot run is one line."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from tests.conftest import run_cli
from tests.test_export import FP32_TOLERANCE, INT8_MIN_AGREEMENT, assert_close_logits, do_export, images, torch_logits
from vitcompress.bench import bench
from vitcompress.config import BenchConfig
from vitcompress.runtimes import RUNTIMES, open_runtime
from vitcompress.sources import open_source


def test_fp32_ir_round_trips_and_matches_pytorch(tmp_path: Path, shapes_artifact: Path) -> None:
    result = do_export(shapes_artifact, tmp_path / "ir", format="openvino")
    assert sorted(p.name for p in result.path.iterdir()) == ["contract.json", "export.json", "model.bin", "model.xml",
                                                              "verify.json"]
    assert result.manifest["target"] == "standard" and result.manifest["openvino"]["weights"] == "fp32"
    report = json.loads((result.path / "verify.json").read_text())["openvino"]
    assert report["passed"] and report["images"] == 64
    source = open_source(result.path)
    assert source.kind == "ir" and [f.name for f in source.files] == ["model.xml", "model.bin"]
    x = images(pixels=False)
    exact = open_runtime(source, "openvino-fp32")
    assert exact.precision(source) == "fp32"
    assert_close_logits(torch_logits(shapes_artifact, x), exact.run(x), FP32_TOLERANCE)
    assert exact.run(x[:1]).shape == (1, 10)  # dynamic batch
    default = open_runtime(source)  # an IR's default runtime: OpenVINO, in the arithmetic it picks for this CPU
    assert default.name == "openvino" and default.precision(source) in ("fp32", "bf16")


def test_int8_ir_keeps_qat_scales_and_stores_int8_weights(tmp_path: Path, int8_artifact: Path) -> None:
    standard = do_export(int8_artifact, tmp_path / "std", target="standard")
    result = do_export(int8_artifact, tmp_path / "ir", format="openvino")
    described = result.manifest["openvino"]
    assert described["fake_quantize_layers"] >= 8 and described["int8_weight_tensors"] >= 8  # 8 layers, int8 weights
    assert (result.path / "model.bin").stat().st_size < 0.6 * (standard.path / "model.onnx").stat().st_size
    source = open_source(result.path)
    x = images(pixels=False, n=64)
    got = open_runtime(source, "openvino-fp32").run(x)
    assert (got.argmax(1) == torch_logits(int8_artifact, x).argmax(1)).mean() >= INT8_MIN_AGREEMENT
    assert open_runtime(source).precision(source).startswith("int8 + ")


def test_int8_attention_is_traced_in_the_form_openvino_fuses(tmp_path: Path, int8_artifact: Path) -> None:
    """q, k and v are three INT8 projections behind one input quantizer (no split of a packed qkv output), and proj's
    input is quantized before the heads are merged (its DequantizeLinear feeds the transpose)."""
    result = do_export(int8_artifact, tmp_path / "std", target="standard")
    graph = onnx.load(str(result.path / "model.onnx")).graph
    blocks = len(json.loads((int8_artifact / "vitcompress.json").read_text())["model"]["heads_per_block"])
    produced_by = {out: node.op_type for node in graph.node for out in node.output}
    weights = {t.name for t in graph.initializer}
    activation_quantizers = [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in weights
                             and produced_by.get(n.input[0]) != "Constant"]
    assert len(activation_quantizers) == 4 * blocks  # q/k/v (one), proj, fc1, fc2
    assert "Split" not in result.manifest["graph"]["ops"]
    consumer = {name: node for node in graph.node for name in node.input}

    def next_op(output: str) -> str:  # the op that takes ``output``, past the FP16 casts of TensorRT's graph
        node = consumer[output]
        return next_op(node.output[0]) if node.op_type == "Cast" else node.op_type

    quantized = {n.output[0] for n in activation_quantizers}
    heads_quantized = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in quantized
                       and next_op(n.output[0]) == "Transpose"]
    assert len(heads_quantized) == blocks
    assert result.manifest["verify"]["onnxruntime"]["top1_agreement"] >= INT8_MIN_AGREEMENT  # the same numbers


def test_the_fused_onnx_graph_is_refused_in_one_line(tmp_path: Path, shapes_artifact: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    fused = do_export(shapes_artifact, tmp_path / "ort")
    reason = RUNTIMES["openvino"].unavailable(open_source(fused.path))
    assert reason and "--format openvino" in reason
    assert run_cli("eval", fused.path, "--data", "shapes", "--backend", "openvino") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "standard ONNX graph" in err


def test_the_old_target_name_still_works_and_says_so(tmp_path: Path, shapes_artifact: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    assert run_cli("export", shapes_artifact, "--target", "tensorrt", "--out", tmp_path / "old", "--quiet") == 0
    assert "--target tensorrt is now --target standard" in capsys.readouterr().err
    assert json.loads((tmp_path / "old" / "export.json").read_text())["target"] == "standard"


def test_bench_lists_openvino_rows_with_the_arithmetic_used(tmp_path: Path, shapes_artifact: Path) -> None:
    ir = do_export(shapes_artifact, tmp_path / "ir", format="openvino").path
    config = BenchConfig(srcs=[str(ir)], out=str(tmp_path / "bench"), backends="openvino,openvino-fp32", batch="1,4",
                         data="shapes", eval_size=200, warmup=1, min_iters=3, max_seconds=0.2, quiet=True)
    records = bench(config).results["records"]
    by_backend = {r["backend"]: r for r in records if r["batch"] == 4}
    assert by_backend["openvino-fp32"]["precision"] == "fp32"
    assert by_backend["openvino"]["precision"] in ("fp32", "bf16")  # bf16 where the CPU has AMX or AVX-512 BF16
    assert by_backend["openvino-fp32"]["top1"] > 0.2 and by_backend["openvino-fp32"]["agreement"] >= 0.95  # vs bf16


def test_triton_repository_for_openvino_validates(tmp_path: Path, int8_artifact: Path) -> None:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    result = do_export(int8_artifact, tmp_path / "repo", format="triton", triton_platform="openvino", model_name="vit",
                       max_batch_size=8)
    model_dir = result.path / "vit"
    config = text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.backend == "openvino" and not config.platform and config.max_batch_size == 8
    assert sorted(p.name for p in (model_dir / "1").iterdir()) == ["model.bin", "model.xml"]
    source = open_source(result.path)
    assert source.kind == "ir" and source.triton["platform"] == "openvino"
    x = images(pixels=False)
    assert open_runtime(source).run(x).shape == (7, 10)
