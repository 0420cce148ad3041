"""The command line lists its commands and shows every option with its default."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from vitcompress.cli import main
from vitcompress.cliargs import dataclass_from_args
from vitcompress.config import BenchConfig, ExportConfig, FinetuneConfig, PruneConfig, QatConfig, ServeConfig
from vitcompress.errors import UserError

FINETUNE_FLAGS = ["--model", "--data", "--epochs", "--out", "--img-size", "--patch-size", "--model-kwargs",
                  "--pretrained", "--init-checkpoint", "--data-dir", "--download", "--resume", "--force",
                  "--quiet", "--lr", "--weight-decay", "--warmup-epochs", "--layer-decay", "--freeze-blocks",
                  "--head-only", "--drop-path", "--accum-steps", "--amp", "--clip-grad", "--ema", "--mixup",
                  "--cutmix", "--mixup-prob", "--label-smoothing", "--auto-augment", "--color-jitter", "--crop", "--hflip",
                  "--random-erase", "--random-erase-mode",
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


@pytest.mark.parametrize("argv", [
    ["bench", "a", "b c", "--out", "o", "--backends", "ort-cpu,triton", "--threads", "2", "--quiet"],
    ["finetune", "--model", "m", "--data", "shapes:20", "--out", "o", "--epochs", "3", "--no-hflip", "--compile",
     "--compile-mode", "reduce-overhead",
     "--model-kwargs", "depth=2,embed_dim=64", "--lr", "0.002"],
    ["qat", "src", "--out", "o", "--epochs", "0", "--skip", "head*"],
])
def test_command_line_rebuilds_the_same_config(argv: list[str]) -> None:
    import shlex

    from vitcompress.cli import _parser
    from vitcompress.cliargs import command_line, dataclass_from_args
    from vitcompress.config import BenchConfig, FinetuneConfig, QatConfig

    cls, positional = {"bench": (BenchConfig, ("srcs",)), "finetune": (FinetuneConfig, ()),
                       "qat": (QatConfig, ("src",))}[argv[0]]
    cfg = dataclass_from_args(cls, _parser().parse_args(argv))
    line = command_line(argv[0], cfg, positional)
    assert line.startswith(f"vitcompress {argv[0]} ")
    assert dataclass_from_args(cls, _parser().parse_args(shlex.split(line)[1:])) == cfg


@pytest.mark.parametrize("argv, advice", [
    (["finetune", "--model", "m", "--data", "shapes", "--epochs", "1", "--out", "o"], "--resume"),
    (["pipeline", "--out", "o"], "run the same command again"),
    (["export", "src", "--out", "o"], "nothing was written"),
])
def test_ctrl_c_says_what_to_do_next(argv: list[str], advice: str, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture) -> None:
    from vitcompress import cli

    def interrupted(args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_run", interrupted)
    assert cli.main(argv) == 130
    err = capsys.readouterr().err.strip()
    assert err.startswith("interrupted; ") and advice in err and err.count("\n") == 0


def _commands() -> dict[str, argparse.ArgumentParser]:
    from vitcompress.cli import _parser

    return next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_every_command_has_a_description_and_names_its_positionals_alike() -> None:
    for name, parser in _commands().items():
        assert parser.description, f"{name} --help has no description"
        for action in parser._actions:
            if not action.option_strings and not isinstance(action, argparse._HelpAction):
                assert action.metavar and action.metavar.isupper(), f"{name}: positional {action.dest} shows as {action.metavar}"
                if action.dest in ("src", "srcs"):
                    assert action.metavar == "SRC", name


def test_every_option_with_a_value_says_its_default_or_that_it_is_required() -> None:
    """0, None and "" defaults too: their help says what they mean (e.g. "(0: all of them)")."""
    for name, parser in _commands().items():
        formatter = parser._get_formatter()
        for action in parser._actions:
            if not action.option_strings or action.nargs == 0 or isinstance(action, argparse._HelpAction):
                continue
            shown = formatter._expand_help(action) if action.help else ""
            assert action.required or "default" in shown or "required" in shown, f"{name} {action.option_strings[0]}: {shown!r}"


LIST_OPTIONS = {"backends"}  # comma lists: their help names every choice, argparse cannot check them


@pytest.mark.parametrize(("command", "cls", "argv"), [
    ("finetune", FinetuneConfig, ["--model", "m", "--data", "shapes", "--out", "o", "--epochs", "1"]),
    ("prune", PruneConfig, ["s", "--out", "o", "--heads", "0.5"]),
    ("qat", QatConfig, ["s", "--out", "o"]),
    ("export", ExportConfig, ["s", "--out", "o"]),
    ("bench", BenchConfig, ["s", "--out", "o"]),
    ("serve", ServeConfig, ["s"]),
])
def test_every_option_with_a_fixed_set_of_values_lists_them(command: str, cls: type, argv: list[str]) -> None:
    """An option whose config refuses unknown values (`'x' is unknown`) is one whose --help must list the choices."""
    parser = _commands()[command]
    for action in parser._actions:
        if not action.option_strings or action.type is not str or action.choices or action.dest in LIST_OPTIONS:
            continue
        args = parser.parse_args(argv)
        setattr(args, action.dest, "bogus")
        try:
            dataclass_from_args(cls, args).validate()
        except UserError as exc:
            assert "'bogus' is unknown" not in exc.problem, f"{command} {action.option_strings[0]} lists no choices"
