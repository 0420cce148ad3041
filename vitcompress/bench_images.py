"""The test images bench scores every variant on, and how they reach the processes that measure.

A tensor handed to another process goes through shared memory (torch's reducers put it in ``/dev/shm``),
which containers keep at 64 MB unless started with ``--shm-size`` or ``--ipc=host``: 10,000 images at
224 px do not fit, and the measuring process would never start. So the images are saved once to a
temporary ``.npy`` that each measuring process maps from disk, in the cache directory (where the decoded
data already is: a disk with room for it, where /tmp may be memory).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from vitcompress.config import BenchConfig
from vitcompress.data import DataOptions, default_cache_dir, generated_pixels, test_sample
from vitcompress.errors import UserError
from vitcompress.loader import read_all
from vitcompress.locks import writable_cache_folder
from vitcompress.sources import ModelSource


@dataclass
class EvalImages:
    pixels: torch.Tensor | None  # uint8 N x S x S x 3 as stored (each model gets them at its own size), or in `file`
    labels: np.ndarray | None
    source: str
    file: Path | None = None

    def stored(self) -> torch.Tensor:
        """The pixels, mapped from ``file`` (copy-on-write: the file is never modified) when they were saved."""
        if self.pixels is not None:
            return self.pixels
        assert self.file is not None
        return torch.from_numpy(np.load(self.file, mmap_mode="c"))


def eval_images(cfg: BenchConfig, source: ModelSource) -> EvalImages:
    """The test split of ``--data`` (or ``--eval-size`` images of it); generated pixels without ``--data``."""
    if cfg.data:
        test = test_sample(DataOptions(spec=cfg.data, data_dir=cfg.data_dir, img_size=source.img_size, val_split=0.0,
                                       cache_dir=cfg.cache_dir, quiet=cfg.quiet, expected_classes=source.classes,
                                       stream=cfg.stream, trained_on=source.trained_on),
                           cfg.eval_size)
        pixels, labels = read_all(test)
        return EvalImages(pixels, labels.numpy(), f"{cfg.data} (test split, {len(labels)} images)")
    return EvalImages(generated_pixels(max(cfg.batch_sizes()), source.img_size), None, "generated pixels")


@contextlib.contextmanager
def handed_to_processes(images: EvalImages, cfg: BenchConfig) -> Iterator[EvalImages]:
    """``images`` as measuring processes take them: saved to a temporary file for the duration (as they are,
    when everything is measured in this process)."""
    if cfg.in_process:
        yield images
        return
    parent = writable_cache_folder((Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()) / "bench")
    with tempfile.TemporaryDirectory(prefix="images-", dir=parent) as folder:
        path = Path(folder) / "eval_images.npy"
        try:
            np.save(path, images.stored().numpy())
        except OSError as exc:
            raise UserError(f"cannot save the test images for the measuring processes in {parent} ({exc.strerror})",
                            "free space there or pass --cache-dir elsewhere, measure fewer (--eval-size N), "
                            "or measure in this process (--in-process)") from None
        yield replace(images, pixels=None, file=path)
