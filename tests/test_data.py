"""Dataset specs: generated shapes, ImageFolder trees and archives of them, splits, corrupt files."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch

from tests.conftest import (
    SHARED_CIFAR,
    SMALL_FILESYSTEMS,
    TINY,
    huge_image,
    make_archive,
    run_cli,
    with_small_filesystem,
    write_image_folder,
)
from vitcompress.data import DataOptions, load_data, load_test_split, trained_storage_size
from vitcompress.datasets.imageset import holdout_split
from vitcompress.datasets.shapes import CLASSES, generate
from vitcompress.errors import UserError


def test_shapes_is_deterministic_and_balanced() -> None:
    a, b = generate(5, seed=1), generate(5, seed=1)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, generate(5, seed=2).images)
    assert a.images.dtype == torch.uint8 and a.images.shape == (50, 32, 32, 3)
    assert torch.bincount(a.labels).tolist() == [5] * len(CLASSES)


def test_holdout_split_is_stratified_and_disjoint() -> None:
    train, val = holdout_split(generate(20, seed=0), 0.25, seed=0)
    assert len(train) == 150 and len(val) == 50
    assert torch.bincount(val.labels).tolist() == [5] * 10
    train_px = {bytes(img.numpy()) for img in train.images}
    assert not any(bytes(img.numpy()) in train_px for img in val.images)


def test_folder_with_corrupt_and_non_image_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = write_image_folder(tmp_path / "d", per_class=4, classes=3)
    (root / "train" / "circle" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "train" / "circle" / "notes.txt").write_text("ignored: not an image extension")
    huge_image(root / "train" / "square" / "huge.png")  # PIL refuses it (a decompression bomb); it crashed decoding
    data = load_data(DataOptions(spec=f"folder:{root}", img_size=32, val_split=0.0, cache_dir=str(tmp_path / "c"),
                                 quiet=True))  # --quiet hides progress, not warnings
    assert "skipped 2 unreadable image" in capsys.readouterr().err
    assert len(data.train) == 12 and len(data.test) == 12 and data.classes == ["circle", "square", "triangle"]
    assert sorted(Path(f).name for f in data.description["skipped_files"]) == ["broken.jpg", "huge.png"]
    assert data.train.images.shape[1:] == (32, 32, 3)


@pytest.mark.parametrize("val", ["val", "valid", "validation"])  # Kaggle's datasets come with valid/
def test_folder_val_split_is_used_for_validation(tmp_path: Path, val: str) -> None:
    root = write_image_folder(tmp_path / "d", per_class=4, classes=2, splits=("train", val))
    data = load_data(DataOptions(spec=f"folder:{root}", img_size=32, cache_dir=str(tmp_path / "c")))
    assert len(data.val) == 8 and len(data.train) == 8  # no hold-out carved from train when val/ exists
    assert data.test is data.val or len(data.test) == 8
    (root / "test").mkdir()  # a competition's unlabelled test split: images, no class folders
    (root / "train" / "circle" / "0000.png").rename(root / "test" / "unlabelled.png")
    data = load_data(DataOptions(spec=f"folder:{root}", img_size=32, cache_dir=str(tmp_path / "c")))
    assert len(data.test) == len(data.val) == 8 and len(data.train) == 7
    if val != "val":
        write_image_folder(root, per_class=4, classes=2, splits=("val",))
        with pytest.raises(UserError, match=f"has val/ and {val}/"):
            load_data(DataOptions(spec=f"folder:{root}", img_size=32, cache_dir=str(tmp_path / "c")))


def test_large_images_are_cached_at_crop_size(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "d", per_class=2, classes=2)
    from PIL import Image
    for path in root.rglob("*.png"):
        Image.open(path).resize((80, 60)).save(path)
    data = load_data(DataOptions(spec=f"folder:{root}", img_size=32, val_split=0, cache_dir=str(tmp_path / "c")))
    assert data.train.size == 37  # ceil(32 / 0.875): the eval centre crop takes 32 of it


def test_the_storage_size_is_not_set_by_one_thumbnail(tmp_path: Path) -> None:
    """The split's first file (sorted) is a 40 px thumbnail among 400 x 300 photos: they are stored at the crop size
    the photos allow (256 for 224 px), not shrunk to 40; and one large outlier does not inflate a split of small images."""
    from PIL import Image
    root = write_image_folder(tmp_path / "photos", per_class=4, classes=2)
    for path in root.rglob("*.png"):
        Image.open(path).resize((400, 300)).save(path)
    first = sorted((root / "train").rglob("*.png"))[0]
    Image.open(first).resize((40, 40)).save(first)
    photos = load_data(DataOptions(spec=f"folder:{root}", img_size=224, val_split=0, cache_dir=str(tmp_path / "c")))
    assert photos.train.size == 256
    small = write_image_folder(tmp_path / "small", per_class=20, classes=2)
    Image.open(first).resize((400, 300)).save(sorted((small / "train").rglob("*.png"))[0])
    icons = load_data(DataOptions(spec=f"folder:{small}", img_size=224, val_split=0, cache_dir=str(tmp_path / "c")))
    assert icons.train.size == 32


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz", ".tar.xz", ".zip"])
def test_archives_match_the_folder(tmp_path: Path, suffix: str) -> None:
    root = write_image_folder(tmp_path / "mydata", per_class=3, classes=3)
    archive = make_archive(root, tmp_path / f"mydata{suffix}")
    cache = str(tmp_path / "c")
    from_folder = load_data(DataOptions(spec=f"folder:{root}", img_size=32, val_split=0, cache_dir=cache))
    from_archive = load_data(DataOptions(spec=f"folder:{archive}", img_size=32, val_split=0, cache_dir=cache))
    assert torch.equal(from_folder.train.images, from_archive.train.images)
    assert from_folder.classes == from_archive.classes
    assert len([p for p in (tmp_path / "c" / "archives").iterdir() if p.is_dir()]) == 1  # extracted once, into the cache


@pytest.fixture(params=["stdlib-filter", "files-only"])
def extraction(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both extraction paths: the stdlib's data filter, and ours for Pythons without it (Debian's 3.11.2)."""
    if request.param == "files-only":
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    elif not hasattr(tarfile, "data_filter"):
        pytest.skip("this Python has no extraction filters")
    return request.param


def test_both_extraction_paths_match_the_folder(tmp_path: Path, extraction: str) -> None:
    root = write_image_folder(tmp_path / "mydata", per_class=3, classes=3)
    archive = make_archive(root, tmp_path / "mydata.tar.gz")
    cache = str(tmp_path / "c")
    from_folder = load_data(DataOptions(spec=f"folder:{root}", img_size=32, val_split=0, cache_dir=cache))
    from_archive = load_data(DataOptions(spec=f"folder:{archive}", img_size=32, val_split=0, cache_dir=cache))
    assert torch.equal(from_folder.train.images, from_archive.train.images)


@pytest.mark.parametrize("member", ["../../escaped.txt", "link"])
def test_unsafe_archive_member_is_rejected(tmp_path: Path, extraction: str, member: str) -> None:
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        payload = b"owned"
        info = tarfile.TarInfo(member)
        if member == "link":  # a link out of the tree
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        else:
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(UserError, match="unsafe member"):
        load_data(DataOptions(spec=f"folder:{archive}", cache_dir=str(tmp_path / "c")))
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path.parent / "escaped.txt").exists()
    assert not any(p.is_dir() for p in (tmp_path / "c" / "archives").iterdir())  # nothing half-extracted is left to reuse


def test_a_zip_member_outside_the_tree_is_rejected_before_anything_is_written(tmp_path: Path) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("mydata/train/a/0.png", b"fine")
        zf.writestr("../../escaped.txt", b"owned")  # zipfile would quietly write it inside, as escaped.txt
    with pytest.raises(UserError, match="unsafe member"):
        load_data(DataOptions(spec=f"folder:{archive}", cache_dir=str(tmp_path / "c")))
    assert not any(p.is_dir() for p in (tmp_path / "c" / "archives").iterdir())


def test_what_editors_and_operating_systems_leave_is_not_data(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Jupyter's .ipynb_checkpoints is no class, macOS's ._*.png resource forks and a zip's __MACOSX/ are no images:
    ImageFolder would take them, and train on an extra class or warn of unreadable files."""
    root = write_image_folder(tmp_path / "mydata", per_class=3, classes=2)
    clean = load_data(DataOptions(spec=f"folder:{root}", img_size=32, val_split=0, cache_dir=str(tmp_path / "c1")))
    for split in ("train", "test"):
        (root / split / ".ipynb_checkpoints").mkdir()
        (root / split / ".ipynb_checkpoints" / "0000-checkpoint.png").write_bytes(b"a copy")
        for image in list((root / split).rglob("0*.png")):
            (image.parent / f"._{image.name}").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    archive = make_archive(root, tmp_path / "mydata.zip")
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr("__MACOSX/mydata/train/._circle", b"\x00\x05\x16\x07")
    for spec in (f"folder:{root}", f"folder:{archive}"):
        data = load_data(DataOptions(spec=spec, img_size=32, val_split=0, cache_dir=str(tmp_path / "c2")))
        assert data.classes == clean.classes and torch.equal(data.train.images, clean.train.images)
        assert "unreadable" not in capsys.readouterr().err


def test_scoring_reads_the_test_split_alone(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """eval and bench decode only the split they score (the pixels training was scored on), and take a labelled
    set of the user's own: test/ (or val/) with no train/ beside it, or a flat tree of class folders."""
    full = write_image_folder(tmp_path / "full", per_class=2, classes=10)
    shutil.copytree(full / "test", tmp_path / "held" / "test")
    shutil.copytree(full / "test", tmp_path / "flat")
    options = {"img_size": 32, "val_split": 0, "cache_dir": str(tmp_path / "c"), "quiet": True}
    expected = load_test_split(DataOptions(spec=f"folder:{full}", **options))
    assert not list((tmp_path / "c").rglob("train*"))  # scoring never decodes the train split
    assert torch.equal(expected.images, load_data(DataOptions(spec=f"folder:{full}", **options)).test.images)
    for root in (tmp_path / "held", tmp_path / "flat"):
        held_out = load_test_split(DataOptions(spec=f"folder:{root}", **options))
        assert torch.equal(held_out.images, expected.images) and torch.equal(held_out.labels, expected.labels)
        assert held_out.classes == expected.classes
    model = tmp_path / "model"
    assert run_cli("finetune", *TINY, "--data", f"folder:{full}", "--epochs", "1", "--batch-size", "8", "--out", model) == 0
    capsys.readouterr()
    scores = []
    for root in (full, tmp_path / "flat"):
        assert run_cli("eval", model, "--data", f"folder:{root}", "--json") == 0
        scores.append(json.loads(capsys.readouterr().out))
    assert scores[1]["samples"] == 20 and scores[1]["top1"] == scores[0]["top1"]
    shutil.rmtree(full / "test")
    with pytest.raises(UserError, match="has train/ but neither val/"):  # never scored on its training images
        load_test_split(DataOptions(spec=f"folder:{full}", **options))


def test_scoring_the_models_own_data_takes_its_recorded_storage_size(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """eval of a model on the data it was trained on stores the test split at the side its artifact recorded, so an
    ImageNet-sized train split is not listed for it; other data (another spec) still takes the side from its train/."""
    full = write_image_folder(tmp_path / "full", per_class=4, classes=3)
    model = tmp_path / "model"
    assert run_cli("finetune", *TINY, "--data", f"folder:{full}", "--epochs", "1", "--batch-size", "4", "--val-split", "0",
                   "--out", model) == 0
    assert json.loads((model / "vitcompress.json").read_text())["data"]["storage_size"] == 32
    assert trained_storage_size(f"folder:{full}", {"spec": f"folder:{full}", "storage_size": 32}) == 32
    assert trained_storage_size(f"folder:{tmp_path}", {"spec": f"folder:{full}", "storage_size": 32}) == 0
    capsys.readouterr()
    assert run_cli("eval", model, "--data", f"folder:{full}", "--json") == 0
    before = json.loads(capsys.readouterr().out)
    for image in (full / "train").rglob("*.png"):  # class folders without images: listing train/ would fail
        image.unlink()
    assert run_cli("eval", model, "--data", f"folder:{full}", "--json") == 0
    assert json.loads(capsys.readouterr().out)["top1"] == before["top1"]
    link = tmp_path / "link"  # the same images under another path: not the recorded spec, so train/ is listed
    link.symlink_to(full)
    assert run_cli("eval", model, "--data", f"folder:{link}", "--json") == 2
    assert "every class folder needs at least one image" in capsys.readouterr().err


@SMALL_FILESYSTEMS
def test_a_cache_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    """A read-only cache (a read-only home in a container, or a shared cache): one line with the way around it."""
    archive = make_archive(write_image_folder(tmp_path / "imgs", per_class=10, classes=2, fmt="jpg"), tmp_path / "d.tar")
    cache, out = tmp_path / "cache", tmp_path / "run"
    cache.mkdir()
    run = with_small_filesystem("finetune", *TINY, "--data", f"folder:{archive}", "--epochs", "1", "--cache-dir", str(cache),
                                "--out", str(out), mountpoint=str(cache), read_only=True)
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr[-2000:]
    assert f"cannot write the cache directory {cache}" in run.stderr and "--cache-dir" in run.stderr
    assert not out.exists()


@SMALL_FILESYSTEMS
@pytest.mark.parametrize("data", ["folder", "archive"])
def test_a_cache_on_a_full_disk_is_one_line(tmp_path: Path, data: str) -> None:
    """Decoding writes through a memory map, and a map's write to a full disk killed the process ("Bus error",
    no message); extracting an archive there said to copy the archive again."""
    folder = write_image_folder(tmp_path / "imgs", per_class=40, classes=2, fmt="jpg")
    source = folder if data == "folder" else make_archive(folder, tmp_path / "d.tar")
    cache = tmp_path / "cache"
    cache.mkdir()
    size = "200k" if data == "folder" else "64k"  # room for the lock files, not for the 80 decoded images (245 KB)
    run = with_small_filesystem("finetune", *TINY, "--data", f"folder:{source}", "--epochs", "1", "--cache-dir",
                                str(cache), "--out", str(tmp_path / "run"), mountpoint=str(cache), size=size)
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr[-2000:]
    assert run.stderr.startswith(f"error: no space left for {cache}") and "--cache-dir" in run.stderr


def test_truncated_archive(tmp_path: Path) -> None:
    archive = make_archive(write_image_folder(tmp_path / "d", per_class=2, classes=2), tmp_path / "d.tar.gz")
    archive.write_bytes(archive.read_bytes()[:200])
    with pytest.raises(UserError, match="could not be read"):
        load_data(DataOptions(spec=f"folder:{archive}", cache_dir=str(tmp_path / "c")))


@pytest.mark.skipif(not SHARED_CIFAR.is_file(), reason="the CIFAR-10 archive is not in ../shared/data")
def test_real_cifar10_archive(tmp_path: Path) -> None:
    data = load_data(DataOptions(spec=f"folder:{SHARED_CIFAR}", img_size=32, val_split=0.1,
                                 cache_dir=str(tmp_path / "c"), quiet=True))
    assert data.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert len(data.train) == 45_000 and len(data.val) == 5_000 and len(data.test) == 10_000
    assert data.train.images.shape[1:] == (32, 32, 3) and data.description["skipped_files"] == []
    assert torch.bincount(data.test.labels).tolist() == [1000] * 10


def test_too_few_images_to_hold_out_means_no_validation_split() -> None:
    # 0.1 of 4 images a class rounds to 0: an empty validation split would score 0 % and pick epochs by it
    data = load_data(DataOptions(spec="shapes:4", val_split=0.1))
    assert data.val is None and len(data.train) == 40
    assert data.description["val_from"].startswith("none") and data.description["val"] == 0


def test_train_subset_is_a_balanced_sample_outside_validation() -> None:
    full = load_data(DataOptions(spec="shapes:30", val_split=0.2))
    data = load_data(DataOptions(spec="shapes:30", val_split=0.2, train_subset=60))
    assert len(data.train) == 60 and torch.bincount(data.train.labels).tolist() == [6] * 10
    assert torch.equal(data.val.images, full.val.images) and len(data.test) == len(full.test)
    train_rows = {bytes(img.numpy()) for img in data.train.images}
    assert train_rows <= {bytes(img.numpy()) for img in full.train.images}
    assert not train_rows & {bytes(img.numpy()) for img in data.val.images}
    assert data.description["train"] == 60
    with pytest.raises(UserError, match="--train-subset"):
        load_data(DataOptions(spec="shapes:30", train_subset=-1))


def test_split_too_big_for_ram_stays_memory_mapped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vitcompress.datasets import decoded
    from vitcompress.loader import BatchLoader

    root = write_image_folder(tmp_path / "d", per_class=4, classes=2)
    opts = DataOptions(spec=f"folder:{root}", img_size=32, val_split=0, cache_dir=str(tmp_path / "c"))
    in_ram = load_data(opts)
    monkeypatch.setattr(decoded, "available_memory", lambda: 0)
    mapped = load_data(opts)
    assert torch.equal(in_ram.train.images, mapped.train.images)
    batches = [x for x, _ in BatchLoader(mapped.train, 3, torch.device("cpu"), shuffle=True, drop_last=False)]
    assert sum(len(x) for x in batches) == 8 and batches[0].dtype == torch.uint8


def test_train_subset_of_a_folder_with_val_decodes_only_the_sample(tmp_path: Path) -> None:
    """With a val/ split there is nothing to carve from train first, so --train-subset picks the files before
    decoding (for data too large to decode whole): the same images as sampling the decoded split."""
    root = write_image_folder(tmp_path / "d", per_class=8, classes=3, splits=("train", "val", "test"))
    whole = load_data(DataOptions(spec=f"folder:{root}", img_size=32, cache_dir=str(tmp_path / "c1"), seed=5))
    sampled = load_data(DataOptions(spec=f"folder:{root}", img_size=32, cache_dir=str(tmp_path / "c2"), seed=5,
                                    train_subset=6))
    _, expected = holdout_split(whole.train, 6 / 24, seed=5)
    assert torch.equal(sampled.train.images, expected.images) and torch.equal(sampled.train.labels, expected.labels)
    assert torch.bincount(sampled.train.labels).tolist() == [2, 2, 2] and len(sampled.val) == 24
    counts = {p.parent.name: int(p.read_text()) for p in (tmp_path / "c2" / "decoded").rglob("count.txt")}
    assert counts == {"train": 6, "val": 24, "test": 24}  # only the sample was decoded
    assert sampled.description["train_subset"] == "6 images, class-balanced, seed 5"


def test_two_commands_on_the_same_new_data_decode_it_once(tmp_path: Path) -> None:
    """Two runs started together (two terminals; torchrun ranks with their own disks): the second waits for the
    first's cache instead of decoding too and failing to rename its copy onto it."""
    root = write_image_folder(tmp_path / "d", per_class=100, classes=10, fmt="jpg")
    archive = make_archive(root, tmp_path / "d.tar")
    load = ("from vitcompress.data import DataOptions, load_data; "
            f"print(len(load_data(DataOptions(spec='folder:{archive}', img_size=32, cache_dir='{tmp_path / 'c'}')).train))")
    runs = [subprocess.Popen([sys.executable, "-c", load], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err[-500:] for _, err in outputs]
    assert [out.strip() for out, _ in outputs] == ["900", "900"]
    stderr = "".join(err for _, err in outputs)
    assert stderr.count("extracting") == 1 and stderr.count("images once at") == 1
    assert len([p for p in (tmp_path / "c" / "decoded").iterdir() if p.is_dir()]) == 1
