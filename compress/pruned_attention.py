"""Attention modules that work with any number of heads, for attention classes whose forward does not.

timm's ``beit.Attention``, ``RelPosAttention``, ``EvaAttention`` and SwinV2's window attention end with ``reshape(B, N, C)``,
where ``C`` is the *input* width; that only holds while ``num_heads * head_dim == C``. After head
pruning it does not, so their pruned blocks use these subclasses: the same computation (timm 1.0's,
checked against it by the tests), reshaped to the attention width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import apply_rot_embed_cat
from timm.models import beit
from timm.models.eva import EvaAttention
from timm.models.swin_transformer_v2 import WindowAttention as SwinV2WindowAttention
from timm.models.vision_transformer_relpos import RelPosAttention
from torch import nn


def _packed_qkv(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The packed q/k/v projection of attention that keeps q and v biases apart from its Linear (BEiT, EVA, SwinV2;
    k has none): added after the Linear where timm does (``qkv_bias_separate``), else inside it."""
    if attn.q_bias is None:
        return attn.qkv(x)
    bias = torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))
    if getattr(attn, "qkv_bias_separate", False):
        return attn.qkv(x) + bias
    return F.linear(x, weight=attn.qkv.weight, bias=bias)


class PrunedBeitAttention(beit.Attention):
    """``beit.Attention`` whose output reshape follows the attention width, not the input width."""

    def forward(self, x: torch.Tensor, shared_rel_pos_bias: torch.Tensor | None = None) -> torch.Tensor:
        B, N, _ = x.shape
        q, k, v = _packed_qkv(self, x).reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self._get_rel_pos_bias() if self.relative_position_bias_table is not None else None
        if shared_rel_pos_bias is not None:
            bias = shared_rel_pos_bias if bias is None else bias + shared_rel_pos_bias
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=self.attn_drop.p if self.training else 0.0)
        x = x.transpose(1, 2).reshape(B, N, -1)
        return self.proj_drop(self.proj(x))


class PrunedRelPosAttention(RelPosAttention):
    """``RelPosAttention`` (timm's ``vit_relpos_*``) whose output reshape follows the attention width."""

    def forward(self, x: torch.Tensor, shared_rel_pos: torch.Tensor | None = None) -> torch.Tensor:
        B, N, _ = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        bias = self.rel_pos.get_bias() if self.rel_pos is not None else shared_rel_pos
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=self.attn_drop.p if self.training else 0.0)
        x = x.transpose(1, 2).reshape(B, N, -1)
        return self.proj_drop(self.proj(x))


class PrunedEvaAttention(EvaAttention):
    """``EvaAttention`` (EVA, EVA-02, timm's RoPE ViTs) with fused qkv, reshaped to the attention width.

    RoPE rotates each head's dimensions the same way, so it needs nothing per head. Gated attention
    and separate q/k/v projections are refused by ``check_prunable`` before this is used.
    """

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False) -> torch.Tensor:
        B, N, _ = x.shape
        q, k, v = _packed_qkv(self, x).reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            npt, half = self.num_prefix_tokens, getattr(self, "rotate_half", False)
            q = torch.cat([q[:, :, :npt, :], apply_rot_embed_cat(q[:, :, npt:, :], rope, half=half)], dim=2).type_as(v)
            k = torch.cat([k[:, :, :npt, :], apply_rot_embed_cat(k[:, :, npt:, :], rope, half=half)], dim=2).type_as(v)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                                           dropout_p=self.attn_drop.p if self.training else 0.0)
        x = self.norm(x.transpose(1, 2).reshape(B, N, -1))
        return self.proj_drop(self.proj(x))


class PrunedSwinV2Attention(SwinV2WindowAttention):
    """SwinV2's window attention (cosine attention, per-head logit scale, continuous position bias from an MLP),
    reshaped to the attention width."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B_, N, _ = x.shape
        q, k, v = _packed_qkv(self, x).reshape(B_, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        attn = attn * torch.clamp(self.logit_scale, max=math.log(1.0 / 0.01)).exp()
        table = self.cpb_mlp(self.relative_coords_table).view(-1, self.num_heads)
        area = self.window_size[0] * self.window_size[1]
        bias = table[self.relative_position_index.view(-1)].view(area, area, -1).permute(2, 0, 1).contiguous()
        attn = attn + 16 * torch.sigmoid(bias).unsqueeze(0)
        if mask is not None:
            num_win = mask.shape[0]
            attn = attn.view(-1, num_win, self.num_heads, N, N) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, N, N)
        x = (self.attn_drop(self.softmax(attn)) @ v).transpose(1, 2).reshape(B_, N, -1)
        return self.proj_drop(self.proj(x))


# the subclass a pruned block's attention becomes (attention classes whose own forward already works are absent)
WIDTH_SAFE: dict[type[nn.Module], type[nn.Module]] = {beit.Attention: PrunedBeitAttention,
                                                      RelPosAttention: PrunedRelPosAttention,
                                                      EvaAttention: PrunedEvaAttention,
                                                      SwinV2WindowAttention: PrunedSwinV2Attention}
