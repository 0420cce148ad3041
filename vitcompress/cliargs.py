"""argparse options generated from the stages' config dataclasses, so the CLI and API never drift."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import types
import typing
from typing import Any


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` only where there is a default worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_ = action.help or ""
        # `in (None, "", False)` would also take 0 for False: a 0 default is shown (the help says what 0 means)
        if action.required or action.default is None or action.default is False or action.default == "" or "default" in help_:
            return help_
        return super()._get_help_string(action)


def _base_type(hint: Any) -> type:
    """``int | None`` -> ``int``; plain types pass through."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, help_text: dict[str, str],
                       choices: dict[str, tuple] | None = None, positional: tuple[str, ...] = (),
                       required: tuple[str, ...] = (), skip: tuple[str, ...] = (), defaults: Any = None) -> None:
    """Add one option per field of ``cls`` (recursing into nested config dataclasses).

    Fields without a default are required options; ``required`` names more (defaults kept for the API).
    ``skip`` names fields the command sets itself. Defaults come from ``defaults`` (an instance of
    ``cls``) when given, so a stage can ship its own defaults for a shared config (e.g. a small LR).
    """
    choices = choices or {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        hint = _base_type(hints[f.name])
        if dataclasses.is_dataclass(hint):
            nested = getattr(defaults, f.name) if defaults is not None else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            add_dataclass_args(parser, hint, help_text, choices, required=required, skip=skip, defaults=nested)
            continue
        default = getattr(defaults, f.name) if defaults is not None else f.default
        help_ = help_text.get(f.name, "")
        if f.name in positional:
            many = typing.get_origin(hint) is list  # e.g. bench's SRC...
            parser.add_argument(f.name, help=help_, nargs="+" if many else None, metavar=f.name.upper().rstrip("S"))
            continue
        flag = "--" + f.name.replace("_", "-")
        is_required = f.name in required or (f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
        if hint is bool:
            action = argparse.BooleanOptionalAction if default else "store_true"
            parser.add_argument(flag, dest=f.name, action=action, default=default, help=help_)
        else:
            parser.add_argument(flag, dest=f.name, type=hint, required=is_required, choices=choices.get(f.name),
                                default=None if is_required else default,
                                help=help_ + (" (required)" if is_required else ""))


def dataclass_from_args(cls: type, namespace: argparse.Namespace) -> Any:
    """Build ``cls`` (and its nested config dataclasses) from parsed options; skipped fields keep their defaults."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        hint = _base_type(hints[f.name])
        if dataclasses.is_dataclass(hint):
            values[f.name] = dataclass_from_args(hint, namespace)
        elif hasattr(namespace, f.name):
            values[f.name] = getattr(namespace, f.name)
    return cls(**values)


def command_line(command: str, cfg: Any, positional: tuple[str, ...] = (), skip: tuple[str, ...] = ()) -> str:
    """The ``vitcompress`` line that builds ``cfg``: its positional fields, then each option that is not the default.

    The inverse of ``dataclass_from_args`` (``skip``: the fields the command sets itself), so a record made
    from the Python API still names a command to rerun.
    """
    words = ["vitcompress", command]
    for name in positional:
        value = getattr(cfg, name)
        words += [str(v) for v in value] if isinstance(value, list) else [str(value)]
    return shlex.join(words + _options(cfg, positional + skip))


def _options(cfg: Any, not_options: tuple[str, ...]) -> list[str]:
    words: list[str] = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            words += _options(value, not_options)
            continue
        if f.name in not_options:
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if value == default or value is None:
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            words.append(flag if value else "--no-" + flag[2:])
        else:
            words += [flag, str(value)]
    return words
