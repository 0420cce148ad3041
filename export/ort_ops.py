"""PyTorch functions that export as ONNX Runtime's fused CPU kernels.

Each is an ``autograd.Function`` whose ``forward`` computes in PyTorch what the kernel computes
(so tracing and verification see the real numbers) and whose ``symbolic`` writes the kernel:

- :class:`FusedAttention`: ``com.microsoft::Attention`` (QKV projection, softmax attention, heads).
- :class:`Int8Linear`: ``QuantizeLinear`` + ``com.microsoft::MatMulIntegerToFloat`` (bias fused).
- :class:`Int8Attention`: ``QuantizeLinear`` + ``com.microsoft::QAttention`` (INT8 QKV projection).

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
QATTENTION_MASK_INPUT = 5  # optional, but torch's exporter cannot leave an input empty: onnx.py blanks it


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
        mask = g.op("Constant", value_t=torch.zeros(0, dtype=torch.int32))  # replaced by "" after export
        return _like(g.op("com.microsoft::QAttention", x_q, weight_q, bias, input_scale, weight_scale, mask, zero_point,
                          _int8_zero(g), num_heads_i=num_heads), x)
