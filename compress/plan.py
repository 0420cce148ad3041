"""Which heads and MLP channels go: uniform (the same share of every block) or global ranking (within a stage).

Counts round to the nearest unit and are measured against the *original* model, so an iterative
run (``--iterative K``) reaches exactly the same sizes as a one-shot run. Every block keeps at least
one head (and one MLP channel).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from vitcompress.errors import UserError


@dataclass
class PrunePlan:
    """Per block: the indices (into the current model) of the heads and MLP channels to remove."""

    heads: list[list[int]]
    mlp: list[list[int]]


def target_removed(original: int, ratio: float) -> int:
    """How many of ``original`` units a ratio removes (nearest, halves up)."""
    return math.floor(original * ratio + 0.5)


def choose(scores: list[torch.Tensor], original: list[int], ratio: float, ranking: str, what: str) -> list[list[int]]:
    """Indices to remove in each block so that ``ratio`` of the original units are gone in total.

    Args:
        scores: Current importance of each unit, per block (higher: keep).
        original: Units per block before any pruning (for iterative runs).
        ratio: Share of the original units to have removed after this step.
        ranking: ``uniform`` (per block) or ``global`` (across blocks).
        what: ``heads`` or ``MLP channels``, for messages.
    """
    current = [len(s) for s in scores]
    if ranking == "uniform":
        drops = []
        for i, (s, orig, cur) in enumerate(zip(scores, original, current, strict=True)):
            n = target_removed(orig, ratio) - (orig - cur)
            if orig - target_removed(orig, ratio) < 1:
                raise UserError(f"ratio {ratio:g} would remove all {orig} {what} of block {i}",
                                f"use a ratio below {(orig - 0.5) / orig:.3f} (every block keeps at least one)")
            drops.append(_lowest(s, max(n, 0)))
        return drops
    total = sum(original)
    n = target_removed(total, ratio) - (total - sum(current))
    if target_removed(total, ratio) > total - len(original):
        raise UserError(f"ratio {ratio:g} would remove {target_removed(total, ratio)} of {total} {what}, "
                        f"leaving some of the {len(original)} blocks with none",
                        "use a smaller ratio (every block keeps at least one)")
    candidates = []  # (score, block, index); each block's best unit is never a candidate
    for b, s in enumerate(scores):
        best = int(torch.argmax(s))
        candidates += [(float(v), b, i) for i, v in enumerate(s.tolist()) if i != best]
    candidates.sort(key=lambda c: (c[0], c[1], c[2]))
    drops = [[] for _ in scores]
    for _, b, i in candidates[: max(n, 0)]:
        drops[b].append(i)
    return [sorted(d) for d in drops]


def choose_per_stage(scores: list[torch.Tensor], original: list[int], ratio: float, ranking: str, what: str,
                     stage_sizes: list[int]) -> list[list[int]]:
    """:func:`choose` within each stage of ``stage_sizes`` blocks: a hierarchical model (Swin) ranks globally only
    among blocks of one width, whose scores compare; a plain ViT is one stage."""
    drops, start = [], 0
    for size in stage_sizes:
        drops += choose(scores[start:start + size], original[start:start + size], ratio, ranking, what)
        start += size
    return drops


def _lowest(scores: torch.Tensor, n: int) -> list[int]:
    order = sorted(range(len(scores)), key=lambda i: (float(scores[i]), i))
    return sorted(order[:n])
