"""Attention modules that work with any number of heads, for attention classes whose forward does not.

timm's ``beit.Attention`` and ``RelPosAttention`` end with ``reshape(B, N, C)``, where ``C`` is the
*input* width; that only holds while ``num_heads * head_dim == C``. After head pruning it does not,
so their pruned blocks use these subclasses: the same computation, reshaped to the attention width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models import beit
from timm.models.vision_transformer_relpos import RelPosAttention
from torch import nn


class PrunedBeitAttention(beit.Attention):
    """``beit.Attention`` whose output reshape follows the attention width, not the input width."""

    def forward(self, x: torch.Tensor, shared_rel_pos_bias: torch.Tensor | None = None) -> torch.Tensor:
        B, N, _ = x.shape
        if self.q_bias is None:
            qkv = self.qkv(x)
        else:
            qkv = F.linear(x, weight=self.qkv.weight, bias=torch.cat((self.q_bias, self.k_bias, self.v_bias)))
        q, k, v = qkv.reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
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


# the subclass a pruned block's attention becomes (attention classes whose own forward already works are absent)
WIDTH_SAFE: dict[type[nn.Module], type[nn.Module]] = {beit.Attention: PrunedBeitAttention,
                                                      RelPosAttention: PrunedRelPosAttention}
