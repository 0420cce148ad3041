"""Give a model the form its ONNX graph should have (``--target``), before it is traced.

- ``ort``: timm's attention blocks become one ``Attention`` kernel (``QAttention`` when the QKV
  projection is INT8) and every other INT8 Linear becomes ``MatMulIntegerToFloat``, with the int8
  weights and the scales QAT learned (``ort_ops.py``). This is the graph ONNX Runtime's CPU
  provider runs fastest; it needs ONNX Runtime (contrib ops).
- ``standard``: the model is traced as it is. Quantized layers export as standard
  ``QuantizeLinear``/``DequantizeLinear`` pairs (modelopt's own export), the explicit-quantization
  form TensorRT builds INT8 kernels from and OpenVINO turns into its own INT8 layers; only standard ONNX ops.

Either way the graph can take raw pixels (:class:`PixelInput`).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from vitcompress.compress.quantize import int8_ranges
from vitcompress.export.ort_ops import FusedAttention, Int8Attention, Int8Linear

INT8_MAX = 127


class ImageInput(nn.Module):
    """The model with ``forward(images)`` alone: the TorchScript exporter fills every parameter of the traced
    ``forward`` from its defaults, and a flag such as EVA's ``is_causal=False`` then arrives as a tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)


class PixelInput(nn.Module):
    """Takes uint8 ``N x H x W x 3`` pixels and does the scaling and normalisation inside the graph."""

    def __init__(self, model: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.model = model
        std_t = torch.tensor(std).view(1, 3, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std_t))
        self.register_buffer("shift", torch.tensor(mean).view(1, 3, 1, 1) / std_t)

    def forward(self, pixels: Tensor) -> Tensor:
        return self.model(pixels.permute(0, 3, 1, 2).float() * self.scale - self.shift)


class _Int8Weights(nn.Module):
    """A Linear layer's int8 weights ``[in, out]``, per-output-channel scales, and its input scale."""

    def __init__(self, linear: nn.Module) -> None:
        super().__init__()
        weight_amax, input_amax = int8_ranges(linear)
        weight_scale = (weight_amax.reshape(-1).float() / INT8_MAX).clamp(min=torch.finfo(torch.float32).tiny)
        weight = linear.weight.detach().float()
        weight_q = torch.clamp(torch.round(weight / weight_scale[:, None]), -INT8_MAX - 1, INT8_MAX)
        self.register_buffer("weight_q", weight_q.to(torch.int8).t().contiguous())
        self.register_buffer("weight_scale", weight_scale)
        self.register_buffer("input_scale", (input_amax.reshape(()).float() / INT8_MAX))
        bias = linear.bias.detach() if linear.bias is not None else None
        self.register_buffer("bias", bias)


class OrtInt8Linear(_Int8Weights):
    def forward(self, x: Tensor) -> Tensor:
        return Int8Linear.apply(x, self.weight_q, self.weight_scale, self.bias, self.input_scale)


class OrtAttention(nn.Module):
    """timm's ``Attention`` as one ORT kernel for the QKV projection and attention, then its ``proj``."""

    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        self.num_heads = int(attn.num_heads)
        self.int8 = _Int8Weights(attn.qkv) if int8_ranges(attn.qkv) is not None else None
        if self.int8 is None:
            self.qkv_weight = attn.qkv.weight
        bias = attn.qkv.bias if attn.qkv.bias is not None else torch.zeros(attn.qkv.out_features)
        self.register_buffer("qkv_bias", bias.detach().clone())
        self.proj = _ort_linear(attn.proj)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        if self.int8 is not None:
            q = self.int8
            out = Int8Attention.apply(x, q.weight_q, q.weight_scale, self.qkv_bias, q.input_scale, self.num_heads)
        else:
            out = FusedAttention.apply(x, self.qkv_weight, self.qkv_bias, self.num_heads)
        return self.proj(out)


def _ort_linear(linear: nn.Module) -> nn.Module:
    return OrtInt8Linear(linear) if int8_ranges(linear) is not None else linear


def _fusable_attention(module: nn.Module) -> bool:
    """timm's plain ViT/DeiT attention: packed qkv, no q/k norms (BEiT's relative bias is not fusable)."""
    from timm.layers.attention import Attention

    plain = all(isinstance(getattr(module, name, nn.Identity()), nn.Identity) for name in ("q_norm", "k_norm", "norm"))
    return isinstance(module, Attention) and plain and isinstance(module.qkv, nn.Linear)


def for_onnx_runtime(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose attention and INT8 layers trace to ONNX Runtime's fused kernels."""
    model = copy.deepcopy(model).eval()
    replaced: list[str] = []
    for name, module in list(model.named_modules()):
        if not name or any(name.startswith(prefix + ".") for prefix in replaced):
            continue  # a layer that moved into its replaced parent (OrtAttention's qkv and proj)
        if _fusable_attention(module):
            new: nn.Module = OrtAttention(module)
        elif isinstance(module, nn.Linear) and int8_ranges(module) is not None:
            new = OrtInt8Linear(module)
        else:
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
        replaced.append(name)
    return model


def exportable(model: nn.Module, target: str, pixels: bool, mean: list[float], std: list[float]) -> nn.Module:
    """The module to trace for ``target`` (``ort`` or ``standard``), taking raw pixels when ``pixels``."""
    graph_model = for_onnx_runtime(model) if target == "ort" else model
    return PixelInput(graph_model, mean, std).eval() if pixels else ImageInput(graph_model).eval()
