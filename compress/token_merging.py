"""Token Merging (ToMe; Bolya et al., ICLR 2023, facebookresearch/ToMe) for timm's ViT and DeiT, in ops that export.

Inside every block, after attention, ``r`` pairs of similar patch tokens become one: the patch tokens are split
into two alternating sets A and B, each A token is matched to its most similar B token (cosine similarity of the
attention keys, averaged over heads), and the ``r`` best-matched A tokens are averaged into their B partners,
weighted by how many original patches each already holds (its *size*). Attention then adds ``log(size)`` to each
key's score (*proportional attention*), so a merged token counts as the patches it stands for. The class and
distillation tokens (timm's prefix tokens) are never merged.

ToMe merges with ``scatter_reduce(mean)``, which neither exporter handles (ToMe #10, PyTorch #101535). Here the
matching (``ArgMax``, ``TopK``) gives each token the index of the token it becomes, and the merge is one ``MatMul``
by the size-weighted one-hot matrix of those indices: standard ONNX ops that ONNX Runtime, OpenVINO and TensorRT
run, and one dense product instead of a copy of the tokens per gather and scatter. With a fixed image size every
token count is fixed, so the batch stays dynamic.

Merging needs no weights: :class:`MergingBlocks` takes the place of the model's ``blocks`` with the same children
(the state dict's names do not change), and an artifact records only the schedule.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from vitcompress.errors import UserError


def schedule(blocks: int, r: int, kind: str = "constant") -> list[int]:
    """Tokens merged in each of ``blocks`` blocks: ``r`` in each (``constant``), or ToMe's decreasing schedule
    (from 1.5 ``r`` down to 0.5 ``r``, about ``r * blocks`` in all), which merges more while tokens are many."""
    if kind == "constant" or blocks == 1:
        return [r] * blocks
    first, last = 1.5 * r, 0.5 * r
    return [int(first + (last - first) * i / (blocks - 1)) for i in range(blocks)]


def feasible(per_block: list[int], patch_tokens: int) -> list[int]:
    """``per_block`` with each block's count cut to what it can merge: half of the patch tokens it receives."""
    done, tokens = [], patch_tokens
    for r in per_block:
        r = max(0, min(r, tokens // 2))
        done.append(r)
        tokens -= r
    return done


def r_for_keep(keep: float, blocks: int, patch_tokens: int, kind: str = "constant") -> list[int]:
    """The schedule that leaves closest to ``keep`` of the patch tokens after the last block."""
    target = keep * patch_tokens
    candidates = [feasible(schedule(blocks, r, kind), patch_tokens) for r in range(patch_tokens // 2 + 1)]
    return min(candidates, key=lambda per_block: abs(patch_tokens - sum(per_block) - target))


def tokens_per_block(per_block: list[int], patch_tokens: int, prefix_tokens: int) -> list[int]:
    """The tokens each block's MLP sees (the merge comes between its attention and its MLP)."""
    left, out = patch_tokens, []
    for r in per_block:
        left -= r
        out.append(left + prefix_tokens)
    return out


def merge_assignment(metric: Tensor, r: int, prefix: int) -> Tensor:
    """ToMe's bipartite soft matching on ``metric`` (``[B, T, C]``): for each token, the index of the token it
    becomes (``[B, T]``, into ``T - r`` tokens). The patch tokens are split into set A (even positions) and B (odd);
    the ``r`` A tokens best matched to a B token go into their partner, the other A tokens keep their place in the
    order of their best match (as ToMe's), the B tokens follow them, and the ``prefix`` tokens stay first."""
    tokens = int(metric.shape[1]) - prefix  # patch tokens, fixed for a model (its image size): constants in a graph
    even = torch.arange(0, tokens, 2, device=metric.device)
    odd = torch.arange(1, tokens, 2, device=metric.device)
    metric = metric[:, prefix:]
    metric = metric / metric.norm(dim=-1, keepdim=True)
    a, b = metric.index_select(1, even), metric.index_select(1, odd)
    best_score, best_partner = (a @ b.transpose(-1, -2)).max(dim=-1)
    rank = best_score.argsort(dim=-1, descending=True).argsort(dim=-1)  # each A token's place in the match order
    kept_a = len(even) - r
    to_a = torch.where(rank < r, best_partner + kept_a, rank - r)  # merged: into B; kept: its place among A's kept
    batch = torch.zeros_like(best_partner[:, :1])  # [B, 1]: added to make an index per image (the batch stays dynamic)
    to_b = torch.arange(len(odd), device=metric.device) + kept_a + batch
    position = torch.arange(tokens, device=metric.device)  # back to token order: A and B alternate
    interleave = torch.where(position % 2 == 0, position // 2, len(even) + position // 2)
    patches = torch.cat([to_a, to_b], dim=1).index_select(1, interleave) + prefix
    first = torch.arange(prefix, device=metric.device) + batch
    return torch.cat([first, patches], dim=1)


def merge_tokens(x: Tensor, size: Tensor, metric: Tensor, r: int, prefix: int) -> tuple[Tensor, Tensor]:
    """Merge ``r`` patch tokens of ``x`` (sizes ``size``, ``[B, T, 1]``) by ``metric``; prefix tokens stay first.

    The merge is one matrix product: row ``i`` of ``weights`` (``[B, T - r, T]``) holds each input token's share of
    output token ``i`` (its size over the summed sizes of the tokens going there). One ``MatMul`` then moves, sums
    and averages every token at once, where gathers, a sum-scatter, a concatenation and a divide each copied the
    token tensor (OpenVINO ran the product faster; ONNX Runtime about as fast: docs/results.md, run 4)."""
    into = merge_assignment(metric, r, prefix)
    outputs = torch.arange(int(x.shape[1]) - r, device=x.device)
    weights = (into.unsqueeze(1) == outputs.view(1, -1, 1)).to(x.dtype) * size.transpose(1, 2)  # [B, T - r, T]
    sizes = weights.sum(dim=-1, keepdim=True)
    return (weights / sizes) @ x, sizes


def attention(attn: nn.Module, x: Tensor, size: Tensor | None) -> tuple[Tensor, Tensor]:
    """timm's attention on ``x``, with ``log(size)`` added to every key's score when ``size`` is given; also the
    keys averaged over heads (the merge metric). Works with any number of heads (pruned) and INT8 projections.
    An attention module with its own ``attend_sized`` (the same computation, in an exporter's kernel) runs that."""
    if hasattr(attn, "attend_sized"):
        return attn.attend_sized(x, size)
    tokens, heads, head_dim = int(x.shape[1]), attn.num_heads, attn.head_dim  # constants when exported
    q, k, v = attn.qkv(x).reshape(-1, tokens, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    scores = (q * attn.scale) @ k.transpose(-2, -1)
    if size is not None:
        scores = scores + size_bias(size)
    out = (attn.attn_drop(scores.softmax(dim=-1)) @ v).transpose(1, 2).reshape(-1, tokens, heads * head_dim)
    return attn.proj_drop(attn.proj(attn.norm(out))), k.mean(dim=1)


def size_bias(size: Tensor) -> Tensor:
    """Proportional attention's bias for sizes ``[B, T, 1]``: ``log(size)`` of each key, ``[B, 1, 1, T]``."""
    return size.log().transpose(1, 2).unsqueeze(1)


class MergingBlocks(nn.Sequential):
    """A ViT's ``blocks`` with token merging between each block's attention and its MLP.

    The same children under the same names as the ``nn.Sequential`` it replaces, so weights load unchanged.
    ``merge[i]`` tokens are merged in block ``i``; ``prefix`` tokens (class, distillation) are never merged.
    """

    def __init__(self, blocks: nn.Sequential, merge: list[int], prefix: int, prop_attn: bool = True) -> None:
        super().__init__(*blocks)
        self.merge, self.prefix, self.prop_attn = list(merge), prefix, prop_attn

    def forward(self, x: Tensor) -> Tensor:
        size = torch.ones_like(x[..., :1])
        for block, r in zip(self, self.merge, strict=True):
            y, metric = attention(block.attn, block.norm1(x), size if self.prop_attn else None)
            x = x + block.drop_path1(block.ls1(y))
            if r:
                x, size = merge_tokens(x, size, metric, r, self.prefix)
            x = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
        return x


def check_mergeable(model: nn.Module, name: str) -> None:
    """One line naming why ``model`` cannot merge tokens, if it cannot."""
    from timm.layers.attention import Attention
    from timm.models.vision_transformer import Block, VisionTransformer

    if not isinstance(model, VisionTransformer) or not isinstance(model.blocks, nn.Sequential):
        raise UserError(f"{name} is not a plain ViT/DeiT (token merging needs timm's VisionTransformer blocks)",
                        "merge a vit_* or deit_* model; BEiT's relative position bias and EVA's rotary embedding tie "
                        "attention to each token's position, which merging removes")
    odd = [type(b.attn).__name__ for b in model.blocks if not isinstance(b, Block) or type(b.attn) is not Attention]
    if odd:
        raise UserError(f"{name}'s blocks use {odd[0]}, which token merging does not handle",
                        "merge a plain ViT/DeiT (vit_*, deit_*)")
    if any(getattr(b.attn, "gate", None) is not None for b in model.blocks):
        raise UserError(f"{name} has gated attention, which token merging does not handle", "merge a plain ViT/DeiT")


def patch_tokens(model: nn.Module) -> int:
    return int(model.patch_embed.num_patches)


def apply_merging(model: nn.Module, merging: dict[str, Any]) -> None:
    """Give ``model`` (a ViT/DeiT) the token merging ``merging`` records (``per_block``, ``prop_attn``)."""
    blocks = model.blocks
    if isinstance(blocks, MergingBlocks):
        blocks = nn.Sequential(*blocks)
    model.blocks = MergingBlocks(blocks, merging["per_block"], int(model.num_prefix_tokens),
                                 bool(merging.get("prop_attn", True)))


def merging_of(model: nn.Module) -> MergingBlocks | None:
    blocks = getattr(model, "blocks", None)
    return blocks if isinstance(blocks, MergingBlocks) else None


def describe(per_block: list[int], patch_count: int, prefix: int, prop_attn: bool, kind: str) -> dict[str, Any]:
    """What ``vitcompress.json`` records about the merging (and ``info`` shows)."""
    tokens = tokens_per_block(per_block, patch_count, prefix)
    return {"method": "tome (bipartite soft matching)", "per_block": per_block, "schedule": kind,
            "prop_attn": prop_attn, "prefix_tokens": prefix, "tokens_in": patch_count + prefix,
            "tokens_per_block": tokens, "keep": round((tokens[-1] - prefix) / patch_count, 4) if patch_count else 1.0,
            "token_share_mean": round(sum(tokens) / (len(tokens) * (patch_count + prefix)), 4) if tokens else 1.0}

