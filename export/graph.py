"""Give a model the form its ONNX graph should have (``--target``), before it is traced.

- ``ort``: timm's attention blocks become one ``Attention`` kernel (``QAttention`` when the QKV
  projection is INT8; ``MultiHeadAttention`` after the projection with token merging, whose size bias the
  other two have no input for) and every other
  INT8 Linear becomes ``MatMulIntegerToFloat``, with the int8 weights and the scales QAT learned
  (``ort_ops.py``); Swin's shifted windows become two gathers (``swin_windows.py``). This is the graph ONNX
  Runtime's CPU provider runs fastest; it needs ONNX Runtime (contrib ops).
- ``standard``: the model is traced as it is, except INT8 attention (:class:`Int8StandardAttention`).
  Quantized layers export as standard ``QuantizeLinear``/``DequantizeLinear`` pairs (modelopt's own
  export), the explicit-quantization form TensorRT builds INT8 kernels from and OpenVINO turns into
  its own INT8 layers; only standard ONNX ops.

Either way the graph can take raw pixels (:class:`PixelInput`).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from vitcompress.compress.quantize import int8_ranges
from vitcompress.compress.token_merging import merging_of, size_bias
from vitcompress.export.ort_ops import BiasedAttention, FusedAttention, Int8Attention, Int8Linear
from vitcompress.export.swin_windows import WindowOrderBlock, gatherable

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


class OrtMergingAttention(nn.Module):
    """timm's attention inside a token-merging block, for ONNX Runtime: q, k and v as three projections (INT8 or
    not; one packed projection's output would be sliced in three, copies that cost more than the three MatMuls
    save), then ``MultiHeadAttention`` with the size bias (:class:`BiasedAttention`); also the merge metric (keys
    averaged over heads). Without it, a merged model's attention ran as separate MatMul/Softmax ops."""

    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.scale = int(attn.num_heads), int(attn.head_dim), float(attn.scale)
        width = self.num_heads * self.head_dim
        self.q, self.k, self.v = (_ort_linear(_output_rows(attn.qkv, slice(i * width, (i + 1) * width)))
                                  for i in range(3))
        self.proj = _ort_linear(attn.proj)

    def attend_sized(self, x: Tensor, size: Tensor | None) -> tuple[Tensor, Tensor]:
        tokens = int(x.shape[1])  # a constant in the graph: only the batch is dynamic
        k = self.k(x)
        bias = None if size is None else size_bias(size).repeat(1, 1, tokens, 1)  # the kernel wants [B, 1, T, T]
        out = BiasedAttention.apply(self.q(x), k, self.v(x), bias, self.num_heads, self.scale)
        return self.proj(out), k.reshape(-1, tokens, self.num_heads, self.head_dim).mean(dim=2)


class Int8StandardAttention(nn.Module):
    """timm's attention with INT8 projections, traced in the form OpenVINO fuses (the same numbers, only standard ops):

    - q, k and v are three projections behind one input quantizer, where timm splits one ``qkv`` output with a
      five-dimensional transpose: OpenVINO ran that transpose and the split as separate layers, and now folds the
      one quantizer into the LayerNorm before it;
    - ``proj``'s input is quantized before the heads are merged, not after (a per-tensor quantizer commutes with
      the transpose and reshape between), so OpenVINO folds it into its attention kernel, which then writes int8.

    Per block of vit_small at batch 32 (OpenVINO 2026.4, Xeon with AMX) this removed about 3.5 ms of 35: the split,
    one transpose, and a reorder and quantization of the attention output.
    """

    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.scale = int(attn.num_heads), int(attn.head_dim), float(attn.scale)
        width = self.num_heads * self.head_dim
        self.input_quantizer, qkv = _input_quantizer_apart(attn.qkv)
        self.q, self.k, self.v = (_output_rows(qkv, slice(i * width, (i + 1) * width)) for i in range(3))
        self.proj_input_quantizer, self.proj = _input_quantizer_apart(attn.proj)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        batch, tokens, _ = x.shape
        x = self.input_quantizer(x)
        q, k, v = (layer(x).reshape(batch, tokens, self.num_heads, self.head_dim).transpose(1, 2)
                   for layer in (self.q, self.k, self.v))
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        heads = self.proj_input_quantizer(attn @ v)
        return self.proj(heads.transpose(1, 2).reshape(batch, tokens, self.num_heads * self.head_dim))


def _input_quantizer_apart(linear: nn.Module) -> tuple[nn.Module, nn.Module]:
    """``linear``'s input quantizer (an identity where it has none) and a copy of ``linear`` without it."""
    if int8_ranges(linear) is None:
        return nn.Identity(), linear
    layer = copy.deepcopy(linear)
    layer.input_quantizer.disable()
    return linear.input_quantizer, layer


def _output_rows(linear: nn.Module, rows: slice) -> nn.Module:
    """A copy of ``linear`` computing only the output channels ``rows`` (with their weight scales, if INT8)."""
    part = copy.deepcopy(linear)
    part.weight = nn.Parameter(linear.weight.detach()[rows].clone(), requires_grad=False)
    if linear.bias is not None:
        part.bias = nn.Parameter(linear.bias.detach()[rows].clone(), requires_grad=False)
    part.out_features = part.weight.shape[0]
    weight_quantizer = getattr(part, "weight_quantizer", None)
    if weight_quantizer is not None and weight_quantizer.amax is not None and weight_quantizer.amax.numel() > 1:
        amax = linear.weight_quantizer.amax.detach()[rows].clone()  # per output channel
        weight_quantizer.reset_amax()
        weight_quantizer.amax = amax
    return part


def for_standard_graph(model: nn.Module) -> nn.Module:
    """``model``, or a copy whose INT8 attention traces to the form OpenVINO fuses (:class:`Int8StandardAttention`)."""
    if merging_of(model) or not any(_int8_attention(m) for m in model.modules()):
        return model  # a merging model runs its own attention (with the size bias), from the same modules
    model = copy.deepcopy(model).eval()
    for name, module in list(model.named_modules()):
        if _int8_attention(module):
            _replace(model, name, Int8StandardAttention(module))
    return model


def _int8_attention(module: nn.Module) -> bool:
    return _fusable_attention(module) and int8_ranges(module.qkv) is not None


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` where ``model``'s submodule ``name`` is."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _ort_linear(linear: nn.Module) -> nn.Module:
    return OrtInt8Linear(linear) if int8_ranges(linear) is not None else linear


def _fusable_attention(module: nn.Module) -> bool:
    """timm's plain ViT/DeiT attention: packed qkv, no q/k norms or gate (BEiT's relative bias is not fusable)."""
    from timm.layers.attention import Attention

    plain = all(isinstance(getattr(module, name, nn.Identity()), nn.Identity) for name in ("q_norm", "k_norm", "norm"))
    ungated = getattr(module, "gate", None) is None
    return isinstance(module, Attention) and plain and ungated and isinstance(module.qkv, nn.Linear)


def with_window_gathers(model: nn.Module) -> nn.Module:
    """``model`` (a copy for export) with every Swin block that can be in :class:`WindowOrderBlock` form."""
    for name, module in list(model.named_modules()):
        if gatherable(module):
            _replace(model, name, WindowOrderBlock(module))
    return model


def for_onnx_runtime(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose attention and INT8 layers trace to ONNX Runtime's fused kernels (and whose Swin
    windows are gathers, ``swin_windows.py``)."""
    model = with_window_gathers(copy.deepcopy(model).eval())
    merging = merging_of(model) is not None  # its attention adds a size bias: MultiHeadAttention takes one
    replaced: list[str] = []
    for name, module in list(model.named_modules()):
        if not name or any(name.startswith(prefix + ".") for prefix in replaced):
            continue  # a layer that moved into its replaced parent (OrtAttention's qkv and proj)
        if _fusable_attention(module):
            new: nn.Module = OrtMergingAttention(module) if merging else OrtAttention(module)
        elif isinstance(module, nn.Linear) and int8_ranges(module) is not None:
            new = OrtInt8Linear(module)
        else:
            continue
        _replace(model, name, new)
        replaced.append(name)
    return model


def exportable(model: nn.Module, target: str, pixels: bool, mean: list[float], std: list[float]) -> nn.Module:
    """The module to trace for ``target`` (``ort`` or ``standard``), taking raw pixels when ``pixels``."""
    graph_model = for_onnx_runtime(model) if target == "ort" else for_standard_graph(model)
    return PixelInput(graph_model, mean, std).eval() if pixels else ImageInput(graph_model).eval()
