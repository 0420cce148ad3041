"""``cifar10``: torchvision's CIFAR-10, with its real download when the user allows it.

torchvision checks the md5 of every file before reading it, so only the official release is ever
unpickled, never an arbitrary file a user points us at.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vitcompress.datasets.imageset import ImageSet
from vitcompress.errors import UserError


def load_cifar10(root: Path, download: bool) -> tuple[ImageSet, ImageSet]:
    from torchvision.datasets import CIFAR10

    try:
        train = CIFAR10(str(root), train=True, download=download)
        test = CIFAR10(str(root), train=False, download=download)
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted"
        raise UserError(f"CIFAR-10 not found in {root} ({exc})",
                        "pass --download (needs internet), --data-dir DIR where it is, or use folder:PATH") from None
    except OSError as exc:  # URLError and friends: no network
        raise UserError(f"could not download CIFAR-10 into {root} ({exc})",
                        "connect to the internet, or use folder:PATH with a local copy") from None
    return _to_imageset(train), _to_imageset(test)


def _to_imageset(ds) -> ImageSet:
    images = torch.from_numpy(np.ascontiguousarray(ds.data))
    return ImageSet(images, torch.tensor(ds.targets, dtype=torch.long), list(ds.classes))
