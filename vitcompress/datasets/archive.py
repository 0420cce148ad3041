"""Safe extraction of ``.zip`` / ``.tar`` / ``.tar.gz`` / ``.tar.xz`` datasets into a cache directory.

Tar members are checked by the standard library's ``data`` filter (no absolute paths, no ``..``, no
links out of the tree, no devices). Pythons older than the filters (3.10.12 / 3.11.4; Debian 12
ships 3.11.2) get a stricter check of our own: regular files and folders inside the tree only.
Zip members (files and folders; zipfile writes links as plain files) must each land inside the
tree: ``zipfile`` would silently rewrite an absolute or ``..`` name, so such an archive is refused.
The archive is extracted into a temporary folder that is renamed into place only when complete,
so an interrupted extraction is never reused.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tarfile
import zipfile
from pathlib import Path

from vitcompress.errors import FULL_DISK, UserError
from vitcompress.locks import build_once

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".zip")


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def extract_cached(archive: Path, cache_dir: Path, quiet: bool = False) -> Path:
    """Extract ``archive`` once into ``cache_dir/archives/<key>`` and return that folder."""
    stat = archive.stat()
    key = hashlib.sha256(f"{archive.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_dir / "archives" / f"{archive.name.split('.')[0]}-{key}"
    build_once(target, Path.is_dir, lambda: _extract(archive, target, quiet))
    return target


def _extract(archive: Path, target: Path, quiet: bool) -> None:
    """Extract into a temporary folder beside ``target``; rename it to ``target`` when complete."""
    staging = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    staging.mkdir(parents=True, exist_ok=True)
    if not quiet:
        print(f"extracting {archive} into {target} (once)", file=sys.stderr, flush=True)
    try:
        if archive.name.lower().endswith(".zip"):
            _extract_zip(archive, staging)
        else:
            with tarfile.open(archive) as tar:
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(staging, filter="data")
                else:
                    _extract_files_only(tar, staging)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, UnsafeMember) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno in FULL_DISK:  # the cache's disk, not the archive
            raise OSError(exc.errno, exc.strerror, exc.filename or str(target)) from None
        if isinstance(exc, (getattr(tarfile, "FilterError", UnsafeMember), UnsafeMember)):
            raise UserError(f"archive {archive} has an unsafe member ({exc})",
                            "rebuild the archive with relative paths only and no links out of it") from None
        raise UserError(f"archive {archive} could not be read ({exc})",
                        "it may be truncated or corrupt: copy it again") from None
    os.replace(staging, target)


class UnsafeMember(Exception):
    """An archive member that is not a regular file or folder inside the tree."""


def _extract_zip(archive: Path, dest: Path) -> None:
    """Every member inside ``dest``, checked before anything is written; ``__MACOSX/`` resource forks left out."""
    root = dest.resolve()
    with zipfile.ZipFile(archive) as zf:
        members = [info for info in zf.infolist() if not info.filename.startswith("__MACOSX/")]
        for info in members:
            if os.path.isabs(info.filename) or not (root / info.filename).resolve().is_relative_to(root):
                raise UnsafeMember(f"{info.filename!r} is not inside the archive's tree")
        zf.extractall(dest, members)


def _extract_files_only(tar: tarfile.TarFile, dest: Path) -> None:
    """For Pythons without extraction filters: regular files and folders, each inside ``dest``; nothing else."""
    root = dest.resolve()
    for member in tar:
        target = (root / member.name).resolve()
        if os.path.isabs(member.name) or not target.is_relative_to(root) or not (member.isfile() or member.isdir()):
            raise UnsafeMember(f"{member.name!r} is not a regular file or folder inside the archive's tree")
        if member.isdir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        source = tar.extractfile(member)
        assert source is not None  # a regular file always has data
        with source, open(target, "wb") as out:
            shutil.copyfileobj(source, out)
