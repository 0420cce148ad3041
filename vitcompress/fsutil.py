"""Atomic writes: a reader never sees a half-written file or directory."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from vitcompress.errors import UserError
from vitcompress.locks import LOCK_FILE, lock_staging, refuse_if_live

FULL_DISK_BYTES = 1 << 20  # free space below which a failed write is taken for a full disk


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        give_default_mode(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_safetensors(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """``state`` to ``path``, atomically. safetensors reports a failed write (a full disk) as its own error, with the
    system's error number in the text: it is raised as the ``OSError`` any other write would raise."""
    with atomic_file(path) as tmp:
        try:
            save_file(state, str(tmp), metadata=metadata)
        except SafetensorError as exc:
            number = re.search(r"os error (\d+)", str(exc))
            if number is None:
                raise
            code = int(number.group(1))
            raise OSError(code, os.strerror(code), str(path)) from exc


def write_torch(state: dict, path: Path) -> None:
    """``torch.save(state)`` to ``path``, atomically. torch reports a failed write as a ``RuntimeError`` without the
    system's error (``unexpected pos ...``); when the disk is full then (the partial file still on it), it is
    raised as the ``OSError`` any other write would raise."""
    with atomic_file(path) as tmp:
        try:
            torch.save(state, tmp)
        except RuntimeError as exc:
            if shutil.disk_usage(path.parent).free > FULL_DISK_BYTES:
                raise
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from exc


def give_default_mode(path: str | os.PathLike) -> None:
    """The permissions a plain ``open(path, "w")`` would give (temporary files are created private)."""
    os.chmod(path, 0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output_dir(out: str | os.PathLike, force: bool) -> Path:
    """Refuse to overwrite an existing output unless ``force`` is set."""
    out = Path(out)
    if out.exists() and not force:
        raise UserError(f"output {out} already exists", "choose another --out or pass --force to replace it")
    return out


def staging_path(out: Path, suffix: str) -> Path:
    """Where ``out`` is built before it is published: ``OUT<suffix>`` beside it."""
    return out.with_name(out.name + suffix)


def publish_dir(staging: Path, out: Path) -> None:
    """Move a finished staging directory onto ``out``, replacing an old one only at the last step.

    The staging's lock file stays behind: the lock is still held (its file is open) until the builder releases it.
    """
    (staging / LOCK_FILE).unlink(missing_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        trash = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, trash)
        os.replace(staging, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(staging, out)


@contextlib.contextmanager
def staged_directory(out: Path, suffix: str) -> Iterator[Path]:
    """A fresh ``OUT<suffix>`` directory to build ``out`` in: published onto ``out`` by one rename when
    the block succeeds, removed when it fails (nothing half-written is ever left under ``out``)."""
    staging = staging_path(out, suffix)
    refuse_if_live(staging, out)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    lock = lock_staging(staging, out)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        lock.release()
        raise
    publish_dir(staging, out)
    lock.release()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
