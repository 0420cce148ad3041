"""finetune --teacher (DeiT-style training): the loss uses the teacher, distilled students keep two heads, CNN
teachers train and are refused where a stage needs a transformer, bad teachers are one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.conftest import TINY, run_cli, write_image_folder
from tests.test_bad_input import assert_clean_failure
from vitcompress.artifact import load_model
from vitcompress.augment import BatchTransform
from vitcompress.compress.distill import DistillationLoss
from vitcompress.compress.teacher import TeacherView
from vitcompress.config import TrainConfig
from vitcompress.datasets.imageset import DataSplits
from vitcompress.datasets.shapes import generate
from vitcompress.distributed import DistContext
from vitcompress.models import create_model
from vitcompress.train import Trainer, class_and_distillation_logits

DISTILLED = ["--model", "deit_tiny_distilled_patch16_224", *TINY[2:]]  # TINY's shape, with a distillation token
CNN = ["--model", "resnet10t", "--img-size", "32", "--drop-path", "0", "--lr", "3e-3", "--batch-size", "64", "--quiet"]


class ConstantTeacher(nn.Module):
    """Says ``label`` for every image."""

    def __init__(self, label: int, classes: int = 10) -> None:
        super().__init__()
        self.label, self.classes = label, classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.one_hot(torch.full((len(x),), self.label), self.classes).float() * 10


@pytest.fixture(scope="module")
def cnn_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A timm CNN trained by finetune on `shapes` (the kind of teacher DeiT used)."""
    out = tmp_path_factory.mktemp("teacher") / "cnn"
    assert run_cli("finetune", *CNN, "--data", "shapes", "--epochs", "3", "--out", out) == 0
    return out


def test_distillation_loss_is_the_teacher_top1_cross_entropy() -> None:
    student = torch.randn(6, 10)
    hard = DistillationLoss(ConstantTeacher(3), "hard", alpha=1.0)(torch.zeros(6, 3, 8, 8), student, torch.tensor(9.0))
    assert torch.allclose(hard, F.cross_entropy(student, torch.full((6,), 3)))
    soft = DistillationLoss(ConstantTeacher(3), "soft", temperature=1.0, alpha=1.0)
    matched = soft(torch.zeros(6, 3, 8, 8), ConstantTeacher(3)(torch.zeros(6)), torch.tensor(9.0))
    assert matched.abs() < 1e-5  # a student that says what the teacher says owes nothing


def test_distilled_student_learns_the_teacher_through_its_distillation_token(tmp_path: Path) -> None:
    """A teacher that says 'class 3' for every image: the distillation head learns to say it, the class head learns
    the labels; in eval the model averages the two heads, as timm's DeiT does."""
    torch.manual_seed(0)
    data = generate(8, seed=0)
    model = create_model("deit_tiny_distilled_patch16_224", {"num_classes": 10, "img_size": 32, "patch_size": 8,
                                                             "depth": 2, "embed_dim": 64, "num_heads": 2})
    model.set_distilled_training(True)
    loss = DistillationLoss(ConstantTeacher(3), "hard", alpha=0.5)
    cfg = TrainConfig(epochs=6, batch_size=16, lr=3e-3, quiet=True)
    transform = BatchTransform(32, [0.5] * 3, [0.5] * 3)
    trainer = Trainer(model, DataSplits(data, None, data, data.classes, {}), cfg, transform, DistContext(), tmp_path,
                      distill=loss)
    trainer.fit()
    x = transform.eval(data.images[:40])
    model.train()
    with torch.no_grad():
        class_logits, distill_logits = class_and_distillation_logits(model(x))
        model.eval()
        averaged = model(x)
    assert (distill_logits.argmax(1) == 3).float().mean() >= 0.9  # the teacher's answer
    labels = data.labels[:40]
    assert (class_logits.argmax(1) == labels).float().mean() > (distill_logits.argmax(1) == labels).float().mean()
    torch.testing.assert_close(averaged, (class_logits + distill_logits) / 2)


def test_teacher_sees_its_own_size_and_normalisation() -> None:
    seen = []

    class Probe(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x)
            return x.mean(dim=(2, 3))

    student = BatchTransform(32, [0.5] * 3, [0.25] * 3)
    view = TeacherView(Probe(), student, 64, [0.0] * 3, [1.0] * 3)
    pixels = torch.rand(2, 3, 32, 32)
    view((pixels - 0.5) / 0.25)
    assert seen[0].shape == (2, 3, 64, 64)
    torch.testing.assert_close(seen[0], F.interpolate(pixels, size=(64, 64), mode="bilinear"), atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def taught_student(cnn_teacher: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("student") / "deit"
    assert run_cli("finetune", *DISTILLED, "--data", "shapes", "--epochs", "2", "--teacher", cnn_teacher,
                   "--distill", "soft", "--out", out) == 0
    return out


def assert_two_heads_averaged(artifact: Path) -> None:
    model, meta = load_model(artifact)
    x = torch.randn(4, 3, meta.img_size, meta.img_size)
    with torch.no_grad():
        tokens = model.forward_features(x)
        both = (model.head(tokens[:, 0]) + model.head_dist(tokens[:, 1])) / 2
        torch.testing.assert_close(model(x), both)


def test_finetune_with_a_cnn_teacher_artifact(cnn_teacher: Path, taught_student: Path) -> None:
    meta = json.loads((cnn_teacher / "vitcompress.json").read_text())
    assert "img_size" not in meta["model"]["kwargs"]  # a CNN runs at any size
    assert meta["metrics"]["top1"] > 0.2  # well above chance (0.1)
    recipe = json.loads((taught_student / "vitcompress.json").read_text())["recipe"]
    assert recipe["teacher"] == str(cnn_teacher) and recipe["kd"]["distill"] == "soft"
    assert_two_heads_averaged(taught_student)


def test_prune_and_qat_of_a_distilled_student_keep_both_heads(taught_student: Path, tmp_path: Path) -> None:
    pruned, int8 = tmp_path / "pruned", tmp_path / "int8"
    assert run_cli("prune", taught_student, "--heads", "0.5", "--finetune-epochs", "1", "--quiet", "--out", pruned) == 0
    assert run_cli("qat", pruned, "--epochs", "0", "--calib-size", "64", "--quiet", "--out", int8) == 0
    for artifact in (pruned, int8):
        assert_two_heads_averaged(artifact)


def test_cnn_is_refused_where_a_transformer_is_needed(cnn_teacher: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    assert_clean_failure(capsys, ["qat", cnn_teacher, "--epochs", "0", "--out", tmp_path / "q"], "not a transformer")
    assert_clean_failure(capsys, ["prune", cnn_teacher, "--heads", "0.5", "--out", tmp_path / "p"])
    assert not (tmp_path / "q").exists() and not (tmp_path / "p").exists()


def test_teacher_of_other_classes_is_refused(cnn_teacher: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = write_image_folder(tmp_path / "three", classes=3)
    out = tmp_path / "student"
    assert_clean_failure(capsys, ["finetune", *TINY, "--data", f"folder:{folder}", "--epochs", "1", "--teacher",
                                  cnn_teacher, "--out", out], "classes")
    assert not out.exists()


@pytest.mark.parametrize("extra, needle", [
    (["--teacher", "resnet18"], "--teacher-checkpoint"),
    (["--teacher", "resnet18", "--distill", "none"], "--distill none"),
    (["--teacher-checkpoint", "w.safetensors"], "needs --teacher"),
])
def test_teacher_mistakes_are_one_line(extra: list[str], needle: str, tmp_path: Path,
                                       capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "student"
    assert_clean_failure(capsys, ["finetune", *TINY, "--data", "shapes", "--epochs", "1", *extra, "--out", out], needle)
    assert not out.exists()
