"""--stream: image files decoded by loader workers as batches are drawn, instead of once into the cache.

The promise is that streaming changes where pixels are decoded, not what they are: the same batches in the
same order as the cache gives, the same metrics, and nothing written to the decode cache.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.conftest import SMALL_FILESYSTEMS, TINY, run_cli, with_small_filesystem, write_image_folder
from tests.test_torchvision_data import write_dtd
from vitcompress.artifact import read_meta
from vitcompress.data import DataOptions, load_data
from vitcompress.datasets.items import ImageFiles, square_pixels
from vitcompress.errors import UserError
from vitcompress.loader import PREFETCH_BATCHES, BatchLoader, read_all
from vitcompress.predict import _stored

CPU = torch.device("cpu")


def decoded_caches(cache: Path) -> list[Path]:
    return [p for p in (cache / "decoded").iterdir() if p.is_dir()] if (cache / "decoded").is_dir() else []


def batches(loader: BatchLoader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(loader)


@pytest.mark.parametrize("rank", [0, 1])
def test_streamed_batches_equal_the_cached_ones(tmp_path: Path, rank: int) -> None:
    root = write_image_folder(tmp_path / "d", per_class=10, classes=3, fmt="jpg")
    common = {"spec": f"folder:{root}", "img_size": 32, "val_split": 0.2, "train_subset": 15, "seed": 4, "quiet": True}
    cached = load_data(DataOptions(**common, cache_dir=str(tmp_path / "c1")))
    streamed = load_data(DataOptions(**common, cache_dir=str(tmp_path / "c2"), stream=True, workers=2))
    assert streamed.train.streamed and not cached.train.streamed
    assert decoded_caches(tmp_path / "c2") == []  # nothing decoded ahead
    assert streamed.description["streamed"] is True and streamed.description["train_subset"] == cached.description["train_subset"]
    for split in ("train", "val", "test"):
        mine, theirs = getattr(streamed, split), getattr(cached, split)
        assert torch.equal(mine.labels, theirs.labels) and mine.images.shape == theirs.images.shape
        options = {"shuffle": split == "train", "drop_last": split == "train", "seed": 9, "rank": rank, "world_size": 2}
        got = batches(BatchLoader(mine, 4, CPU, **options))
        want = batches(BatchLoader(theirs, 4, CPU, **options))
        assert len(got) == len(want) > 0
        for (x, y), (x_ref, y_ref) in zip(got, want, strict=True):
            assert x.dtype == torch.uint8 and torch.equal(x, x_ref) and torch.equal(y, y_ref)
    pixels, labels = read_all(streamed.test)
    assert torch.equal(pixels, cached.test.images) and torch.equal(labels, cached.test.labels)


def test_unreadable_image_is_dropped_from_its_batch_with_a_warning(tmp_path: Path) -> None:
    """The broken file is the first of train, which the storage size used to be read from (a traceback)."""
    root = write_image_folder(tmp_path / "d", per_class=4, classes=2)
    (root / "train" / "circle" / "0000.png").write_bytes(b"\x89PNG not really a png")
    cached = load_data(DataOptions(spec=f"folder:{root}", img_size=32, val_split=0, cache_dir=str(tmp_path / "c1"), quiet=True))
    streamed = load_data(DataOptions(spec=f"folder:{root}", img_size=32, val_split=0, cache_dir=str(tmp_path / "c2"),
                                     quiet=True, stream=True))
    assert len(streamed.train) == len(cached.train) + 1  # the file list still holds it: it is only opened when read
    with pytest.warns(UserWarning, match=r"skipped unreadable image .*0000\.png"):
        pixels, labels = streamed.train.read(torch.arange(len(streamed.train)))
    assert torch.equal(pixels, cached.train.images) and torch.equal(labels, cached.train.labels)


def test_a_torchvision_set_of_files_streams_the_pixels_it_would_cache(tmp_path: Path) -> None:
    write_dtd(tmp_path / "tv")
    common = {"spec": "dtd", "data_dir": str(tmp_path / "tv"), "img_size": 32, "quiet": True}
    cached = load_data(DataOptions(**common, cache_dir=str(tmp_path / "c1")))
    streamed = load_data(DataOptions(**common, cache_dir=str(tmp_path / "c2"), stream=True, workers=1))
    assert decoded_caches(tmp_path / "c2") == [] and streamed.description["streamed"] is True
    for split in ("train", "val", "test"):
        pixels, labels = read_all(getattr(streamed, split))
        assert torch.equal(pixels, getattr(cached, split).images) and torch.equal(labels, getattr(cached, split).labels)


def test_a_streamed_model_is_pruned_exported_and_scored_without_a_cache(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """finetune --stream records it; prune and export's verification stream the artifact's data again;
    eval --stream scores exactly what eval from the cache does."""
    root = write_image_folder(tmp_path / "d", per_class=20, classes=3, splits=("train", "val", "test"), fmt="jpg")
    stream_cache = tmp_path / "c-stream"
    data = ["--data", f"folder:{root}", "--cache-dir", stream_cache]
    base, pruned, exported = tmp_path / "base", tmp_path / "pruned", tmp_path / "onnx"
    assert run_cli("finetune", *TINY, *data, "--stream", "--workers", "2", "--epochs", "6", "--batch-size", "16",
                   "--out", base) == 0
    assert read_meta(base).data["streamed"] is True and read_meta(base).metrics["top1"] > 1 / 3  # above chance
    capsys.readouterr()
    assert run_cli("info", base) == 0 and "(streamed: --stream)" in capsys.readouterr().out
    assert run_cli("prune", base, "--heads", "0.5", "--finetune-epochs", "1", "--cache-dir", stream_cache,
                   "--batch-size", "16", "--quiet", "--out", pruned) == 0
    assert read_meta(pruned).data["streamed"] is True
    assert run_cli("export", pruned, "--out", exported, "--cache-dir", stream_cache, "--quiet") == 0
    assert "test split" in json.loads((exported / "export.json").read_text())["verify"]["onnxruntime"]["source"]
    assert decoded_caches(stream_cache) == []  # every stage read the files, none decoded them into the cache
    capsys.readouterr()
    scores = {}
    for how, flags in (("streamed", ["--stream"]), ("cached", [])):
        assert run_cli("eval", pruned, "--data", f"folder:{root}", "--json", "--cache-dir", tmp_path / how, *flags) == 0
        scores[how] = json.loads(capsys.readouterr().out)
    assert scores["streamed"]["top1"] == scores["cached"]["top1"] and scores["streamed"]["loss"] == scores["cached"]["loss"]
    assert scores["streamed"]["samples"] == scores["cached"]["samples"] == 60
    assert decoded_caches(tmp_path / "streamed") == [] and len(decoded_caches(tmp_path / "cached")) == 1


def test_streaming_trains_exactly_the_model_the_cache_trains(tmp_path: Path) -> None:
    """Same batches, same augmentation draws, same weights. Neither the streaming workers nor the cache's decoding
    workers may draw from the global RNG: the cached run decodes here, and before that fix a run that built the cache
    trained differently from the same run reading it."""
    root = write_image_folder(tmp_path / "d", per_class=12, classes=3, fmt="jpg")
    metrics = {}
    for how, flags in (("streamed", ["--stream", "--workers", "2"]), ("cached", [])):
        out = tmp_path / how
        assert run_cli("finetune", *TINY, "--data", f"folder:{root}", "--cache-dir", tmp_path / f"c-{how}", "--epochs", "2",
                       "--batch-size", "8", "--val-split", "0.25", "--out", out, *flags) == 0
        metrics[how] = read_meta(out).metrics
    for key in ("top1", "loss", "best_val_top1"):
        assert metrics["streamed"][key] == metrics["cached"][key], key


def test_large_jpegs_decode_alike_in_the_cache_streaming_and_predict(tmp_path: Path) -> None:
    """Photos many times the stored size are decoded at a reduced JPEG scale (PIL's draft, as its thumbnail does):
    every path that turns a file into pixels must do it the same way, and stay close to a full decode."""
    root = write_image_folder(tmp_path / "d", per_class=2, classes=2, fmt="jpg")
    files = sorted(root.rglob("*.jpg"))
    for path in files:  # 320 x 240: decoded at half scale for a 37 px store (32 px model)
        with Image.open(path) as img:
            img.resize((320, 240), Image.Resampling.BICUBIC).save(path, quality=90)
    common = {"spec": f"folder:{root}", "img_size": 32, "val_split": 0, "quiet": True}
    cached = load_data(DataOptions(**common, cache_dir=str(tmp_path / "c")))
    streamed = load_data(DataOptions(**common, cache_dir=str(tmp_path / "c2"), stream=True))
    test_files = sorted((root / "test").rglob("*.jpg"))
    from_predict = torch.stack([torch.from_numpy(_stored(path, 32)) for path in test_files])
    assert torch.equal(read_all(streamed.test)[0], cached.test.images)
    assert torch.equal(from_predict, cached.test.images)
    for path, stored in zip(test_files, cached.test.images, strict=True):
        with Image.open(path) as img:
            full = torch.from_numpy(square_pixels(img.convert("RGB"), 37))
        assert (full.float() - stored.float()).abs().mean() < 1.0


def test_image_files_give_back_every_path() -> None:
    paths = ["/data/a/0.jpg", "/data/café/ß 1.JPEG", "/x.png", ""]
    files = ImageFiles(paths)
    assert len(files) == 4 and [files.path(i) for i in range(4)] == paths
    assert len(ImageFiles([])) == 0


class _ClockWithWaits:
    """``time`` for the Trainer: the real clock plus the waits a slow decoder adds. The waits are virtual (no real
    sleep), so the share of an epoch spent waiting does not depend on how fast or how loaded the machine is: with a
    real sleep in the workers a loaded CI measured 0.11 where 0.9 was meant."""

    def __init__(self) -> None:
        self.waited = 0.0

    def perf_counter(self) -> float:
        return time.perf_counter() + self.waited

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)


DECODE_WAIT_S = 30.0  # per streamed batch: far longer than any training step, however slow the machine


def test_a_streamed_run_that_waits_for_data_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture) -> None:
    """The Trainer counts the time spent waiting for the loader's next batch, and says once when that is most of an
    epoch (a streamed split whose decoders cannot keep up); a cached split never waits."""
    root = write_image_folder(tmp_path / "d", per_class=6, classes=3, fmt="jpg")
    clock = _ClockWithWaits()
    monkeypatch.setattr("vitcompress.train.time", clock)
    decoded = BatchLoader._decoded

    def slow_decoded(self: BatchLoader, chunks: tuple[torch.Tensor, ...]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in decoded(self, chunks):  # the real workers decode it; the wait is the clock's
            clock.waited += DECODE_WAIT_S
            yield batch

    monkeypatch.setattr(BatchLoader, "_decoded", slow_decoded)
    tiny = [a for a in TINY if a != "--quiet"]
    for how, flags in (("streamed", ["--stream", "--workers", "1"]), ("cached", [])):
        assert run_cli("finetune", *tiny, "--data", f"folder:{root}", "--cache-dir", tmp_path / how, "--epochs", "2",
                       "--batch-size", "4", "--val-split", "0", "--out", tmp_path / how, *flags) == 0
        rows = list(csv.DictReader(open(tmp_path / how / "train_log.csv")))
        shares = [float(row["data_wait_share"]) for row in rows]
        assert len(shares) == 2 and all(0 <= share < 1 for share in shares)
        err = capsys.readouterr().err
        if how == "streamed":
            assert min(shares) > 0.5 and err.count("waited for data") == 1 and "--workers" in err  # said once
        else:
            assert "waited for data" not in err


@SMALL_FILESYSTEMS
def test_streaming_without_the_shared_memory_it_needs_is_one_line(tmp_path: Path) -> None:
    """Loader workers hand batches over through /dev/shm. A worker that cannot prints a traceback and the training
    loop waited for its batch for ever; now the run refuses to start, says how much it needs, and writes nothing."""
    root = write_image_folder(tmp_path / "d", per_class=40, classes=3, fmt="jpg")
    out = tmp_path / "run"
    run = with_small_filesystem("finetune", *TINY, "--data", f"folder:{root}", "--stream", "--workers", "2", "--epochs", "1",
                                "--batch-size", "64", "--cache-dir", str(tmp_path / "cache"), "--out", str(out))
    assert run.returncode == 2, run.stderr[-2000:]
    assert "Traceback" not in run.stderr and "/dev/shm has 1 MB free" in run.stderr and "--shm-size" in run.stderr
    assert not out.exists()


def test_shared_memory_is_checked_before_workers_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = write_image_folder(tmp_path / "d", per_class=10, classes=3, fmt="jpg")
    data = load_data(DataOptions(spec=f"folder:{root}", img_size=32, val_split=0, cache_dir=str(tmp_path / "c"),
                                 stream=True, workers=2, quiet=True))
    loader = BatchLoader(data.train, 4, CPU, shuffle=False, drop_last=False)
    need = 2 * PREFETCH_BATCHES * 4 * 32 * 32 * 3  # workers x batches ahead x images x bytes each
    monkeypatch.setattr(shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(1 << 30, (1 << 30) - need + 1, need - 1))
    with pytest.raises(UserError, match="need about 0 MB"):
        next(iter(loader))
    monkeypatch.setattr(shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(1 << 30, (1 << 30) - need, need))
    images, _ = next(iter(loader))
    assert len(images) == 4
