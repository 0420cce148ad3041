"""Knowledge distillation as a loss the ``Trainer`` takes (prune recovery and QAT use it).

``soft``: KL divergence between temperature-softened teacher and student distributions, scaled by
T² (Hinton et al.); ``hard``: cross-entropy against the teacher's top-1 (DeiT). The total loss is
``(1 - alpha) * task_loss + alpha * kd_loss``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DistillationLoss(nn.Module):
    """Mixes the task loss with a distillation loss from a frozen ``teacher``."""

    def __init__(self, teacher: nn.Module, mode: str = "soft", temperature: float = 2.0, alpha: float = 0.5) -> None:
        super().__init__()
        if mode not in ("soft", "hard"):  # "none" (config.KD_CHOICES) means: no DistillationLoss at all
            raise ValueError(f"distillation mode {mode!r}")
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad = False
        self.mode, self.temperature, self.alpha = mode, temperature, alpha

    def train(self, mode: bool = True) -> DistillationLoss:  # the teacher always stays in eval mode
        return self

    def forward(self, inputs: torch.Tensor, student_logits: torch.Tensor, task_loss: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = self.teacher(inputs).float()
        if self.mode == "soft":
            t = self.temperature
            kd = F.kl_div(F.log_softmax(student_logits / t, dim=-1), F.log_softmax(teacher_logits / t, dim=-1),
                          reduction="batchmean", log_target=True) * (t * t)
        else:
            kd = F.cross_entropy(student_logits, teacher_logits.argmax(dim=-1))
        return (1 - self.alpha) * task_loss + self.alpha * kd
