"""A killed run leaves no artifact, and --resume finishes it with the same weights as an unbroken run."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.conftest import TINY, run_cli

ARGS = [*TINY, "--data", "shapes", "--epochs", "4", "--mixup", "0.2", "--ema", "--ema-decay", "0.9",
        "--color-jitter", "0.2"]


def _cli(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "vitcompress", "finetune", *map(str, args)]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}  # same thread count in both runs: bitwise-equal results


def _epochs_logged(log: Path) -> int:
    try:
        return len(list(csv.DictReader(open(log))))
    except FileNotFoundError:
        return 0


def test_kill_then_resume_matches_unbroken_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    reference = tmp_path / "reference"
    subprocess.run(_cli(*ARGS, "--out", reference), check=True, env=_env())

    out = tmp_path / "resumed"
    staging = tmp_path / "resumed.tmp-run"
    proc = subprocess.Popen(_cli(*ARGS, "--out", out), env=_env())
    deadline = time.time() + 300
    while _epochs_logged(staging / "train_log.csv") < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists(), "a killed run must not leave an artifact"
    assert (staging / "last.ckpt").is_file()

    # the checkpoint would go on with its own schedule while the artifact recorded --lr 0.01: refused, nothing lost
    assert run_cli("finetune", *ARGS, "--out", out, "--resume", "--lr", "0.01", "--epochs", "5") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--lr 0.01 (the run: 0.003)" in err and "--epochs 5 (the run: 4)" in err
    assert (staging / "last.ckpt").is_file()
    subprocess.run(_cli(*ARGS, "--out", out, "--resume", "--workers", "1"), check=True, env=_env())  # how, not what
    assert out.is_dir() and not staging.exists()
    want, got = load_file(str(reference / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert want.keys() == got.keys()
    for name in want:
        assert (want[name] == got[name]).all(), name
    rows = list(csv.DictReader(open(out / "train_log.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]


def test_a_live_run_is_neither_resumed_nor_replaced_by_a_second_command(tmp_path: Path) -> None:
    out, staging = tmp_path / "live", tmp_path / "live.tmp-run"
    proc = subprocess.Popen(_cli(*TINY, "--data", "shapes", "--epochs", "200", "--out", out), env=_env())
    try:
        deadline = time.time() + 300
        while _epochs_logged(staging / "train_log.csv") < 1 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the first run ended before the second could meet it"
        for flag in ("--resume", "--force"):
            second = subprocess.run(_cli(*TINY, "--data", "shapes", "--epochs", "2", "--out", out, flag),
                                    env=_env(), capture_output=True, text=True)
            assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr
            assert f"another vitcompress run is writing {out} now" in second.stderr
            assert (staging / "last.ckpt").is_file() and proc.poll() is None  # the live run's files are untouched
    finally:
        proc.kill()
        proc.wait()
