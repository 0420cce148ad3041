"""The staging directory every training stage writes into before publishing its artifact.

A stage works in ``OUT.tmp-run/`` (which also holds ``last.ckpt`` for ``--resume``) and renames it
to ``OUT`` only when the artifact is complete, so a crash or a kill never leaves a broken ``OUT``.
While it works it holds a lock file inside that directory, so a second command on the same ``OUT``
(another terminal, the same command twice) is refused instead of resuming, or with ``--force`` deleting,
a run that is still going.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from vitcompress.artifact import ArtifactMeta, write_artifact
from vitcompress.distributed import DistContext
from vitcompress.errors import UserError
from vitcompress.fsutil import atomic_file, check_output_dir, publish_dir, staging_path
from vitcompress.locks import lock_staging, refuse_if_live
from vitcompress.train import BEST_WEIGHTS_FILE, CHECKPOINT_FILE

STAGING_SUFFIX = ".tmp-run"
RUN_OPTIONS_FILE = "run_options.json"  # in the staging dir: the options the run started with, checked on --resume
# How a run is carried out, not what it trains: these may differ when it is resumed (another GPU, more workers, a
# moved cache, quieter output). Every other option must be the same, or the artifact would record what did not happen.
RESUME_MAY_CHANGE = frozenset({"out", "force", "resume", "quiet", "device", "workers", "cache_dir", "data_dir", "download",
                               "stream", "checkpoint_interval", "compile", "compile_mode"})


@dataclass
class StageResult:
    """What a stage hands back: where its artifact is, what it says about itself, and the model in memory."""

    path: Path
    meta: ArtifactMeta
    model: Any = None  # the nn.Module the artifact holds (prune, qat); load_model(path) rebuilds the same


def staging_dir(out: Path) -> Path:
    return staging_path(out, STAGING_SUFFIX)


def prepare_staging(out: str | Path, force: bool, resume: bool, is_main: bool = True,
                    config: Any = None) -> tuple[Path, Path]:
    """Check ``out`` and the staging dir against ``--force``/``--resume``; return ``(out, staging)``.

    On ``--resume``, ``config`` (the stage's config dataclass) must hold the options the run started with
    (:func:`check_resume_options`). Nothing is created here: see :func:`staging_guard`.
    """
    out = Path(out)
    staging = staging_dir(out)
    if is_main:
        refuse_if_live(staging, out)
    if resume:
        if not (staging / CHECKPOINT_FILE).is_file():
            raise UserError(f"nothing to resume: {staging / CHECKPOINT_FILE} does not exist",
                            "run the same command without --resume")
        if config is not None:
            check_resume_options(staging, config)
        return out, staging
    check_output_dir(out, force)
    if staging.exists():
        if not force:
            raise UserError(f"an interrupted run left {staging}",
                            "pass --resume to continue it, or --force to start over")
        if is_main:
            shutil.rmtree(staging)
    return out, staging


def run_options(config: Any) -> dict[str, Any]:
    """``config``'s options by name, nested configs flattened (their names are the CLI's flags), less those a
    resume may change; as JSON reads them back."""
    options: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            options.update(run_options(value))
        elif f.name not in RESUME_MAY_CHANGE:
            options[f.name] = value
    return json.loads(json.dumps(options))


def check_resume_options(staging: Path, config: Any) -> None:
    """Refuse to resume with options that change the run: the checkpoint trains on as it started (its schedule,
    its pruning plan, its ranges), so the artifact would record options that never took effect."""
    path = staging / RUN_OPTIONS_FILE
    if not path.is_file():  # a run from before the options were kept
        return
    started = json.loads(path.read_text())
    now = run_options(config)
    changed = [f"{_flag(name)} {now.get(name)} (the run: {value})" for name, value in started.items() if now.get(name) != value]
    if changed:
        raise UserError(f"--resume with options the interrupted run did not use: {', '.join(changed)}",
                        f"resume with the run's own options (in {path}), or pass --force instead of --resume to "
                        "start over with the new ones")


def _flag(name: str) -> str:
    return "SRC" if name == "src" else "--" + name.replace("_", "-")


@contextlib.contextmanager
def staging_guard(staging: Path, is_main: bool = True, resumable: bool = True, config: Any = None) -> Iterator[Path]:
    """Create ``staging``; if the stage fails before its first checkpoint, remove it again.

    A failure after a checkpoint keeps the directory, so ``--resume`` can continue from it; a stage
    that cannot resume (``resumable=False``) always removes it. ``config``'s options are kept there for
    :func:`check_resume_options` (a resumed run's are the same, so they are only written once).
    """
    lock = None
    if is_main:
        staging.mkdir(parents=True, exist_ok=True)
        lock = lock_staging(staging, staging.with_name(staging.name.removesuffix(STAGING_SUFFIX)))
        if config is not None and resumable and not (staging / RUN_OPTIONS_FILE).is_file():
            with atomic_file(staging / RUN_OPTIONS_FILE) as tmp:
                tmp.write_text(json.dumps(run_options(config), indent=2) + "\n")
    try:
        yield staging
    except BaseException:
        if is_main and (not resumable or not (staging / CHECKPOINT_FILE).is_file()):
            shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        if lock is not None:
            lock.release()


def publish_artifact(staging: Path, out: Path, model: nn.Module, meta: ArtifactMeta, ctx: DistContext,
                     also: Callable[[Path], None] | None = None, resume_files: tuple[Path, ...] = ()) -> None:
    """Rank 0 writes the artifact into ``staging`` (with what ``also`` adds there), drops the resume files
    (the checkpoint, the best weights and the stage's own ``resume_files``) and moves it onto ``out``;
    every rank waits until it has."""
    if ctx.is_main:
        write_artifact(staging, model, meta)
        if also is not None:
            also(staging)
        for path in (staging / CHECKPOINT_FILE, staging / BEST_WEIGHTS_FILE, staging / RUN_OPTIONS_FILE, *resume_files):
            path.unlink(missing_ok=True)
        publish_dir(staging, out)
    ctx.barrier()
