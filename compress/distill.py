"""Knowledge distillation as a loss the ``Trainer`` takes (finetune's teacher, prune recovery and QAT use it).

``soft``: KL divergence between temperature-softened teacher and student distributions, scaled by
T² (Hinton et al.); ``hard``: cross-entropy against the teacher's top-1 (DeiT). The total loss is
``(1 - alpha) * task_loss + alpha * kd_loss``, plus ``layers * hidden_loss`` when hidden-state distillation is on:
each transformer block's output in the student against the same block's in the teacher (TinyBERT-style), as the
mean squared error over the teacher's mean square, so every block weighs alike. Pruning heads and MLP channels
keeps every block's output width, so a pruned student and its unpruned teacher compare block by block.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vitcompress.errors import require
from vitcompress.models import attention_blocks


class BlockOutputs:
    """Records each transformer block's output of ``model``; with ``training_only``, only in training mode (the
    student: its validation passes are left alone). :meth:`take` hands them over."""

    def __init__(self, model: nn.Module, training_only: bool) -> None:
        self.outputs: list[torch.Tensor] = []
        self.training_only = training_only
        self.blocks = attention_blocks(model)
        self._hooks = [b.register_forward_hook(self._record) for b in self.blocks]

    def _record(self, module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        if module.training or not self.training_only:
            self.outputs.append(output)

    def take(self) -> list[torch.Tensor]:
        taken, self.outputs = self.outputs, []
        return taken

    def remove(self) -> None:
        """Take the hooks off the blocks (left on, they would keep every later forward's outputs)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks, self.outputs = [], []


def hidden_state_loss(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """Mean over blocks of MSE(student, teacher) / mean square of teacher: 0 when the blocks agree."""
    losses = [F.mse_loss(s.float(), t.float()) / t.float().pow(2).mean().clamp_min(1e-12)
              for s, t in zip(student, teacher, strict=True)]
    return torch.stack(losses).mean()


class DistillationLoss(nn.Module):
    """Mixes the task loss with a distillation loss from a frozen ``teacher``."""

    def __init__(self, teacher: nn.Module, mode: str = "soft", temperature: float = 2.0, alpha: float = 0.5,
                 layers: float = 0.0, student: nn.Module | None = None, teacher_body: nn.Module | None = None) -> None:
        """``layers``: weight of hidden-state distillation between ``student``'s blocks and the teacher's (those of
        ``teacher_body`` when ``teacher`` wraps the model, as finetune's ``TeacherView`` does)."""
        super().__init__()
        if mode not in ("soft", "hard"):  # "none" (config.KD_CHOICES) means: no DistillationLoss at all
            raise ValueError(f"distillation mode {mode!r}")
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad = False
        self.mode, self.temperature, self.alpha, self.layers = mode, temperature, alpha, layers
        self.student_blocks = self.teacher_blocks = None
        if layers:
            self.student_blocks = BlockOutputs(student, training_only=True)
            self.teacher_blocks = BlockOutputs(teacher_body or teacher, training_only=False)
            require(len(self.student_blocks.blocks) == len(self.teacher_blocks.blocks) > 0,
                    f"--kd-layers compares blocks one to one, and the student has {len(self.student_blocks.blocks)} "
                    f"transformer blocks, the teacher {len(self.teacher_blocks.blocks)}",
                    "use --kd-layers 0 (logits only) with a teacher of another architecture")

    def train(self, mode: bool = True) -> DistillationLoss:  # the teacher always stays in eval mode
        return self

    def close(self) -> None:
        """Take the hidden-state hooks off the student and the teacher, once training with this loss is over: the
        same teacher teaches again in the next ``--iterative`` step, and the student goes on to other stages."""
        for recorder in (self.student_blocks, self.teacher_blocks):
            if recorder is not None:
                recorder.remove()

    def forward(self, inputs: torch.Tensor, student_logits: torch.Tensor, task_loss: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = self.teacher(inputs).float()
        if self.mode == "soft":
            t = self.temperature
            kd = F.kl_div(F.log_softmax(student_logits / t, dim=-1), F.log_softmax(teacher_logits / t, dim=-1),
                          reduction="batchmean", log_target=True) * (t * t)
        else:
            kd = F.cross_entropy(student_logits, teacher_logits.argmax(dim=-1))
        loss = (1 - self.alpha) * task_loss + self.alpha * kd
        if self.layers:
            loss = loss + self.layers * hidden_state_loss(self.student_blocks.take(), self.teacher_blocks.take())
        return loss
