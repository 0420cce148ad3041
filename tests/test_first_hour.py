"""What a new user hit in their first hour: paths recorded as typed, a prune that removed nothing, --top-k 0,
silent PTQ, progress bars filling logs, and bench comparing one runtime's row with another's."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

import pytest

from tests.conftest import REPO, TINY, run_cli, write_image_folder
from vitcompress.bench_report import add_speedups, report_table
from vitcompress.timing import TimingMethod, compare, local_timer


def _one_line_error(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: "), err
    return err


def test_artifacts_record_absolute_data_paths_and_name_the_parent_s_data_when_it_moved(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    work = tmp_path / "work"
    write_image_folder(work / "images", per_class=8)
    monkeypatch.chdir(work)
    assert run_cli("finetune", *TINY, "--batch-size", "8", "--data", "folder:images", "--epochs", "1", "--out", "runs/a") == 0
    meta = json.loads((work / "runs" / "a" / "vitcompress.json").read_text())
    assert meta["data"]["spec"] == meta["recipe"]["data"] == f"folder:{work / 'images'}"

    monkeypatch.chdir(tmp_path)  # another directory: the recorded data is still found
    prune = ("prune", "work/runs/a", "--heads", "0.5", "--criterion", "taylor", "--dry-run")
    assert run_cli(*prune) == 0
    capsys.readouterr()
    (work / "images").rename(tmp_path / "moved")
    assert run_cli(*prune) == 2
    err = _one_line_error(capsys)
    assert f"work/runs/a was trained on folder:{work / 'images'}, which is not there any more" in err
    assert "pass --data folder:PATH" in err
    assert run_cli(*prune, "--data", "folder:moved") == 0


def test_prune_with_nothing_to_remove_is_refused_before_anything_loads(capsys: pytest.CaptureFixture) -> None:
    assert run_cli("prune", "/no/such/artifact", "--out", "/no/such/out") == 2  # the ratios are checked first
    err = _one_line_error(capsys)
    assert "neither --heads nor --mlp" in err and "--heads 0.5" in err


def test_predict_refuses_top_k_0_and_shows_every_class_for_a_larger_k(
        shapes_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    image = next((write_image_folder(tmp_path / "images") / "test").rglob("*.png"))
    assert run_cli("predict", shapes_artifact, image, "--top-k", "0") == 2
    assert "--top-k 0 must be at least 1" in _one_line_error(capsys)
    assert run_cli("predict", shapes_artifact, image, "--top-k", "50", "--json") == 0
    captured = capsys.readouterr()
    assert len(json.loads(captured.out)["predictions"][0]["top"]) == 10
    assert "--top-k 50 is more than the model's 10 classes" in captured.err


def _cli(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "vitcompress", *map(str, args)]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def test_a_redirected_log_gets_the_epoch_lines_and_no_progress_bars(tmp_path: Path) -> None:
    args = [a for a in TINY if a != "--quiet"]
    run = subprocess.run(_cli("finetune", *args, "--data", "shapes:40", "--epochs", "2", "--out", tmp_path / "a"),
                         capture_output=True, text=True, env=_env(), check=True)
    assert "epoch 1/2: loss" in run.stdout and "epoch 2/2: loss" in run.stdout
    assert "\r" not in run.stderr and "batch/s" not in run.stderr and "it/s" not in run.stderr


def test_ptq_shows_progress_on_a_terminal(shapes_artifact: Path, tmp_path: Path) -> None:
    """`qat --epochs 0` calibrates and scores three times: on a terminal each gets a bar (it printed nothing for
    minutes on CIFAR-10)."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # a window: tqdm sizes its bars by it
    proc = subprocess.Popen(_cli("qat", shapes_artifact, "--epochs", "0", "--calib-size", "128", "--out", tmp_path / "q"),
                            stdout=subprocess.DEVNULL, stderr=terminal, env=_env())
    os.close(terminal)
    seen = bytearray()

    def read() -> None:
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the terminal closed with the process
                return
            if not chunk:
                return
            seen.extend(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    assert proc.wait(timeout=300) == 0
    reader.join(timeout=10)
    os.close(controller)
    text = seen.decode(errors="replace")
    for label in ("scoring FP32", "calibrating", "scoring PTQ"):
        assert label in text, label


def _record(variant: str, backend: str, p50: float, baseline: bool) -> dict:
    return {"variant": variant, "backend": backend, "precision": "fp32", "mode": "batch", "batch": 8, "concurrency": 1,
            "p50_ms": p50, "p99_ms": p50, "throughput_ips": 8000 / p50, "file_bytes": 1, "baseline": baseline}


def test_every_row_is_compared_with_the_baseline_on_its_own_backend() -> None:
    records = [_record("fp32", "ort-cpu", 1.0, True), _record("fp32", "triton", 7.0, True),
               _record("int8", "ort-cpu", 0.5, False), _record("int8", "triton", 3.5, False),
               _record("int8", "openvino", 0.25, False)]
    clock = [0.0]

    def model(ms: float):
        def run() -> None:
            clock[0] += ms / 1000

        return local_timer({8: run}, lambda: clock[0])

    timers = {f"{r['variant']} on {r['backend']}": model(r["p50_ms"]) for r in records}
    timing = compare(timers, ["fp32 on ort-cpu", "fp32 on triton"], [8], TimingMethod(rounds=3))
    results = {"records": records, "timing": timing}
    add_speedups(results)
    assert [r["speedup"] for r in records] == [1.0, 1.0, 2.0, 2.0, 4.0]  # the baseline on Triton read 0.14x before
    assert records[3]["speedup_against"] == "fp32 on triton"
    assert [r["speedup_other_backend"] for r in records] == [False, False, False, False, True]
    assert "4.00x*" in report_table(results)  # no baseline row on that backend: marked, compared with its first
