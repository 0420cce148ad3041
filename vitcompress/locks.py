"""File locks between processes: one builds a shared cache while the others wait; a directory being
written by a live process is not touched by a second command on the same ``--out``.

Locks are ``filelock``'s (``flock`` on Unix): a killed process's lock is released by the OS, so a lock file
left behind locks nothing and needs no clearing by hand.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock, Timeout

from vitcompress.errors import UserError

LOCK_FILE = ".lock"  # inside a staging directory, locked by the live process that builds it
CACHE_FIX = "pass --cache-dir DIR or set VITCOMPRESS_CACHE to a folder you can write"


def lock_staging(staging: Path, out: Path) -> FileLock:
    """Acquire ``staging``'s lock, or refuse in one line while another live process holds it.

    A second command on the same ``--out`` (another terminal, the same command twice) must neither write into
    nor delete the directory a running one builds. A killed process's lock is released by the OS.
    """
    lock = FileLock(staging / LOCK_FILE)
    try:
        lock.acquire(blocking=False)
    except Timeout:
        raise UserError(f"another vitcompress run is writing {out} now (its {staging} is locked)",
                        "wait for it to finish, or pass another --out") from None
    return lock


def refuse_if_live(staging: Path, out: Path) -> None:
    """The check of ``lock_staging`` alone, before a leftover ``staging`` is resumed or removed."""
    if staging.is_dir():
        lock_staging(staging, out).release()


def build_once(target: Path, ready: Callable[[Path], bool], build: Callable[[], None]) -> None:
    """Run ``build`` (which publishes ``target``) unless ``ready(target)``.

    Two commands started on the same data (two terminals, or torchrun ranks on nodes with their own disks)
    would both build it and the second rename would fail; a file lock beside ``target`` makes the later one
    wait for the first and use what it built.
    """
    if ready(target):
        return
    writable_cache_folder(target.parent)  # only now: a cache built already may be shared read-only
    with FileLock(target.with_name(f".{target.name}.lock")):
        if not ready(target):
            build()


def writable_cache_folder(folder: Path) -> Path:
    """``folder`` in the cache, created if need be; one that cannot be written is one line naming it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write the cache directory {folder} ({exc.strerror})", CACHE_FIX) from None
    if not os.access(folder, os.W_OK):
        raise UserError(f"cannot write the cache directory {folder} (read-only)", CACHE_FIX)
    return folder
