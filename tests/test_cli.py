"""The command line lists its commands and shows every option with its default."""

from __future__ import annotations

import subprocess
import sys

import pytest

from vitcompress.cli import main

FINETUNE_FLAGS = ["--model", "--data", "--epochs", "--out", "--img-size", "--patch-size", "--model-kwargs",
                  "--pretrained", "--init-checkpoint", "--data-dir", "--download", "--resume", "--force",
                  "--quiet", "--lr", "--weight-decay", "--warmup-epochs", "--layer-decay", "--freeze-blocks",
                  "--head-only", "--drop-path", "--accum-steps", "--amp", "--clip-grad", "--ema", "--mixup",
                  "--cutmix", "--label-smoothing", "--auto-augment", "--color-jitter", "--crop", "--hflip",
                  "--patience", "--val-split", "--seed", "--device"]


def test_top_level_help_lists_subcommands() -> None:
    out = subprocess.run([sys.executable, "-m", "vitcompress", "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("finetune", "eval", "info"):
        assert command in out


def test_finetune_help_shows_every_option_with_default(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["finetune", "--help"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for flag in FINETUNE_FLAGS:
        assert flag in out, flag
    assert "(default: 0.001)" in out  # --lr
    assert "(default: 0.1)" in out  # --label-smoothing / --val-split


@pytest.mark.parametrize("missing", ["--model", "--data", "--epochs", "--out"])
def test_required_options(capsys: pytest.CaptureFixture, missing: str) -> None:
    given = {"--model": "vit_tiny_patch16_224", "--data": "shapes", "--epochs": "1", "--out": "x"}
    argv = ["finetune", *[w for flag, value in given.items() if flag != missing for w in (flag, value)]]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert missing in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--debug", "info", "/no/such/artifact"], ["info", "/no/such/artifact", "--debug"]])
def test_debug_shows_the_traceback(capsys: pytest.CaptureFixture, argv: list[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error: ")
