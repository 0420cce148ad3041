"""Mistakes a user can make: one clear line on stderr, exit status 2, no traceback, nothing written."""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import SMALL_FILESYSTEMS, TINY, random_image, run_cli, with_small_filesystem, write_image_folder
from vitcompress.errors import is_out_of_memory, storage_error
from vitcompress.fsutil import write_torch


def assert_clean_failure(capsys: pytest.CaptureFixture, args: list, *needles: str) -> str:
    code = run_cli(*args)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def finetune_args(out: Path, *extra: str, data: str = "shapes") -> list:
    return ["finetune", *TINY, "--data", data, "--epochs", "1", "--out", out, *extra]


@pytest.mark.parametrize("extra, needle", [
    (["--epochs", "0"], "--epochs 0"),
    (["--lr", "-0.1"], "--lr -0.1"),
    (["--time-budget", "-5"], "--time-budget -5"),
    (["--checkpoint-interval", "-1"], "--checkpoint-interval -1"),
    (["--compile-mode", "reduce-overhead"], "needs --compile"),
    (["--batch-size", "0"], "--batch-size 0"),
    (["--val-split", "1.5"], "--val-split"),
    (["--layer-decay", "0"], "--layer-decay"),
    (["--model", "vit_tinyy_patch16_224"], "unknown model"),
    (["--model", "vit_tiny_patch16_224.no_such_tag"], "use one of: vit_tiny_patch16_224.augreg_in21k"),
    (["--model", "hf-hub:timm/vit_tiny_patch16_224.augreg_in21k"], "--model vit_tiny_patch16_224.augreg_in21k"),
    (["--model", "hf-hub:someone/their-vit"], "--init-checkpoint"),
    (["--model-kwargs", "depth"], "key=value"),
    (["--img-size", "0"], "--img-size 0"),
    (["--patch-size", "64"], "does not fit --img-size 32"),
    (["--model-kwargs", "no_such_kwarg=1"], "does not accept"),
    (["--model-kwargs", "depth=2,img_size=64"], "comes from --img-size"),
    (["--freeze-blocks", "5"], "more than the model's 2 blocks"),
    (["--amp", "fp16", "--device", "cpu"], "fp16 needs a CUDA device"),
    (["--resume"], "nothing to resume"),
    (["--batch-size", "100000"], "more than the"),
    (["--img-size", "100000"], "tokens per image"),
    (["--model-kwargs", "depth=-1"], "could not create model"),
    (["--model-kwargs", "embed_dim=0"], "could not create model"),
    (["--model", "resnet18"], "resnet18 is a CNN, it has no patches"),  # a CNN trains, but --patch-size is refused
])
def test_bad_numbers_and_names(tmp_path: Path, capsys: pytest.CaptureFixture, extra: list, needle: str) -> None:
    out = tmp_path / "out"
    assert_clean_failure(capsys, finetune_args(out, *extra), needle)
    assert not out.exists()


def test_cuda_requested_without_cuda(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert_clean_failure(capsys, finetune_args(tmp_path / "out", "--device", "cuda"), "CUDA is not available")


@pytest.mark.parametrize("spec, needle", [
    ("folder:/no/such/dir", "does not exist"),
    ("imagenet", "unknown data spec"),
    ("cifar10", "CIFAR-10 not found"),
])
def test_bad_data_specs(tmp_path: Path, capsys: pytest.CaptureFixture, spec: str, needle: str) -> None:
    out = tmp_path / "out"
    assert_clean_failure(capsys, finetune_args(out, "--data-dir", str(tmp_path / "nocifar"), data=spec), needle)
    assert not out.exists()


def test_empty_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    assert_clean_failure(capsys, finetune_args(tmp_path / "out", data=f"folder:{tmp_path / 'empty'}"), "no train/")
    (tmp_path / "empty" / "train").mkdir()
    (tmp_path / "empty" / "test").mkdir()
    assert_clean_failure(capsys, finetune_args(tmp_path / "out", data=f"folder:{tmp_path / 'empty'}"), "no class folders")


def test_folder_without_eval_split(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = write_image_folder(tmp_path / "d", splits=("train",))
    assert_clean_failure(capsys, finetune_args(tmp_path / "out", data=f"folder:{root}"), "has train/ but neither val/")


def test_train_and_test_classes_differ(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = write_image_folder(tmp_path / "d")
    shutil.rmtree(root / "test" / "square")
    (root / "test" / "hexagon").mkdir()
    random_image(root / "test" / "hexagon" / "a.png")
    line = assert_clean_failure(capsys, finetune_args(tmp_path / "out", data=f"folder:{root}"), "classes differ")
    assert "square" in line and "hexagon" in line


def test_existing_output_needs_force(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert_clean_failure(capsys, finetune_args(out), "already exists", "--force")
    assert (out / "keep.txt").read_text() == "precious"


def test_checkpoint_that_is_not_weights(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bogus = tmp_path / "notes.pth"
    bogus.write_text("these are not weights")
    assert_clean_failure(capsys, finetune_args(tmp_path / "out", "--init-checkpoint", bogus), "notes.pth")
    missing = tmp_path / "missing.safetensors"
    assert_clean_failure(capsys, finetune_args(tmp_path / "out", "--init-checkpoint", missing), "does not exist")


def test_truncated_checkpoints(tmp_path: Path, capsys: pytest.CaptureFixture, shapes_artifact: Path) -> None:
    data = (shapes_artifact / "model.safetensors").read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    assert_clean_failure(capsys, finetune_args(tmp_path / "out", "--init-checkpoint", cut), "cut.safetensors")
    pth = tmp_path / "full.pth"
    torch.save({"w": torch.randn(1000)}, pth)
    cut_pth = tmp_path / "cut.pth"
    cut_pth.write_bytes(pth.read_bytes()[:600])
    assert_clean_failure(capsys, finetune_args(tmp_path / "out", "--init-checkpoint", cut_pth), "truncated")
    assert not (tmp_path / "out").exists()


def test_checkpoint_for_another_model(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    other = tmp_path / "other.safetensors"
    save_file({"blocks.0.attn.qkv.weight": torch.zeros(3, 3)}, str(other))
    assert_clean_failure(capsys, finetune_args(tmp_path / "out", "--init-checkpoint", other), "does not match")


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path(_Payload.marker),))


def test_pickle_is_never_executed(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _Payload.marker = str(tmp_path / "pwned")
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"state_dict": _Payload()}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no warning printed beside the one error line
        assert_clean_failure(capsys, finetune_args(tmp_path / "out", "--init-checkpoint", evil), "refused")
    assert not (tmp_path / "pwned").exists()


def test_pretrained_offline(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert_clean_failure(capsys, finetune_args(tmp_path / "out", "--pretrained"),
                         "could not load pretrained weights", "--init-checkpoint")


def test_eval_and_info_on_non_artifacts(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert_clean_failure(capsys, ["info", tmp_path], "neither an artifact nor an export")
    assert_clean_failure(capsys, ["eval", tmp_path / "nope", "--data", "shapes"], "neither an artifact nor an export")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "vitcompress.json").write_text("{not json")
    assert_clean_failure(capsys, ["info", broken], "corrupt")
    assert_clean_failure(capsys, ["eval", broken, "--data", "shapes"], "corrupt")
    broken_export = tmp_path / "broken-export"
    broken_export.mkdir()
    (broken_export / "export.json").write_text("{not json")
    assert_clean_failure(capsys, ["eval", broken_export, "--data", "shapes"], "corrupt")
    assert_clean_failure(capsys, ["info", broken_export], "corrupt")


def test_eval_class_mismatch(tmp_path: Path, capsys: pytest.CaptureFixture, shapes_artifact: Path) -> None:
    root = write_image_folder(tmp_path / "d", classes=3)
    decoded = Path(os.environ["VITCOMPRESS_CACHE"]) / "decoded"
    before = set(decoded.iterdir()) if decoded.exists() else set()
    assert_clean_failure(capsys, ["eval", shapes_artifact, "--data", f"folder:{root}"], "10 classes", "3 classes")
    after = set(decoded.iterdir()) if decoded.exists() else set()
    assert after == before  # refused after the directory scan, before decoding anything


def test_cifar10_download_without_network(tmp_path: Path, capsys: pytest.CaptureFixture,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib.error

    import torchvision.datasets.cifar as tv_cifar

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", offline)
    out = tmp_path / "out"
    assert_clean_failure(capsys, finetune_args(out, "--download", "--data-dir", str(tmp_path / "cifar"), data="cifar10"),
                         "could not download CIFAR-10", "folder:PATH")
    assert not out.exists()


def prune_args(src: Path, out: Path, *extra: str) -> list:
    return ["prune", src, "--out", out, "--finetune-epochs", "0", "--quiet", *extra]


@pytest.mark.parametrize("extra, needle", [
    (["--heads", "1.0"], "--heads 1 is not in [0, 1)"),
    (["--heads", "-0.1"], "--heads -0.1 is not in [0, 1)"),
    (["--mlp", "1.5"], "--mlp 1.5 is not in [0, 1)"),
    (["--heads", "0.75"], "would remove all 2 heads of block 0"),
    (["--heads", "0.75", "--global"], "leaving some of the 2 blocks with none"),
    (["--iterative", "0"], "--iterative 0"),
    (["--kd-alpha", "2"], "--kd-alpha 2"),
    (["--finetune-epochs", "1", "--lr", "0"], "--lr 0"),
])
def test_prune_bad_numbers(tmp_path: Path, capsys: pytest.CaptureFixture, shapes_artifact: Path, extra: list,
                           needle: str) -> None:
    out = tmp_path / "out"
    assert_clean_failure(capsys, prune_args(shapes_artifact, out, *extra), needle)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_prune_bad_sources(tmp_path: Path, capsys: pytest.CaptureFixture, shapes_artifact: Path) -> None:
    out = tmp_path / "out"
    assert_clean_failure(capsys, prune_args(tmp_path / "missing", out, "--heads", "0.5"), "not a vitcompress artifact")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(shapes_artifact, corrupt)
    (corrupt / "model.safetensors").write_bytes(b"\x00" * 100)
    assert_clean_failure(capsys, prune_args(corrupt, out, "--heads", "0.5"), "unreadable")
    quantized = tmp_path / "quantized"
    shutil.copytree(shapes_artifact, quantized)
    meta = json.loads((quantized / "vitcompress.json").read_text())
    meta["model"]["quantization"] = {"method": "max"}
    (quantized / "vitcompress.json").write_text(json.dumps(meta))
    assert_clean_failure(capsys, prune_args(quantized, out, "--heads", "0.5"), "already quantized")
    assert_clean_failure(capsys, prune_args(shapes_artifact, shapes_artifact, "--heads", "0.5"), "already exists")
    assert not out.exists()


def test_prune_model_without_heads(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from vitcompress.artifact import ArtifactMeta, write_artifact
    from vitcompress.models import create_model

    kwargs = {"num_classes": 10}
    meta = ArtifactMeta(stage="finetune", model_name="test_resnet", model_kwargs=kwargs, classes=list("abcdefghij"),
                        img_size=32, mean=[0.5] * 3, std=[0.5] * 3, data={"spec": "shapes"})
    write_artifact(tmp_path / "cnn", create_model("test_resnet", kwargs), meta)
    assert_clean_failure(capsys, prune_args(tmp_path / "cnn", tmp_path / "out", "--heads", "0.5"), "does not have the ViT layout")
    assert not (tmp_path / "out").exists()


def qat_args(src: Path, out: Path, *extra: str) -> list:
    return ["qat", src, "--out", out, "--epochs", "0", "--quiet", *extra]


@pytest.mark.parametrize("extra, needle", [
    (["--calib-size", "0"], "--calib-size 0"),
    (["--calib-size", "100000"], "more than the 4500 training images"),
    (["--percentile", "120"], "--percentile 120"),
    (["--epochs", "-1"], "--epochs -1"),
])
def test_qat_bad_options(tmp_path: Path, capsys: pytest.CaptureFixture, shapes_artifact: Path, extra: list,
                         needle: str) -> None:
    out = tmp_path / "out"
    assert_clean_failure(capsys, qat_args(shapes_artifact, out, *extra), needle)
    assert not list(tmp_path.iterdir())


def test_qat_bad_sources(tmp_path: Path, capsys: pytest.CaptureFixture, shapes_artifact: Path) -> None:
    out = tmp_path / "out"
    quantized = tmp_path / "quantized"
    assert run_cli(*qat_args(shapes_artifact, quantized, "--calib-size", "64")) == 0
    capsys.readouterr()
    assert_clean_failure(capsys, qat_args(quantized, out), "already quantized")
    assert_clean_failure(capsys, prune_args(quantized, out, "--heads", "0.5"), "already quantized")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(shapes_artifact, corrupt)
    (corrupt / "model.safetensors").write_bytes(b"\x00" * 100)
    assert_clean_failure(capsys, qat_args(corrupt, out), "unreadable")
    assert_clean_failure(capsys, qat_args(tmp_path / "missing", out), "not a vitcompress artifact")
    assert_clean_failure(capsys, qat_args(shapes_artifact, quantized), "already exists")
    assert not out.exists()


@pytest.mark.parametrize(("command", "flag"), [("prune", "--criterion"), ("qat", "--calib-method")])
def test_unknown_choice_is_one_line(capsys: pytest.CaptureFixture, shapes_artifact: Path, command: str, flag: str) -> None:
    with pytest.raises(SystemExit) as exc:
        run_cli(command, shapes_artifact, flag, "nope", "--out", "x")
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: argument {flag}: invalid choice")


@pytest.mark.parametrize("command", ["export", "bench"])
def test_an_export_or_bench_being_written_is_not_replaced(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                          shapes_artifact: Path, command: str) -> None:
    """Another live process holds OUT.tmp-<command>'s lock: --force must not delete what it is building."""
    out = tmp_path / "out"
    staging = tmp_path / f"out.tmp-{command}"
    staging.mkdir()
    (staging / "half-written").write_text("the live run's")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from filelock import FileLock; "
                               f"lock = FileLock({str(staging / '.lock')!r}); lock.acquire(); print('held', flush=True); "
                               "time.sleep(120)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        args = ["export", shapes_artifact] if command == "export" else ["bench", shapes_artifact, "--backends", "torch"]
        assert_clean_failure(capsys, [*args, "--out", out, "--force"], f"another vitcompress run is writing {out} now")
        assert (staging / "half-written").is_file() and not out.exists()
    finally:
        holder.kill()
        holder.wait()
    assert run_cli(*args, "--out", out, "--force", "--quiet") == 0  # the holder is gone: its leftovers are replaced
    assert out.is_dir() and not staging.exists() and not (out / ".lock").exists()


@SMALL_FILESYSTEMS
def test_a_full_disk_is_one_line_and_publishes_nothing(tmp_path: Path, shapes_artifact: Path) -> None:
    """An --out on a disk with 300 KB free: the weights do not fit (safetensors says so in its own error type)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    run = with_small_filesystem("finetune", *TINY, "--data", "shapes", "--epochs", "1", "--out", str(disk / "run"),
                                mountpoint=str(disk), size="300k")
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr[-2000:]
    assert run.stderr.startswith("error: no space left for ") and "No space left on device" in run.stderr
    assert "--out" in run.stderr and not (disk / "run").exists()


@SMALL_FILESYSTEMS
def test_an_out_that_cannot_be_written_is_one_line(tmp_path: Path, shapes_artifact: Path) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    run = with_small_filesystem("export", str(shapes_artifact), "--out", str(disk / "onnx"), "--quiet",
                                mountpoint=str(disk), read_only=True)
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr[-2000:]
    assert f"cannot use {disk / 'onnx'}" in run.stderr and "Read-only file system" in run.stderr


def test_torch_s_failed_write_on_a_full_disk_is_an_os_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.save's own error names no cause; with the disk full it is the OSError the CLI reports in one line."""
    def failing_save(*_args, **_kwargs) -> None:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", failing_save)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(1 << 30, 1 << 30, 0))
    with pytest.raises(OSError) as full:
        write_torch({}, tmp_path / "checkpoint.pt")
    assert full.value.errno == errno.ENOSPC and storage_error(full.value) is not None
    monkeypatch.setattr(shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(1 << 30, 0, 1 << 30))
    with pytest.raises(RuntimeError, match="unexpected pos"):  # room on the disk: not a full disk, a bug
        write_torch({}, tmp_path / "checkpoint.pt")
    assert list(tmp_path.iterdir()) == []  # nothing half-written left either way


@pytest.mark.parametrize(("exc", "expected"), [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
    (RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory for requested buffer"), True),
    (MemoryError(), True),
    (RuntimeError("shape mismatch"), False),
])
def test_out_of_memory_is_told_from_other_failures(exc: BaseException, expected: bool) -> None:
    assert is_out_of_memory(exc) is expected
