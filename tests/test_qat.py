"""qat: INT8 fake quantization that stays accurate, is stored as plain data, and reloads exactly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import run_cli
from vitcompress.artifact import load_model
from vitcompress.compress.qat import qat
from vitcompress.config import CALIBRATION_METHODS, QatConfig, TrainConfig
from vitcompress.report import qat_summary

# On `shapes` (1,000 test images) INT8 may move top-1 by a few images; the tests allow 3 points.
TOLERANCE = 0.03


def logits(model: torch.nn.Module) -> torch.Tensor:
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return model.eval()(x)


@pytest.fixture(scope="module")
def qat_artifact(shapes_artifact: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("qat") / "int8"
    train = TrainConfig(epochs=1, batch_size=64, lr=2e-5, warmup_epochs=0, quiet=True)
    return qat(QatConfig(src=str(shapes_artifact), out=str(out), calib_size=256, train=train))


def test_qat_artifact_reloads_with_the_same_logits(qat_artifact) -> None:
    reloaded, meta = load_model(qat_artifact.path)
    torch.testing.assert_close(logits(reloaded), logits(qat_artifact.model), atol=0, rtol=0)
    assert meta.quantization["method"] == "max"
    assert meta.quantization["skipped_layers"] == ["patch_embed.proj", "head"]
    assert len(meta.quantization["quantized_layers"]) == 8  # qkv, proj, fc1, fc2 in 2 blocks


def test_ranges_are_plain_tensors_and_no_pickle(qat_artifact) -> None:
    state = load_file(str(qat_artifact.path / "model.safetensors"))
    amax = {k: v for k, v in state.items() if k.endswith("_amax")}
    assert amax["blocks.0.attn.qkv.weight_quantizer._amax"].shape == (192, 1)  # one range per output channel
    assert amax["blocks.0.attn.qkv.input_quantizer._amax"].numel() == 1  # one range per tensor
    assert not any(k.startswith("patch_embed") and k.endswith("_amax") for k in state)
    assert sorted(p.name for p in qat_artifact.path.iterdir()) == ["model.safetensors", "train_log.csv", "vitcompress.json"]
    json.loads((qat_artifact.path / "vitcompress.json").read_text())  # the config is JSON


def test_int8_is_really_applied(qat_artifact, shapes_artifact: Path) -> None:
    fp32, _ = load_model(shapes_artifact)
    int8, _ = load_model(qat_artifact.path)
    w = int8.blocks[0].mlp.fc1
    quantized_w = w.weight_quantizer(w.weight)
    levels = (quantized_w / (w.weight_quantizer.amax / 127)).detach()
    torch.testing.assert_close(levels, levels.round(), atol=1e-3, rtol=0)  # weights sit on the INT8 grid
    assert levels.round().min() >= -128 and levels.round().max() <= 127
    assert not torch.equal(logits(int8), logits(fp32))


def test_ptq_and_qat_accuracy_stay_close_to_fp32(qat_artifact) -> None:
    m = qat_artifact.meta.metrics["qat"]
    assert m["top1_fp32"] > 0.3
    assert abs(m["top1_ptq"] - m["top1_fp32"]) <= TOLERANCE
    assert m["top1_qat"] >= m["top1_fp32"] - TOLERANCE
    assert qat_artifact.meta.metrics["top1"] == m["top1_qat"]
    epochs = f"{m['epochs']} epoch{'' if m['epochs'] == 1 else 's'}"  # "1 epoch", not "1 epochs"
    assert f"INT8 QAT ({epochs})" in qat_summary(qat_artifact.path, qat_artifact.meta)


@pytest.mark.parametrize("method", CALIBRATION_METHODS)
def test_each_calibration_method(tmp_path: Path, shapes_artifact: Path, method: str) -> None:
    result = qat(QatConfig(src=str(shapes_artifact), out=str(tmp_path / method), calib_method=method, calib_size=128,
                           train=TrainConfig(epochs=0, quiet=True)))
    m = result.meta.metrics["qat"]
    assert m["top1_qat"] is None and abs(m["top1_ptq"] - m["top1_fp32"]) <= TOLERANCE
    assert f"INT8 PTQ ({method} calibration)" in qat_summary(result.path, result.meta)
    assert "INT8 QAT" not in qat_summary(result.path, result.meta)  # PTQ only: no empty QAT row
    reloaded, _ = load_model(result.path)
    torch.testing.assert_close(logits(reloaded), logits(result.model), atol=0, rtol=0)


def test_pruned_artifact_quantizes_and_reloads(tmp_path: Path, shapes_artifact: Path) -> None:
    assert run_cli("prune", shapes_artifact, "--heads", "0.5", "--mlp", "0.25", "--finetune-epochs", "0", "--quiet",
                   "--out", tmp_path / "pruned") == 0
    result = qat(QatConfig(src=str(tmp_path / "pruned"), out=str(tmp_path / "pq"), calib_size=128,
                           train=TrainConfig(epochs=0, quiet=True)))
    reloaded, meta = load_model(result.path)
    assert meta.heads_per_block == [1, 1] and meta.mlp_per_block == [192, 192]
    torch.testing.assert_close(logits(reloaded), logits(result.model), atol=0, rtol=0)


def test_sensitivity_ranks_groups_and_writes_nothing(tmp_path: Path, shapes_artifact: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    assert run_cli("qat", shapes_artifact, "--sensitivity", "--calib-size", "128", "--quiet",
                   "--sensitivity-threshold", "-1") == 0
    out = capsys.readouterr().out
    for group in ("patch_embed", "blocks.0.attn", "blocks.1.mlp", "head"):
        assert group in out
    assert "--skip 'patch_embed*," in out or "--skip '" in out  # threshold -1: every group is suggested
    assert not list(tmp_path.iterdir())


def test_info_and_eval_on_a_quantized_artifact(qat_artifact, capsys: pytest.CaptureFixture) -> None:
    assert run_cli("info", qat_artifact.path) == 0
    assert "INT8 (int8 per output channel" in capsys.readouterr().out
    assert run_cli("eval", qat_artifact.path, "--data", "shapes", "--json", "--quiet") == 0
    assert json.loads(capsys.readouterr().out)["top1"] == qat_artifact.meta.metrics["top1"]


def test_modelopt_is_imported_only_when_needed() -> None:
    code = ("import sys; from vitcompress.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "import vitcompress.compress.prune\n"
            "print('modelopt' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("False")


def test_mse_range_minimises_the_quantization_error() -> None:
    from vitcompress.compress.calibration import mse_amax

    values = torch.randn(200_000, generator=torch.Generator().manual_seed(0)).abs() ** 3  # heavy tail
    counts, edges = torch.histogram(values, bins=2048, range=(0.0, float(values.max())))
    amax = float(mse_amax(counts, edges, num_bits=8))

    def error(a: float) -> float:
        scale = 127 / a
        return float(((torch.clamp(torch.round(values * scale), -128, 127) / scale - values) ** 2).mean())

    assert amax < float(values.max())  # the tail is clipped
    assert error(amax) < error(float(values.max())) and error(amax) < error(amax / 2) and error(amax) < error(amax * 1.5)


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "beitv2_base_patch16_224"])
def test_attention_matmuls_quantize_and_reload(tmp_path: Path, name: str) -> None:
    from tests.test_prune import make_artifact

    src = make_artifact(tmp_path, name)
    assert run_cli("prune", src, "--heads", "0.5", "--finetune-epochs", "0", "--quiet", "--out", tmp_path / "p") == 0
    result = qat(QatConfig(src=str(tmp_path / "p"), out=str(tmp_path / "q"), calib_size=64, quantize_attention=True,
                           train=TrainConfig(epochs=0, quiet=True)))
    state = load_file(str(result.path / "model.safetensors"))
    for block in range(2):
        for part in "qkv":
            assert state[f"blocks.{block}.attn.{part}_bmm_quantizer._amax"].numel() == 1
    reloaded, meta = load_model(result.path)
    assert meta.quantization["attention_matmuls"] == "int8 q/k/v per tensor"
    torch.testing.assert_close(logits(reloaded), logits(result.model), atol=0, rtol=0)
    with_bmm = logits(reloaded)
    for block in reloaded.blocks:
        for part in "qkv":
            getattr(block.attn, f"{part}_bmm_quantizer").disable()
    assert not torch.equal(logits(reloaded), with_bmm)  # the attention quantizers really act


def test_an_interrupted_qat_resumes(tmp_path: Path, shapes_artifact: Path) -> None:
    import os
    import signal
    import time

    from tests.conftest import REPO

    out = tmp_path / "int8"
    checkpoint = tmp_path / "int8.tmp-run" / "last.ckpt"
    args = ["qat", str(shapes_artifact), "--epochs", "3", "--calib-size", "128", "--batch-size", "64", "--quiet",
            "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "vitcompress", *args], env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert checkpoint.exists() and not out.exists()
    assert run_cli(*args, "--resume", "--calib-method", "entropy") == 2  # the ranges came from max calibration
    assert checkpoint.exists()
    assert run_cli(*args, "--resume") == 0
    meta = json.loads((out / "vitcompress.json").read_text())
    assert meta["metrics"]["qat"]["top1_ptq"] is not None and meta["metrics"]["qat"]["epochs"] == 3
    assert len((out / "train_log.csv").read_text().splitlines()) == 1 + 3  # each epoch once
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors", "train_log.csv", "vitcompress.json"]
    reloaded, _ = load_model(out)  # the ranges came back with the checkpoint
    assert torch.isfinite(logits(reloaded)).all()
