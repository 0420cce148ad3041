"""Resident memory of processes, from Linux's /proc (``None`` where there is none).

bench reports what a variant itself takes: the peak RSS its measurement adds to a process (it runs each variant
in a fresh one, so nothing an earlier variant allocated or left to the allocator counts), or, for a Triton
server, the peak RSS of the server's own processes.
"""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")


def _status_bytes(pid: int | str, field: str) -> int | None:
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def current_rss() -> int | None:
    return _status_bytes("self", "VmRSS")


def peak_rss(pid: int | str = "self") -> int | None:
    return _status_bytes(pid, "VmHWM")


def reset_peak_rss() -> None:
    """Set this process's peak RSS (VmHWM) to its current RSS: writing 5 to clear_refs does that on Linux."""
    try:
        (PROC / "self" / "clear_refs").write_text("5")
    except OSError:
        pass


def _children() -> dict[int, list[int]]:
    """Every process's children, from the parent pid in /proc/PID/stat."""
    children: dict[int, list[int]] = {}
    for stat in PROC.glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])  # the name, in parentheses, may hold spaces
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    return children


def _name(pid: int) -> str:
    try:
        return (PROC / str(pid) / "comm").read_text().strip()
    except OSError:
        return ""


def _has_args(pid: int, args: tuple[str, ...]) -> bool:
    """Whether ``args`` stand side by side, in order, in the process's command line."""
    try:
        argv = (PROC / str(pid) / "cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return False
    return any(tuple(argv[i:i + len(args)]) == args for i in range(len(argv)))


def descendants_named(name: str, with_args: tuple[str, ...] = (), root: int | None = None) -> list[int]:
    """The processes called ``name`` below ``root`` (default: this process) whose command line holds
    ``with_args``, each with all its own descendants."""
    children = _children()
    found, stack = [], list(children.get(root or os.getpid(), []))
    while stack:
        pid = stack.pop()
        if _name(pid) == name and _has_args(pid, with_args):
            found += [pid, *_subtree(pid, children)]
        else:
            stack += children.get(pid, [])
    return found


def _subtree(pid: int, children: dict[int, list[int]]) -> list[int]:
    return [c for child in children.get(pid, []) for c in (child, *_subtree(child, children))]


def peak_rss_sum(pids: list[int]) -> int | None:
    """The sum of the processes' peak RSS: a bound on their peak together, since their peaks need not coincide."""
    peaks = [p for p in (peak_rss(pid) for pid in pids) if p is not None]
    return sum(peaks) if peaks else None
