"""argparse options generated from the stages' config dataclasses, so the CLI and API never drift."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` only where there is a default worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_ = action.help or ""
        if action.required or action.default in (None, "", False) or "default" in help_:
            return help_
        return super()._get_help_string(action)


def _base_type(hint: Any) -> type:
    """``int | None`` -> ``int``; plain types pass through."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, help_text: dict[str, str],
                       choices: dict[str, tuple] | None = None, positional: tuple[str, ...] = (),
                       required: tuple[str, ...] = ()) -> None:
    """Add one option per field of ``cls`` (recursing into nested config dataclasses).

    Fields without a default are required options; ``required`` names more (defaults kept for the API).
    """
    choices = choices or {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = _base_type(hints[f.name])
        if dataclasses.is_dataclass(hint):
            add_dataclass_args(parser, hint, help_text, choices, required=required)
            continue
        help_ = help_text.get(f.name, "")
        if f.name in positional:
            parser.add_argument(f.name, help=help_)
            continue
        flag = "--" + f.name.replace("_", "-")
        is_required = f.name in required or (f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
        if hint is bool:
            action = argparse.BooleanOptionalAction if f.default else "store_true"
            parser.add_argument(flag, dest=f.name, action=action, default=f.default, help=help_)
        else:
            parser.add_argument(flag, dest=f.name, type=hint, required=is_required, choices=choices.get(f.name),
                                default=None if is_required else f.default,
                                help=help_ + (" (required)" if is_required else ""))


def dataclass_from_args(cls: type, namespace: argparse.Namespace) -> Any:
    """Build ``cls`` (and its nested config dataclasses) from parsed options."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        hint = _base_type(hints[f.name])
        values[f.name] = dataclass_from_args(hint, namespace) if dataclasses.is_dataclass(hint) else getattr(namespace, f.name)
    return cls(**values)
