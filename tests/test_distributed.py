"""torchrun with two CPU processes (gloo): DDP trains, rank 0 alone writes the artifact."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY, run_cli
from vitcompress.artifact import read_meta


def test_torchrun_two_processes(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "vitcompress", "finetune", *TINY, "--data", "shapes", "--epochs", "8", "--batch-size", "16",
           "--accum-steps", "2", "--ema", "--ema-decay", "0.9",
           "--time-budget", "900",  # never binding here: rank 0's plan is broadcast after every epoch
           "--device", "cpu", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    meta = read_meta(out)
    assert meta.metrics["world_size"] == 2
    assert meta.metrics["epochs_run"] == 8 and meta.metrics["time_budget"] == 900
    assert meta.metrics["samples"] == 1000  # every test image scored once across the two shards
    assert meta.metrics["top1"] > 0.3, meta.metrics["top1"]
    assert result.stdout.count("artifact:") == 1  # one summary, from rank 0
    assert sorted(p.name for p in out.iterdir()) == ["confusion.png", "model.safetensors", "train_log.csv", "vitcompress.json"]


@pytest.mark.parametrize("command", ["prune", "qat", "pipeline"])
def test_one_process_stages_refuse_torchrun(tmp_path: Path, shapes_artifact: Path, command: str,
                                            capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under torchrun every process would write the same output: prune, qat and pipeline say so instead."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    source = [] if command == "pipeline" else [shapes_artifact]  # pipeline: the built-in recipe
    assert run_cli(command, *source, "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "torchrun started 2" in err and "without torchrun" in err
    assert not (tmp_path / "out").exists()
