"""Swin's shifted-window attention in the form an ONNX graph runs fastest: two gathers instead of rolls and transposes.

timm's ``SwinTransformerBlock`` rolls the ``H x W`` grid by the shift (each roll traces to slices and a concat
per axis), pads it to whole windows, and cuts it into windows with a six-dimensional transpose; after attention it
does all of that backwards. Each of those ops copies the whole residual stream, and none of them is work: the
window order of the tokens is a fixed permutation of the grid. :class:`WindowOrderBlock` applies that permutation
as one ``Gather`` on the way in and its inverse as one on the way out, and adds the relative position bias and
the shift mask as one constant ``[windows, heads, N, N]`` (timm expands the mask to every image's windows first).
Only the block's attention changes form; its layers, norms and MLP are the block's own modules, so quantized layers
export as they would have. Measured on swin_tiny: docs/results.md, "Found: the windows were copies".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def window_order(height: int, width: int, window: tuple[int, int], shift: tuple[int, int]) -> Tensor:
    """For each position of timm's windowed layout (windows in row-major order, tokens row-major inside each), the
    index of the grid token (row-major over ``height x width``) that lands there after the cyclic shift."""
    from timm.models.swin_transformer import window_partition

    grid = torch.arange(height * width).view(1, height, width, 1)
    if any(shift):
        grid = torch.roll(grid, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    return window_partition(grid, window).reshape(-1)


def gatherable(block: nn.Module) -> bool:
    """A timm Swin v1 block whose grid divides into whole windows (a padded grid keeps timm's form)."""
    from timm.models.swin_transformer import SwinTransformerBlock

    if not isinstance(block, SwinTransformerBlock) or getattr(block, "dynamic_mask", False):
        return False
    (height, width), (win_h, win_w) = block.input_resolution, block.window_size
    return height % win_h == 0 and width % win_w == 0


class WindowOrderBlock(nn.Module):
    """timm's ``SwinTransformerBlock`` (eval) with its window attention as gathers (see the module docstring)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        attn = block.attn
        self.norm1, self.norm2, self.mlp = block.norm1, block.norm2, block.mlp
        self.qkv, self.proj = attn.qkv, attn.proj
        self.num_heads, self.scale = int(attn.num_heads), float(attn.scale)
        self.window_area = int(block.window_area)
        self.height, self.width = (int(s) for s in block.input_resolution)
        order = window_order(self.height, self.width, tuple(block.window_size), tuple(block.shift_size))
        self.in_grid_order = bool(torch.equal(order, torch.arange(order.numel())))  # one unshifted window: no gathers
        self.register_buffer("order", order)
        self.register_buffer("inverse", torch.argsort(order))
        bias = attn._get_rel_pos_bias().detach()  # [1, heads, N, N]
        if block.attn_mask is not None:
            bias = bias + block.attn_mask.to(bias.dtype).unsqueeze(1)  # [windows, heads, N, N]
        self.register_buffer("bias", bias.clone())

    def attention(self, x: Tensor) -> Tensor:
        """Window attention of ``x`` (``[B, H * W, C]``, grid order); the output is in grid order too."""
        batch, tokens, channels = x.shape
        windows = (x if self.in_grid_order else x.index_select(1, self.order)).reshape(-1, self.window_area, channels)
        qkv = self.qkv(windows).reshape(windows.shape[0], self.window_area, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        scores = (q * self.scale) @ k.transpose(-2, -1)
        scores = scores.view(batch, -1, self.num_heads, self.window_area, self.window_area) + self.bias
        heads = F.softmax(scores.flatten(0, 1), dim=-1) @ v
        out = self.proj(heads.transpose(1, 2).reshape(batch, tokens, -1))
        return out if self.in_grid_order else out.index_select(1, self.inverse)

    def forward(self, x: Tensor) -> Tensor:
        batch, height, width, channels = x.shape
        x = x.reshape(batch, height * width, channels)
        x = x + self.attention(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return x.reshape(batch, height, width, channels)
