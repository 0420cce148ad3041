"""--init-checkpoint: safe formats, wrapped/prefixed state dicts, head resizing, pos-embed resampling."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vitcompress.checkpoints import read_state_dict
from vitcompress.models import create_model, load_init_checkpoint

KW = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 64, "num_heads": 2}


def _model(num_classes: int = 10, **overrides):
    return create_model("vit_tiny_patch16_224", {**KW, "num_classes": num_classes, **overrides})


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "module_prefix"])
def test_pth_formats(tmp_path: Path, wrap: str) -> None:
    src = _model()
    state = src.state_dict()
    if wrap == "state_dict":
        state = {"state_dict": state, "epoch": 3}
    elif wrap == "module_prefix":
        state = {f"module.{k}": v for k, v in state.items()}
    torch.save(state, tmp_path / "w.pth")
    dst = _model()
    load_init_checkpoint(dst, tmp_path / "w.pth")
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values(), strict=True))


def test_head_is_resized_to_new_classes(shapes_artifact: Path) -> None:
    dst = _model(num_classes=3)
    load_init_checkpoint(dst, shapes_artifact / "model.safetensors")
    src = load_file(str(shapes_artifact / "model.safetensors"))
    assert dst.head.weight.shape == (3, 64)
    assert torch.equal(dst.blocks[1].attn.qkv.weight, src["blocks.1.attn.qkv.weight"])


def test_pos_embed_resampled_for_another_resolution(shapes_artifact: Path) -> None:
    dst = _model(img_size=64)
    load_init_checkpoint(dst, shapes_artifact / "model.safetensors")
    assert dst.pos_embed.shape == (1, 1 + 8 * 8, 64)
    out = dst(torch.zeros(1, 3, 64, 64))
    assert out.shape == (1, 10)


def test_read_state_dict_from_file_or_artifact_dir(shapes_artifact: Path) -> None:
    state = read_state_dict(shapes_artifact / "model.safetensors")
    assert "pos_embed" in state and state["head.weight"].shape == (10, 64)
    from_dir = read_state_dict(shapes_artifact)
    assert all(torch.equal(state[k], from_dir[k]) for k in state)
