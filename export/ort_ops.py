"""PyTorch functions that export as ONNX Runtime's fused CPU kernels.

Each is an ``autograd.Function`` whose ``forward`` computes in PyTorch what the kernel computes
(so tracing and verification see the real numbers) and whose ``symbolic`` writes the kernel:

- :class:`FusedAttention`: ``com.microsoft::Attention`` (QKV projection, softmax attention, heads).
- :class:`Int8Linear`: ``QuantizeLinear`` + ``com.microsoft::MatMulIntegerToFloat`` (bias fused).
- :class:`Int8Attention`: ``QuantizeLinear`` + ``com.microsoft::QAttention`` (INT8 QKV projection).
- :class:`BiasedAttention`: ``com.microsoft::MultiHeadAttention`` on projected q, k, v with an additive score bias
  (token merging's ``log(size)``, which ``Attention`` and ``QAttention`` have no input for).

INT8 activations are written as uint8 with zero point 128: the same 256 levels as symmetric int8
(``[-128, 127] * scale``), and the operand type ORT's x86 integer GEMMs and ``QAttention`` take.
Weights are int8 initializers ``[in, out]`` with one scale per output column.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import Function

ACTIVATION_ZERO_POINT = 128
# Optional inputs torch's exporter cannot leave empty: traced as placeholders, blanked by onnx.py after export.
EMPTY_INPUTS = {"QAttention": (5,), "MultiHeadAttention": (3, 4)}  # QAttention's mask; MHA's qkv bias, padding mask


def fake_quantize_activation(x: Tensor, scale: Tensor) -> Tensor:
    """What ``QuantizeLinear`` then dequantization does to ``x`` (round half to even, 8 bits)."""
    return torch.clamp(torch.round(x / scale), -128, 127) * scale


def attention(x: Tensor, qkv_weight: Tensor, qkv_bias: Tensor, num_heads: int) -> Tensor:
    """Multi-head self-attention from a packed ``[3 * width, dim]`` projection, as timm lays it out."""
    batch, tokens, _ = x.shape
    qkv = F.linear(x, qkv_weight, qkv_bias).reshape(batch, tokens, 3, num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, tokens, -1)


def _like(out: Any, x: Any) -> Any:
    """Tell the exporter a contrib op's output is float like ``x`` (it cannot infer contrib ops' shapes)."""
    rank = x.type().dim()
    out.setType(x.type().with_sizes([None] * rank) if rank is not None else x.type())
    return out


def _uint8_zero_point(g: Any) -> Any:
    return g.op("Constant", value_t=torch.tensor(ACTIVATION_ZERO_POINT, dtype=torch.uint8))


def _placeholder(g: Any) -> Any:
    """An input to be left empty (see ``EMPTY_INPUTS``)."""
    return g.op("Constant", value_t=torch.zeros(0, dtype=torch.int32))


def _int8_zero(g: Any) -> Any:
    return g.op("Constant", value_t=torch.tensor(0, dtype=torch.int8))


class FusedAttention(Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, qkv_weight: Tensor, qkv_bias: Tensor, num_heads: int) -> Tensor:
        return attention(x, qkv_weight, qkv_bias, num_heads)

    @staticmethod
    def symbolic(g: Any, x: Any, qkv_weight: Any, qkv_bias: Any, num_heads: int) -> Any:
        weight = g.op("Transpose", qkv_weight, perm_i=[1, 0])
        return _like(g.op("com.microsoft::Attention", x, weight, qkv_bias, num_heads_i=num_heads), x)


class Int8Linear(Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight_q: Tensor, weight_scale: Tensor, bias: Tensor | None,
                input_scale: Tensor) -> Tensor:
        y = fake_quantize_activation(x, input_scale) @ (weight_q.float() * weight_scale)
        return y + bias if bias is not None else y

    @staticmethod
    def symbolic(g: Any, x: Any, weight_q: Any, weight_scale: Any, bias: Any, input_scale: Any) -> Any:
        zero_point = _uint8_zero_point(g)
        x_q = g.op("QuantizeLinear", x, input_scale, zero_point)
        inputs = [x_q, weight_q, input_scale, weight_scale, zero_point, _int8_zero(g)]
        if bias is not None and not bias.node().mustBeNone():
            inputs.append(bias)
        return _like(g.op("com.microsoft::MatMulIntegerToFloat", *inputs), x)


class Int8Attention(Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight_q: Tensor, weight_scale: Tensor, bias: Tensor, input_scale: Tensor,
                num_heads: int) -> Tensor:
        weight = (weight_q.float() * weight_scale).t()
        return attention(fake_quantize_activation(x, input_scale), weight, bias, num_heads)

    @staticmethod
    def symbolic(g: Any, x: Any, weight_q: Any, weight_scale: Any, bias: Any, input_scale: Any, num_heads: int) -> Any:
        zero_point = _uint8_zero_point(g)
        x_q = g.op("QuantizeLinear", x, input_scale, zero_point)
        mask = _placeholder(g)
        return _like(g.op("com.microsoft::QAttention", x_q, weight_q, bias, input_scale, weight_scale, mask, zero_point,
                          _int8_zero(g), num_heads_i=num_heads), x)


class BiasedAttention(Function):
    """Multi-head attention of ``q``, ``k``, ``v`` (``[B, T, heads * head_dim]``, heads not split) with ``bias``
    (``[B, 1, T, T]``, added to every head's scores) or none; the output's heads are merged again."""

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, num_heads: int,
                scale: float) -> Tensor:
        batch, tokens, width = q.shape
        q, k, v = (t.reshape(batch, tokens, num_heads, -1).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
        return out.transpose(1, 2).reshape(batch, tokens, width)

    @staticmethod
    def symbolic(g: Any, q: Any, k: Any, v: Any, bias: Any, num_heads: int, scale: float) -> Any:
        inputs = [q, k, v]
        if bias is not None and not bias.node().mustBeNone():
            inputs += [_placeholder(g), _placeholder(g), bias]
        return _like(g.op("com.microsoft::MultiHeadAttention", *inputs, num_heads_i=num_heads, scale_f=scale), q)
