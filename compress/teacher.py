"""The teacher of ``finetune --teacher`` (DeiT-style training): any artifact, a CNN trained by ``finetune --model
resnet18`` included, or a timm model with ``--teacher-checkpoint``. It sees each training batch as its own
preprocessing expects, so a teacher trained at another size or normalisation than the student still teaches."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from timm.data import resolve_data_config
from torch import Tensor, nn

from vitcompress.artifact import META_FILE, load_model
from vitcompress.augment import BatchTransform
from vitcompress.errors import UserError, require
from vitcompress.models import build_kwargs, create_model, load_init_checkpoint


class TeacherView(nn.Module):
    """A frozen ``model`` fed the student's batch (normalised for the student): back to pixels, resized to the
    teacher's image size and normalised with the teacher's mean and std, when any of them differs."""

    def __init__(self, model: nn.Module, student: BatchTransform, img_size: int, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.img_size = img_size
        self.same_input = img_size == student.img_size and list(mean) == list(student.mean_rgb) and list(std) == list(
            student.std_rgb)
        for name, values in (("student_mean", student.mean_rgb), ("student_std", student.std_rgb), ("mean", mean),
                             ("std", std)):
            self.register_buffer(name, torch.tensor(values, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if not self.same_input:
            pixels = x * self.student_std + self.student_mean
            if pixels.shape[-1] != self.img_size:
                pixels = F.interpolate(pixels, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False)
            x = (pixels - self.mean) / self.std
        return self.model(x)

    def train(self, mode: bool = True) -> TeacherView:  # the teacher always stays in eval mode
        return self


def load_teacher(spec: str, checkpoint: str | None, classes: list[str], student: BatchTransform) -> TeacherView:
    """The teacher ``spec`` names: an artifact directory, or a timm model name whose weights are ``checkpoint``.

    Raises:
        UserError: the teacher's classes are not the data's, or a timm name came without its checkpoint.
    """
    if (Path(spec) / META_FILE).is_file():
        require(checkpoint is None, f"--teacher {spec} is an artifact, which holds its own weights",
                "leave --teacher-checkpoint out (it goes with a timm model name)")
        model, meta = load_model(spec)
        require(list(meta.classes) == list(classes),
                f"teacher {spec} knows {len(meta.classes)} classes ({', '.join(meta.classes[:4])}...), "
                f"the data has {len(classes)} ({', '.join(classes[:4])}...)",
                "pass a teacher trained on the same classes, in the same order")
        return TeacherView(model, student, meta.img_size, meta.mean, meta.std)
    if Path(spec).exists():
        raise UserError(f"--teacher {spec} is not an artifact (it has no {META_FILE})",
                        "pass an artifact directory written by vitcompress, or a timm model name with "
                        "--teacher-checkpoint FILE")
    require(checkpoint is not None, f"--teacher {spec} is a model name without weights",
            f"add --teacher-checkpoint FILE: {spec}'s weights trained on the data's {len(classes)} classes")
    model = create_model(spec, build_kwargs(len(classes), student.img_size, None, {}, spec))
    load_init_checkpoint(model, checkpoint, same_classes=True)
    data_cfg = resolve_data_config({}, model=model)
    return TeacherView(model, student, student.img_size, list(data_cfg["mean"]), list(data_cfg["std"]))
