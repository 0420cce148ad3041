"""Collect what the importance criteria need (weights, gradients, unit outputs) and score every block."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vitcompress.compress.importance import Criterion, UnitStats
from vitcompress.compress.surgery import blocks_of, head_dim

Getter = Callable[[torch.Tensor], torch.Tensor | None]


@dataclass
class BlockScores:
    """Importance of each head and each MLP hidden channel, per block (higher: keep)."""

    heads: list[torch.Tensor]
    mlp: list[torch.Tensor]


def _rows(parts: Iterable[torch.Tensor | None]) -> torch.Tensor:
    return torch.cat([p.detach().float().cpu() for p in parts if p is not None], dim=1)


def head_rows(attn: nn.Module, get: Getter) -> torch.Tensor | None:
    """Each head's parameters (q/k/v rows and biases, proj columns) as one row: heads x params."""
    h, d = attn.num_heads, head_dim(attn)
    qkv_w = get(attn.qkv.weight)
    if qkv_w is None:
        return None
    parts = [qkv_w.reshape(3, h, d, -1).permute(1, 0, 2, 3).reshape(h, -1)]
    if attn.qkv.bias is not None:
        parts.append(_maybe(get(attn.qkv.bias), lambda b: b.reshape(3, h, d).permute(1, 0, 2).reshape(h, -1)))
    for name in ("q_bias", "v_bias"):
        if isinstance(getattr(attn, name, None), nn.Parameter):
            parts.append(_maybe(get(getattr(attn, name)), lambda b: b.reshape(h, d)))
    parts.append(_maybe(get(attn.proj.weight), lambda w: w.reshape(w.shape[0], h, d).permute(1, 0, 2).reshape(h, -1)))
    return _rows(parts)


def mlp_rows(mlp: nn.Module, get: Getter) -> torch.Tensor | None:
    """Each hidden channel's parameters (fc1 row and bias, fc2 column) as one row: channels x params."""
    if get(mlp.fc1.weight) is None:
        return None
    parts = [get(mlp.fc1.weight), _maybe(get(mlp.fc1.bias) if mlp.fc1.bias is not None else None, lambda b: b[:, None]),
             _maybe(get(mlp.fc2.weight), lambda w: w.t())]
    return _rows(parts)


def _maybe(t: torch.Tensor | None, f: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor | None:
    return None if t is None else f(t)


def score_blocks(model: nn.Module, criterion: Criterion, batches: list[tuple[torch.Tensor, torch.Tensor]],
                 seed: int = 0, mlp: bool = True) -> BlockScores:
    """Score the heads (and with ``mlp`` the MLP channels) of every block; ``batches`` are model-ready ``(x, labels)``."""
    blocks = blocks_of(model)
    activations = _unit_output_norms(model, blocks, batches, mlp) if criterion.needs_activations else None
    fisher = _gate_fisher(model, blocks, batches, mlp) if criterion.needs_gate_fisher else None
    if criterion.needs_grads:
        _accumulate_grads(model, batches)
    grad_of: Getter = (lambda p: p.grad) if criterion.needs_grads else (lambda p: None)
    heads, channels = [], []
    for i, block in enumerate(blocks):
        act_h, act_m = (activations[0][i], activations[1][i]) if activations else (None, None)
        fisher_h, fisher_m = (fisher[0][i], fisher[1][i]) if fisher else (None, None)
        heads.append(criterion.score(UnitStats(head_rows(block.attn, lambda p: p), head_rows(block.attn, grad_of),
                                               act_h, fisher_h, seed=seed + i)))
        if mlp:
            channels.append(criterion.score(UnitStats(mlp_rows(block.mlp, lambda p: p), mlp_rows(block.mlp, grad_of),
                                                      act_m, fisher_m, seed=seed + 10_000 + i)))
    model.zero_grad(set_to_none=True)
    return BlockScores(heads, channels)


def _accumulate_grads(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    model.eval()
    model.zero_grad(set_to_none=True)
    for x, labels in batches:
        F.cross_entropy(model(x), labels).backward()


UnitTotals = tuple[list[torch.Tensor], list[torch.Tensor]]  # per block: one value per head, one per MLP channel


@contextmanager
def _unit_input_hooks(blocks: list[nn.Module], mlp_channels: bool,
                      make_hook: Callable[[int, torch.Tensor], Callable]) -> Iterator[UnitTotals]:
    """For the ``with`` block: a zero total per head of every block (and, with ``mlp_channels``, per MLP channel),
    and ``make_hook(units, total)`` as a forward pre-hook on the layer whose input holds those units side by side
    (``attn.proj``: the heads; ``mlp.fc2``: the hidden channels)."""
    heads = [torch.zeros(b.attn.num_heads) for b in blocks]
    mlp = [torch.zeros(b.mlp.fc2.in_features) for b in blocks] if mlp_channels else [torch.zeros(0) for _ in blocks]
    layers = [(b.attn.proj, total) for b, total in zip(blocks, heads, strict=True)]
    if mlp_channels:
        layers += [(b.mlp.fc2, total) for b, total in zip(blocks, mlp, strict=True)]
    handles = [layer.register_forward_pre_hook(make_hook(len(total), total)) for layer, total in layers]
    try:
        yield heads, mlp
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def _unit_output_norms(model: nn.Module, blocks: list[nn.Module], batches: list[tuple[torch.Tensor, torch.Tensor]],
                       mlp_channels: bool) -> UnitTotals:
    """Mean L2 norm of each head's output (its slice of attn.proj's input) and each MLP channel (of fc2's input)."""
    def norm_hook(units: int, total: torch.Tensor) -> Callable:
        def hook(_m: nn.Module, args: tuple) -> None:
            per_unit = args[0].float().unflatten(-1, (units, -1)).norm(dim=-1)  # ... x units
            total.add_(per_unit.reshape(-1, units).mean(0).cpu())
        return hook

    model.eval()
    with _unit_input_hooks(blocks, mlp_channels, norm_hook) as (heads, mlp):
        for x, _ in batches:
            model(x)
    count = max(len(batches), 1)
    return [h / count for h in heads], [m / count for m in mlp]


def _gate_fisher(model: nn.Module, blocks: list[nn.Module], batches: list[tuple[torch.Tensor, torch.Tensor]],
                 mlp_channels: bool) -> UnitTotals:
    """Per block, ``sum over samples of (dL/dg)^2`` for a gate ``g = 1`` on each head's output (the input of
    ``attn.proj``) and each MLP channel (the input of ``fc2``). The gates are one row per sample (per window in
    windowed attention), so one backward pass gives every sample's own gradient."""
    gates: list[tuple[torch.Tensor, torch.Tensor]] = []  # this batch's (gate, where its Fisher adds up)

    def gate_hook(units: int, total: torch.Tensor) -> Callable:
        def hook(_m: nn.Module, args: tuple) -> tuple:
            x = args[0]
            gate = torch.ones(x.shape[0], units, device=x.device, dtype=x.dtype, requires_grad=True)
            gates.append((gate, total))
            per_unit = x.unflatten(-1, (units, -1))  # ... x units x unit width
            shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (units, 1)
            return ((per_unit * gate.reshape(shape)).flatten(-2), *args[1:])
        return hook

    model.eval()
    with _unit_input_hooks(blocks, mlp_channels, gate_hook) as (heads, mlp):
        for x, labels in batches:
            gates.clear()
            loss = F.cross_entropy(model(x), labels, reduction="sum")  # each sample's gradient, unscaled
            grads = torch.autograd.grad(loss, [g for g, _ in gates])
            for (_, total), grad in zip(gates, grads, strict=True):
                total.add_(grad.float().pow(2).sum(0).cpu())
    return heads, mlp
