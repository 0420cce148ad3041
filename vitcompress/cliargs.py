"""argparse options generated from the stages' config dataclasses, so the CLI and API never drift."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any


def _base_type(hint: Any) -> type:
    """``int | None`` -> ``int``; plain types pass through."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, help_text: dict[str, str],
                       choices: dict[str, tuple] | None = None, positional: tuple[str, ...] = ()) -> None:
    """Add one option per field of ``cls`` (recursing into nested config dataclasses)."""
    choices = choices or {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = _base_type(hints[f.name])
        if dataclasses.is_dataclass(hint):
            add_dataclass_args(parser, hint, help_text, choices)
            continue
        help_ = help_text.get(f.name, "")
        if f.name in positional:
            parser.add_argument(f.name, help=help_)
            continue
        flag = "--" + f.name.replace("_", "-")
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if hint is bool:
            action = argparse.BooleanOptionalAction if f.default else "store_true"
            parser.add_argument(flag, dest=f.name, action=action, default=f.default, help=help_)
        else:
            parser.add_argument(flag, dest=f.name, type=hint, required=required, choices=choices.get(f.name),
                                default=None if required else f.default, help=help_ + (" (required)" if required else ""))


def dataclass_from_args(cls: type, namespace: argparse.Namespace) -> Any:
    """Build ``cls`` (and its nested config dataclasses) from parsed options."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        hint = _base_type(hints[f.name])
        values[f.name] = dataclass_from_args(hint, namespace) if dataclasses.is_dataclass(hint) else getattr(namespace, f.name)
    return cls(**values)
