"""Structural surgery on timm ViT blocks: remove whole attention heads and MLP hidden channels.

Attention heads live inside one module: the rows of ``qkv`` (``[q heads | k heads | v heads]``),
their biases (BEiT keeps ``q_bias``/``v_bias`` apart from the Linear), the per-head column of a
relative position bias table (or output of vit_relpos's bias MLP), an optional norm over the
attention width, and the columns of ``proj``. The slicing uses torch-pruning's pruning functions;
MLP channels (``fc1`` rows coupled through the activation and any norm to ``fc2`` columns) are
removed through torch-pruning's dependency graph. Afterwards ``num_heads`` / ``attn_dim`` say what
the weights hold, so the model runs through timm's own forward (fused attention included).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch_pruning as tp
from torch import nn

from vitcompress.errors import UserError
from vitcompress.models import attention_blocks


def blocks_of(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks whose attention can lose heads, over all stages (empty for models without them)."""
    return attention_blocks(model)


def prunable_attention_classes() -> tuple[type[nn.Module], ...]:
    """Attention classes whose heads :func:`remove_heads` knows how to cut (every weight that is per head)."""
    from timm.layers.attention import Attention
    from timm.models.beit import Attention as BeitAttention
    from timm.models.eva import EvaAttention
    from timm.models.swin_transformer import WindowAttention
    from timm.models.swin_transformer_v2 import WindowAttention as SwinV2WindowAttention
    from timm.models.vision_transformer_relpos import RelPosAttention

    return Attention, BeitAttention, RelPosAttention, EvaAttention, WindowAttention, SwinV2WindowAttention


SUPPORTED_FAMILIES = "timm's ViT family (ViT, DeiT, DeiT III, DINOv2, CLIP, SigLIP), vit_relpos_*, BEiT, EVA, Swin or SwinV2"


# Attention classes close to prunable ones, and what their heads hold that remove_heads does not cut
NOT_PRUNABLE_WHY = {
    "timm.models.swin_transformer_v2_cr.WindowMultiHeadAttention": " (SwinV2-CR: its meta network's position bias "
                                                                   "and per-head scales are not cut per head)",
}


def check_prunable(model: nn.Module, name: str, mlp: bool = False) -> None:
    """Refuse models this surgery does not understand, before anything is changed.

    ``mlp``: MLP channels will be removed too, which needs plain ``fc1 -> act -> fc2`` MLPs.
    """
    blocks = blocks_of(model)
    if not blocks:
        raise UserError(f"model {name} does not have the ViT layout whose heads prune removes (blocks[i].attn.num_heads)",
                        f"prune an artifact of {SUPPORTED_FAMILIES}")
    for i, block in enumerate(blocks):
        attn = block.attn
        if not isinstance(attn, prunable_attention_classes()):
            kind = f"{type(attn).__module__}.{type(attn).__name__}"
            why = NOT_PRUNABLE_WHY.get(kind, "")
            raise UserError(f"block {i} of {name} uses {kind}, whose heads prune cannot remove{why}",
                            f"prune an artifact of {SUPPORTED_FAMILIES}")
        if not isinstance(getattr(attn, "qkv", None), nn.Linear) or not isinstance(getattr(attn, "proj", None), nn.Linear):
            raise UserError(f"block {i} of {name} has no fused qkv/proj Linear layers",
                            f"prune an artifact of {SUPPORTED_FAMILIES}")
        if getattr(attn, "gate", None) is not None:
            raise UserError(f"block {i} of {name} uses gated attention, which head pruning does not support",
                            "prune a model without gated attention")
        if mlp and not has_plain_mlp(block):
            raise UserError(f"block {i} of {name} has a {type(block.mlp).__name__} MLP (gated or packed), whose "
                            "channels --mlp cannot remove", "prune its heads only: --mlp 0")
    for shared in ("rel_pos_bias", "shared_rel_pos"):
        if getattr(model, shared, None) is not None:
            raise UserError(f"{name} shares one relative position bias across blocks, so heads cannot differ per block",
                            "prune a model with per-block relative position bias (the BEiT and vit_relpos default)")


def has_plain_mlp(block: nn.Module) -> bool:
    """``fc1 -> activation -> fc2`` with one hidden channel per ``fc1`` row (not a GLU, whose ``fc1`` holds two)."""
    fc1, fc2 = getattr(block.mlp, "fc1", None), getattr(block.mlp, "fc2", None)
    return isinstance(fc1, nn.Linear) and isinstance(fc2, nn.Linear) and fc1.out_features == fc2.in_features


def head_dim(attn: nn.Module) -> int:
    return attn.qkv.out_features // (3 * attn.num_heads)


def head_channels(attn: nn.Module, heads: Sequence[int]) -> list[int]:
    """Indices of ``heads`` in the attention width (``proj``'s input, and each of q, k, v)."""
    d = head_dim(attn)
    return [h * d + j for h in sorted(heads) for j in range(d)]


def remove_heads(attn: nn.Module, heads: Sequence[int]) -> None:
    """Remove ``heads`` (indices into the current heads) from one attention module, in place."""
    heads = sorted(set(int(h) for h in heads))
    if not heads:
        return
    if len(heads) >= attn.num_heads:
        raise UserError(f"removing {len(heads)} of {attn.num_heads} heads would leave a block with none",
                        "use a smaller --heads ratio")
    width = attn.num_heads * head_dim(attn)
    channels = head_channels(attn, heads)
    tp.prune_linear_out_channels(attn.qkv, [part * width + c for part in range(3) for c in channels])
    tp.prune_linear_in_channels(attn.proj, channels)
    for name in ("q_bias", "v_bias"):  # BEiT: separate biases for q and v (k has none)
        if isinstance(getattr(attn, name, None), nn.Parameter):
            setattr(attn, name, _keep(getattr(attn, name), channels, dim=0))
    if isinstance(getattr(attn, "k_bias", None), torch.Tensor):  # BEiT: a zero buffer
        attn.k_bias = _keep(attn.k_bias, channels, dim=0, parameter=False)
    if isinstance(getattr(attn, "relative_position_bias_table", None), nn.Parameter):  # BEiT, Swin: a column a head
        attn.relative_position_bias_table = _keep(attn.relative_position_bias_table, heads, dim=1)
    if getattr(attn, "rel_pos", None) is not None:  # vit_relpos_*
        _remove_rel_pos_heads(attn.rel_pos, heads)
    if isinstance(getattr(attn, "logit_scale", None), nn.Parameter):  # SwinV2: a cosine-attention scale per head
        attn.logit_scale = _keep(attn.logit_scale, heads, dim=0)
    if isinstance(getattr(attn, "cpb_mlp", None), nn.Sequential):  # SwinV2: the position bias MLP's output per head
        tp.prune_linear_out_channels(attn.cpb_mlp[-1], list(heads))
    if isinstance(getattr(attn, "norm", None), nn.LayerNorm):  # timm's scale_norm over the attention width
        tp.prune_layernorm_out_channels(attn.norm, channels)
    attn.num_heads -= len(heads)
    if hasattr(attn, "attn_dim"):
        attn.attn_dim = attn.num_heads * head_dim(attn)
    _use_width_safe_forward(attn)


def _keep(tensor: torch.Tensor, drop: Sequence[int], dim: int, parameter: bool = True) -> torch.Tensor:
    keep = [i for i in range(tensor.shape[dim]) if i not in set(drop)]
    kept = tensor.data.index_select(dim, torch.tensor(keep, device=tensor.device)).contiguous()
    return nn.Parameter(kept, requires_grad=tensor.requires_grad) if parameter else kept


def _remove_rel_pos_heads(rel_pos: nn.Module, heads: Sequence[int]) -> None:
    """vit_relpos's per-block bias: a table column (``RelPosBias``) or an MLP output (``RelPosMlp``) per head."""
    from timm.layers.pos_embed_rel import RelPosBias, RelPosMlp

    if isinstance(rel_pos, RelPosBias):
        rel_pos.relative_position_bias_table = _keep(rel_pos.relative_position_bias_table, heads, dim=1)
        remaining = rel_pos.relative_position_bias_table.shape[1]
    elif isinstance(rel_pos, RelPosMlp):
        tp.prune_linear_out_channels(rel_pos.mlp.fc2, list(heads))
        remaining = rel_pos.num_heads = rel_pos.mlp.fc2.out_features
    else:
        raise UserError(f"relative position module {type(rel_pos).__name__} is not one prune knows",
                        f"prune an artifact of {SUPPORTED_FAMILIES}")
    rel_pos.bias_shape = (*rel_pos.bias_shape[:-1], remaining)  # heads are the last axis of both


def _use_width_safe_forward(attn: nn.Module) -> None:
    """Attention classes whose forward reshapes its output to the *input* width, which is wrong once heads
    are gone, become the subclass that reshapes to the attention width (its only change)."""
    from vitcompress.compress.pruned_attention import WIDTH_SAFE

    if type(attn) in WIDTH_SAFE:
        attn.__class__ = WIDTH_SAFE[type(attn)]


def remove_mlp_channels(graph: tp.DependencyGraph, fc1: nn.Linear, channels: Sequence[int]) -> None:
    """Remove hidden channels of one MLP through the dependency graph (fc1 rows, norm, fc2 columns)."""
    channels = sorted(set(int(c) for c in channels))
    if not channels:
        return
    if len(channels) >= fc1.out_features:
        raise UserError(f"removing {len(channels)} of {fc1.out_features} MLP channels would leave none",
                        "use a smaller --mlp ratio")
    group = graph.get_pruning_group(fc1, tp.prune_linear_out_channels, idxs=channels)
    group.prune()


def dependency_graph(model: nn.Module, img_size: int) -> tp.DependencyGraph:
    """torch-pruning's dependency graph of ``model``, traced on one zero image."""
    param = next(model.parameters())
    example = torch.zeros(1, 3, img_size, img_size, device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    with warnings.catch_warnings():  # BEiT's q_bias/v_bias and layer-scale gammas are "unwrapped"; we handle them
        warnings.simplefilter("ignore", UserWarning)
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    model.train(was_training)
    return graph


def mlp_widths(model: nn.Module) -> list[int]:
    """Hidden width of each block's MLP (empty when any block's MLP is not a plain one: nothing to prune there)."""
    blocks = blocks_of(model)
    return [int(b.mlp.fc1.out_features) for b in blocks] if all(has_plain_mlp(b) for b in blocks) else []


def reshape_to(model: nn.Module, heads: Sequence[int], mlp: Sequence[int], img_size: int) -> None:
    """Give a freshly created model the shape a pruned artifact records (weights are loaded after).

    Which heads or channels go does not matter here: every weight is overwritten by the artifact's.
    """
    blocks = blocks_of(model)
    if list(heads) != [b.attn.num_heads for b in blocks]:
        for block, n in zip(blocks, heads, strict=True):
            remove_heads(block.attn, range(n, block.attn.num_heads))
    if mlp and list(mlp) != mlp_widths(model):
        graph = dependency_graph(model, img_size)
        for block, width in zip(blocks, mlp, strict=True):
            remove_mlp_channels(graph, block.mlp.fc1, range(width, block.mlp.fc1.out_features))
