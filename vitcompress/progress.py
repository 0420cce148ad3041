"""Progress bars, drawn on a terminal only: a log that stderr is redirected into gets the per-epoch lines, not the
bars' redraws (``make demo > log`` wrote 262 KB of them)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tqdm import tqdm


def progress_bar(iterable: Iterable[Any] | None = None, desc: str = "", total: int | None = None, unit: str = "batch",
                 quiet: bool = False, leave: bool = False) -> tqdm:
    """tqdm over ``iterable``: off with ``quiet`` (``--quiet``) and wherever stderr is not a terminal."""
    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=leave, dynamic_ncols=True,
                disable=True if quiet else None)  # None: tqdm's own "disable on a non-TTY"
