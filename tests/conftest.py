"""Shared fixtures: a tiny ViT config, one trained artifact, and an ImageFolder tree made on the fly."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # read at import by huggingface_hub: tests never reach the hub

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from vitcompress.augment import BatchTransform  # noqa: E402
from vitcompress.cli import main  # noqa: E402
from vitcompress.config import TrainConfig  # noqa: E402
from vitcompress.datasets.imageset import DataSplits  # noqa: E402
from vitcompress.datasets.shapes import generate  # noqa: E402
from vitcompress.distributed import DistContext  # noqa: E402
from vitcompress.models import create_model  # noqa: E402
from vitcompress.train import Trainer  # noqa: E402

# Two blocks of two heads at 32px with 8px patches: trains in seconds on a CPU.
TINY = ["--model", "vit_tiny_patch16_224", "--img-size", "32", "--patch-size", "8",
        "--model-kwargs", "depth=2,embed_dim=64,num_heads=2", "--drop-path", "0", "--lr", "3e-3",
        "--batch-size", "64", "--quiet"]
REPO = Path(__file__).resolve().parents[1]
SHARED_CIFAR = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.xz"


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ.setdefault("VITCOMPRESS_CACHE", str(tmp_path_factory.mktemp("cache")))


def run_cli(*args: str) -> int:
    return main([str(a) for a in args])


def tiny_trainer(workdir: Path, **overrides) -> Trainer:
    """A Trainer of a 3-block ViT on 40 `shapes` images, batch 8, one epoch unless ``overrides`` say otherwise."""
    data = generate(4, seed=0)
    model = create_model("vit_tiny_patch16_224", {"num_classes": 10, "img_size": 32, "patch_size": 8,
                                                  "depth": 3, "embed_dim": 32, "num_heads": 2})
    cfg = TrainConfig(**{"epochs": 1, "batch_size": 8, "quiet": True, **overrides})
    splits = DataSplits(data, None, data, data.classes, {})
    return Trainer(model, splits, cfg, BatchTransform(32, [0.5] * 3, [0.5] * 3), DistContext(), workdir)


def fitted_tiny_trainer(workdir: Path, **overrides) -> tuple[Trainer, dict[str, torch.Tensor]]:
    """``tiny_trainer``, fitted in a new ``workdir``, and its initial weights. Seed 0 fixes the initial weights and
    seed 1 the augmentation draws, so runs that differ only in ``overrides`` are comparable."""
    torch.manual_seed(0)
    trainer = tiny_trainer(workdir, **overrides)
    workdir.mkdir()
    initial = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    torch.manual_seed(1)
    trainer.fit()
    return trainer, initial


@pytest.fixture(scope="session")
def shapes_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ViT trained 8 epochs on `shapes` (about 10 s)."""
    out = tmp_path_factory.mktemp("artifacts") / "shapes"
    assert run_cli("finetune", *TINY, "--data", "shapes", "--epochs", "8", "--out", out) == 0
    return out


@pytest.fixture(scope="session")
def int8_artifact(shapes_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``shapes_artifact`` calibrated to INT8 (PTQ on 128 images)."""
    from vitcompress.compress.qat import qat
    from vitcompress.config import QatConfig

    out = tmp_path_factory.mktemp("export-src") / "int8"
    qat(QatConfig(src=str(shapes_artifact), out=str(out), calib_size=128, train=TrainConfig(epochs=0, quiet=True)))
    return out


def write_image_folder(root: Path, per_class: int = 6, classes: int = 3, splits: tuple[str, ...] = ("train", "test"),
                       fmt: str = "png", seed: int = 0) -> Path:
    """An ImageFolder tree of `shapes` images: root/<split>/<class>/<n>.<fmt>."""
    data = generate(per_class, seed=seed)
    for split in splits:
        for i in range(len(data)):
            label = int(data.labels[i])
            if label >= classes:
                continue
            folder = root / split / data.classes[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(data.images[i].numpy()).save(folder / f"{i:04d}.{fmt}")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "imgs")


def make_archive(folder: Path, archive: Path) -> Path:
    """``folder`` (as its top-level entry) in a .zip, or a .tar[.gz|.xz] as the name says."""
    if archive.suffix == ".zip":
        with zipfile.ZipFile(archive, "w") as zf:
            for path in sorted(folder.rglob("*")):
                zf.write(path, Path(folder.name) / path.relative_to(folder))
        return archive
    mode = "w:xz" if archive.name.endswith(".xz") else "w:gz" if archive.name.endswith(".gz") else "w"
    with tarfile.open(archive, mode) as tar:
        tar.add(folder, arcname=folder.name)
    return archive


def huge_image(path: Path) -> None:
    """A PNG of 182 M pixels (one colour: 0.6 MB on disk), over twice PIL's MAX_IMAGE_PIXELS: PIL refuses to open it."""
    Image.new("RGB", (13500, 13500), (10, 200, 30)).save(path)


def random_image(path: Path, size: int = 48) -> None:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)


def _can_mount_small_filesystems() -> bool:
    """Whether this user can mount a small tmpfs in a private mount namespace (root, util-linux's unshare)."""
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-m", "mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", "/dev/shm"],
                          capture_output=True).returncode == 0


SMALL_FILESYSTEMS = pytest.mark.skipif(not _can_mount_small_filesystems(), reason="mounting needs root and unshare")


def with_small_filesystem(*args: str, mountpoint: str = "/dev/shm", size: str = "1m",
                          read_only: bool = False) -> subprocess.CompletedProcess:
    """``vitcompress ARGS`` with a tmpfs of ``size`` (empty; ``read_only`` if asked) over ``mountpoint``, seen by
    that command alone: by default a /dev/shm as small as a container's (Docker's is 64 MB)."""
    command = shlex.join([sys.executable, "-m", "vitcompress", *args])
    options = f"size={size}" + (",ro" if read_only else "")
    mount = shlex.join(["mount", "-t", "tmpfs", "-o", options, "tmpfs", mountpoint])
    return subprocess.run(["unshare", "-m", "sh", "-c", f"{mount} && {command}"], capture_output=True, text=True,
                          timeout=300)
