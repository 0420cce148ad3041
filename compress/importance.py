"""Importance criteria for attention heads and MLP channels: a small registry of named classes.

Every criterion scores *units* (the heads of one block, or its MLP hidden channels) from the same
:class:`UnitStats`: each unit's parameters as one row, their gradients from a few batches of data
(when the criterion needs them), the mean L2 norm of each unit's output on data (the input of
``attn.proj`` is the heads side by side; the input of ``fc2`` is the hidden channels), and the squared
gradient of each sample's loss with respect to a gate on each unit's output. Higher means keep. A new
criterion is one class here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class UnitStats:
    """What the criteria see of one group of units."""

    weights: torch.Tensor  # units x params
    grads: torch.Tensor | None = None  # units x params, summed over the scoring batches
    activations: torch.Tensor | None = None  # units: mean L2 norm of each unit's output
    gate_fisher: torch.Tensor | None = None  # units: sum over samples of (d loss / d gate on the unit's output)^2
    seed: int = 0


class Criterion:
    """Scores units; ``needs_grads`` / ``needs_activations`` say what data must be run first."""

    needs_grads = False
    needs_activations = False
    needs_gate_fisher = False

    @property
    def needs_data(self) -> bool:
        return self.needs_grads or self.needs_activations or self.needs_gate_fisher

    def score(self, stats: UnitStats) -> torch.Tensor:
        raise NotImplementedError


class L1(Criterion):

    def score(self, stats: UnitStats) -> torch.Tensor:
        return stats.weights.abs().sum(1)


class L2(Criterion):

    def score(self, stats: UnitStats) -> torch.Tensor:
        return stats.weights.pow(2).sum(1).sqrt()


class Taylor(Criterion):
    """First-order Taylor estimate of the loss change, ``|w * dL/dw|`` summed over the unit."""

    needs_grads = True

    def score(self, stats: UnitStats) -> torch.Tensor:
        return (stats.weights * stats.grads).abs().sum(1)


class Fisher(Criterion):
    """The diagonal Fisher information of a gate on each unit's output: ``sum over samples of (dL/dg)^2`` at
    ``g = 1``, the expected loss increase, to second order, of removing the unit (Michel et al. 2019, "Are Sixteen
    Heads Really Better than One?"; Kwon et al. 2022). Per sample, so that gradients of opposite sign across
    samples do not cancel as they do in a batch's summed gradient."""

    needs_gate_fisher = True

    def score(self, stats: UnitStats) -> torch.Tensor:
        return stats.gate_fisher


class AttentionOutput(Criterion):
    """Mean L2 norm of the unit's output on data (per head: its slice of ``attn.proj``'s input)."""

    needs_activations = True

    def score(self, stats: UnitStats) -> torch.Tensor:
        return stats.activations


class Random(Criterion):

    def score(self, stats: UnitStats) -> torch.Tensor:
        gen = torch.Generator().manual_seed(stats.seed)
        return torch.rand(stats.weights.shape[0], generator=gen)


CRITERIA: dict[str, type[Criterion]] = {
    "l1": L1,
    "l2": L2,
    "taylor": Taylor,
    "fisher": Fisher,
    "attention": AttentionOutput,
    "random": Random,
}
