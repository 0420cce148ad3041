"""serve: a real Triton Inference Server answers like ONNX Runtime, refuses bad requests and keeps serving,
and answers every request of a concurrent burst."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import SMALL_FILESYSTEMS, run_cli, with_small_filesystem
from vitcompress import memory
from vitcompress.bench import bench
from vitcompress.config import BenchConfig, ExportConfig
from vitcompress.errors import UserError
from vitcompress.evaluate import evaluate_artifact
from vitcompress.export.exporter import export
from vitcompress.predict import Classifier
from vitcompress.runtimes import RUNTIMES
from vitcompress.serving import (
    DEFAULT_MAX_BATCH_SIZE,
    HOST,
    TritonClient,
    TritonServer,
    port_in_use,
    ready_message,
    served_max_batch_size,
    served_model_name,
    server_unavailable,
)
from vitcompress.sources import open_source

TOLERANCE = 1e-5  # the server runs the same ONNX Runtime session on the same bytes


@pytest.fixture(scope="module")
def served(shapes_artifact: Path, tmp_path_factory: pytest.TempPathFactory):
    reason = server_unavailable()
    if reason:
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("serve") / "pixels"
    export(ExportConfig(src=str(shapes_artifact), out=str(out), input="uint8", verify_size=16, quiet=True))
    source = open_source(out)
    server = TritonServer(source, "vit", http_port=0, grpc_port=0, metrics_port=0, max_batch_size=8)
    try:
        server.start()
    except UserError as exc:  # e.g. a virtualenv not made from the system Python: the backend stub cannot start
        pytest.skip(str(exc))
    yield source, server
    server.stop()


def triton_model_copies() -> set[Path]:
    """The copies tritonserver makes of the models it loads (in /tmp, until it unloads them)."""
    return set(Path("/tmp").glob("folder*"))


def pixels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def test_answers_equal_onnx_runtime(served) -> None:
    source, server = served
    x = pixels(5)
    expected = RUNTIMES["ort-cpu"](source).run(x)
    got = server.client()(x)
    assert got.shape == (5, 10) and float(np.abs(got - expected).max()) <= TOLERANCE


def test_grpc_answers_like_onnx_runtime(served) -> None:
    """The gRPC endpoint serve prints, called the way a user's client would (tritonclient.grpc)."""
    import tritonclient.grpc as grpcclient

    source, server = served
    x = pixels(3, seed=5)
    client = grpcclient.InferenceServerClient(f"{HOST}:{server.grpc_port}")
    try:
        request = grpcclient.InferInput(source.input_name, list(x.shape), "UINT8")
        request.set_data_from_numpy(x)
        got = client.infer(server.model_name, [request]).as_numpy("logits")
    finally:
        client.close()
    expected = RUNTIMES["ort-cpu"](source).run(x)
    assert got.shape == (3, 10) and float(np.abs(got - expected).max()) <= TOLERANCE


@pytest.mark.parametrize("bad", ["shape", "dtype", "empty"])
def test_malformed_requests_get_errors_and_the_server_keeps_serving(served, bad: str) -> None:
    source, server = served
    client = server.client()
    request = {"shape": pixels(2)[:, :16], "dtype": pixels(2).astype(np.float32), "empty": pixels(0)}[bad]
    with pytest.raises(Exception) as error:
        client(request)
    assert "InferenceServerException" in type(error.value).__name__
    assert client(pixels(1)).shape == (1, 10)


def test_a_concurrent_burst_is_answered_in_full(served) -> None:
    source, server = served
    requests = [pixels(1 + i % 3, seed=i) for i in range(48)]
    expected = [RUNTIMES["ort-cpu"](source).run(r) for r in requests[:1]]

    def send(request: np.ndarray) -> np.ndarray:
        client = TritonClient(server.url, server.model_name, source.input_name)
        try:
            return client(request)
        finally:
            client.close()

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(send, requests))
    assert [a.shape[0] for a in answers] == [r.shape[0] for r in requests]  # none lost, none merged wrongly
    assert float(np.abs(answers[0] - expected[0]).max()) <= TOLERANCE
    ort = RUNTIMES["ort-cpu"](source)
    assert all(np.abs(a - ort.run(r)).max() <= TOLERANCE for a, r in zip(answers, requests, strict=True))


def test_bench_measures_the_served_model_under_concurrent_clients(served, tmp_path: Path) -> None:
    """bench's triton backend: its own server, batch and concurrency records, the same accuracy as ONNX Runtime,
    every request answered, and the server's processes counted in the peak memory."""
    source, _ = served
    config = BenchConfig(srcs=[str(source.path)], out=str(tmp_path / "bench"), backends="ort-cpu,triton", batch="1,4",
                         data="shapes", eval_size=64, warmup=1, min_iters=3, max_seconds=0.2, concurrency="1,4",
                         requests=16, quiet=True)
    records = bench(config).results["records"]
    by_backend = {backend: [r for r in records if r["backend"] == backend] for backend in ("ort-cpu", "triton")}
    assert [(r["mode"], r["batch"], r["concurrency"]) for r in by_backend["triton"]] == [
        ("batch", 1, 1), ("batch", 4, 1), ("concurrency", 1, 1), ("concurrency", 1, 4)]
    assert [r["iters"] for r in by_backend["triton"] if r["mode"] == "concurrency"] == [16, 16]  # none lost
    assert {r["top1"] for r in records} == {by_backend["ort-cpu"][0]["top1"]}
    assert all(r["agreement"] == 1.0 for r in by_backend["triton"])
    triton, ort = by_backend["triton"][0], by_backend["ort-cpu"][0]
    assert "server processes" in triton["memory_kind"] and triton["peak_memory_bytes"] > ort["peak_memory_bytes"]


def test_an_artifact_is_exported_once_into_the_cache_and_served_under_its_own_name(
        served, shapes_artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import vitcompress.serving as serving

    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    answered = []

    def on_ready(server: TritonServer) -> str:  # the model answers; then the user presses Ctrl-C
        answered.append((server.model_name, server.source, server.client()(x)))
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
        return "ready"

    monkeypatch.setattr(serving, "ready_message", on_ready)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # see the Ctrl-C test below
    try:
        for _ in range(2):  # the second run finds the export made by the first
            assert run_cli("serve", shapes_artifact, "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0",
                           "--cache-dir", tmp_path) == 0
    finally:
        signal.signal(signal.SIGINT, previous)
    out = capsys.readouterr().out
    exports = [p for p in (tmp_path / "exports").iterdir() if not p.name.startswith(".")]  # the build lock aside
    assert len(exports) == 1 and out.count(f"into {exports[0]}") == 1 and out.count(f"starting Triton with {exports[0]}") == 2
    assert json.loads((exports[0] / "verify.json").read_text())["onnxruntime"]["top1_agreement"] >= 0.99
    for name, source, logits in answered:
        assert name == shapes_artifact.name and source.path == exports[0]
        assert float(np.abs(logits - RUNTIMES["ort-cpu"](source).run(x)).max()) <= TOLERANCE


@SMALL_FILESYSTEMS
def test_a_container_s_small_dev_shm_is_named_with_its_fix(served) -> None:
    """Triton's Python backend needs /dev/shm, which a container keeps at 64 MB: the fix is the container's flag,
    not (as serve said before) the virtualenv's Python."""
    source, _ = served
    run = with_small_filesystem("serve", str(source.path), "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0")
    last = run.stderr.strip().splitlines()[-1]
    assert run.returncode == 2 and last.startswith("error: the Triton server did not start")
    assert "shared memory" in last and "--shm-size" in last and "system Python" not in last


def test_a_taken_port_is_one_line(served, capsys: pytest.CaptureFixture) -> None:
    source, server = served  # it holds its HTTP port
    assert run_cli("serve", source.path, "--http-port", server.http_port, "--grpc-port", "0", "--metrics-port", "0") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"port {server.http_port}" in err and "--http-port" in err


def test_foreground_server_answers_then_stops_on_ctrl_c(served) -> None:
    source, _ = served
    server = TritonServer(source, "fg", http_port=0, grpc_port=0, metrics_port=0, max_batch_size=8)
    answered = {}

    def on_ready() -> None:  # the model answers when this is called; then the user presses Ctrl-C
        answered["logits"] = server.client()(pixels(2))
        answered["message"] = ready_message(server)
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()

    # Ctrl-C as a terminal sends it. A shell starts background jobs with SIGINT ignored, and Python keeps it so:
    # without this, the suite run as such a job waits here forever
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        server.serve_until_stopped(on_ready)
    finally:
        signal.signal(signal.SIGINT, previous)
    expected = RUNTIMES["ort-cpu"](source).run(pixels(2))
    assert float(np.abs(answered["logits"] - expected).max()) <= TOLERANCE
    assert f"'{source.input_name}' UINT8 [N, 32, 32, 3]" in answered["message"] and "N up to 8" in answered["message"]
    assert not port_in_use(server.http_port)  # stopped: its port is free again


def test_a_server_stops_cleanly_while_a_client_keeps_its_connection_open(served) -> None:
    """A user's client holding a keep-alive connection must not leave Triton's model copy behind at stop."""
    source, _ = served
    copies_before = triton_model_copies()
    server = TritonServer(source, "held", http_port=0, grpc_port=0, metrics_port=0, max_batch_size=8)
    server.start()
    user_client = TritonClient(server.url, server.model_name, source.input_name)  # not the server's own
    try:
        assert user_client(pixels(1)).shape == (1, 10)
        every_server = memory.peak_rss_sum(memory.descendants_named("tritonserver"))  # the module's one too
        assert 0 < server.peak_rss() < every_server  # its own processes only
        server.stop()
    finally:
        user_client.close()
    assert triton_model_copies() == copies_before
    assert not port_in_use(server.http_port)  # stopped; the connection it cut waits in TIME_WAIT, which does not count
    again = TritonServer(source, "held", http_port=server.http_port, grpc_port=0, metrics_port=0, max_batch_size=8)
    again.start()  # `serve` at once on the same port, as a user restarting it would
    try:
        assert again.client()(pixels(1)).shape == (1, 10)
    finally:
        again.stop()


def test_an_onnx_export_is_served_under_its_directory_name_and_the_default_batch(served) -> None:
    source, _ = served
    assert served_model_name("", source) == "pixels" and served_max_batch_size(0, source) == DEFAULT_MAX_BATCH_SIZE


def test_an_engine_is_served_with_batches_its_profile_takes(served) -> None:
    engine = dataclasses.replace(served[0], kind="engine", max_batch=8)  # as `export --format tensorrt --batch 1,4,8`
    assert served_max_batch_size(0, engine) == 8 and served_max_batch_size(4, engine) == 4
    with pytest.raises(UserError, match="above the engine's profile maximum 8"):
        served_max_batch_size(16, engine)


def test_the_triton_backend_is_sized_for_the_batches_it_is_sent(served) -> None:
    """eval (256 images per call by default), predict and bench start their own server through the `triton`
    backend: it must take their batches, not refuse those above serve's default of 32, and stop when done."""
    source, _ = served
    copies_before = triton_model_copies()
    through_triton = evaluate_artifact(str(source.path), "shapes", backend="triton", quiet=True)
    assert through_triton["samples"] == 1000
    assert through_triton["top1"] == pytest.approx(evaluate_artifact(str(source.path), "shapes", quiet=True)["top1"])
    images = [Image.fromarray(image) for image in pixels(DEFAULT_MAX_BATCH_SIZE + 8, seed=3)]
    with Classifier(source.path, backend="triton", batch_size=len(images)) as classify:
        assert classify.batch_size == classify.runtime.max_batch == len(images)
        server = classify.runtime.server
        np.testing.assert_allclose(classify.probabilities(images), Classifier(source.path).probabilities(images),
                                   atol=TOLERANCE)
    assert server._triton is None  # closed with the classifier, not left to the interpreter's exit
    assert triton_model_copies() == copies_before  # stopped cleanly: a killed server leaves its model copy


def test_an_openvino_ir_is_served_through_openvino(served, shapes_artifact: Path, tmp_path: Path) -> None:
    """serve hosts an IR export as it hosts ONNX: the openvino runtime behind PyTriton's Python backend."""
    ir = open_source(export(ExportConfig(src=str(shapes_artifact), out=str(tmp_path / "ir"), format="openvino",
                                         verify_size=16, quiet=True)).path)
    server = TritonServer(ir, "ir", http_port=0, grpc_port=0, metrics_port=0, max_batch_size=8)
    server.start()
    try:
        x = np.random.default_rng(1).standard_normal((3, 3, 32, 32)).astype(np.float32)
        assert server.runtime_name == "openvino"
        assert float(np.abs(server.client()(x) - RUNTIMES["openvino"](ir).run(x)).max()) <= TOLERANCE
    finally:
        server.stop()
