"""Starting weights: --pretrained through timm's hub loader (from an offline cache), and --init-checkpoint: safe
formats, wrapped/prefixed state dicts, head resizing, pos-embed resampling."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub
import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import run_cli
from vitcompress.checkpoints import read_state_dict
from vitcompress.errors import UserError
from vitcompress.models import create_model, load_init_checkpoint

KW = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 64, "num_heads": 2}


def _model(num_classes: int = 10, **overrides):
    return create_model("vit_tiny_patch16_224", {**KW, "num_classes": num_classes, **overrides})


def write_hub_snapshot(cache: Path, repo_id: str, state: dict[str, torch.Tensor]) -> None:
    """A Hugging Face hub cache holding ``repo_id``'s ``model.safetensors``, laid out as ``hf_hub_download`` leaves it."""
    revision = "0" * 40
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    (repo / "snapshots" / revision).mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(repo / "snapshots" / revision / "model.safetensors"))


def test_pretrained_weights_come_through_timms_hub_loader_from_an_offline_cache(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--pretrained`` runs timm's real loading code (the hub download, then its checkpoint filter: the
    1000-class head dropped, position and patch embeddings resampled from 224 px / 16 px patches to
    32 px / 8 px). With ``HF_HUB_OFFLINE=1`` (set for all tests) the weights come from the local cache,
    as on a cluster without internet; ``--head-only`` keeps the loaded blocks as they were for the check."""
    name = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    hub_model = create_model("vit_tiny_patch16_224", {"depth": 2, "embed_dim": 64, "num_heads": 2})  # 224 px, 1000 classes
    write_hub_snapshot(tmp_path / "hub", f"timm/{name}", hub_model.state_dict())
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    out = tmp_path / "out"
    assert run_cli("finetune", "--model", name, "--pretrained", "--img-size", "32", "--patch-size", "8",
                   "--model-kwargs", "depth=2,embed_dim=64,num_heads=2", "--data", "shapes", "--epochs", "1",
                   "--head-only", "--batch-size", "64", "--quiet", "--out", out) == 0
    loaded, hub = load_file(str(out / "model.safetensors")), hub_model.state_dict()
    assert all(torch.equal(loaded[k], hub[k]) for k in hub if k.startswith(("blocks.", "cls_token", "norm.")))
    assert loaded["pos_embed"].shape == (1, 1 + 4 * 4, 64) and loaded["patch_embed.proj.weight"].shape[-1] == 8
    assert loaded["head.weight"].shape == (10, 64)


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


def test_a_checkpoint_with_larger_patches_starts_a_small_patch_model(tmp_path: Path) -> None:
    """timm's converter resamples the patch embedding (16px -> 8px kernels), as its pretrained loading does."""
    src = _model(img_size=64, patch_size=16)
    torch.save(src.state_dict(), tmp_path / "p16.pth")
    dst = _model()
    load_init_checkpoint(dst, tmp_path / "p16.pth")
    assert dst.patch_embed.proj.weight.shape == (64, 3, 8, 8)
    assert torch.equal(dst.blocks[1].attn.qkv.weight, src.blocks[1].attn.qkv.weight)


def test_an_original_dinov2_checkpoint_with_registers_loads(tmp_path: Path) -> None:
    """Meta's DINOv2 layout (mask token, register tokens, class position inside pos_embed) through timm's converter."""
    name, kw = "vit_small_patch14_reg4_dinov2", {**KW, "num_classes": 10}
    src = create_model(name, kw)
    state = {k: v for k, v in src.state_dict().items() if k not in ("reg_token", "cls_token", "pos_embed")}
    cls_position = torch.randn(1, 1, 64)
    original = {**state, "mask_token": torch.zeros(1, 64), "register_tokens": src.reg_token.detach(),
                "cls_token": src.cls_token.detach() - cls_position,
                "pos_embed": torch.cat([cls_position, src.pos_embed.detach()], dim=1)}
    torch.save(original, tmp_path / "dinov2_original.pth")
    dst = create_model(name, kw)
    load_init_checkpoint(dst, tmp_path / "dinov2_original.pth")
    for key, value in src.state_dict().items():
        torch.testing.assert_close(dst.state_dict()[key], value, msg=key)


def test_a_backbone_checkpoint_says_what_was_loaded_resampled_and_new(tmp_path: Path, shapes_artifact: Path) -> None:
    state = {k: v for k, v in load_file(str(shapes_artifact / "model.safetensors")).items() if not k.startswith("head.")}
    save_file(state, str(tmp_path / "backbone.safetensors"))
    dst = _model(img_size=64, num_classes=3)
    keys = load_init_checkpoint(dst, tmp_path / "backbone.safetensors")
    assert keys["new"] == ["head.bias", "head.weight"] and keys["resampled"] == ["pos_embed"]
    assert len(keys["loaded"]) == len(state) - 1 and "blocks.1.attn.qkv.weight" in keys["loaded"]
    assert torch.equal(dst.blocks[1].attn.qkv.weight, state["blocks.1.attn.qkv.weight"])


def test_a_key_that_matches_nothing_is_refused(tmp_path: Path, shapes_artifact: Path) -> None:
    state = load_file(str(shapes_artifact / "model.safetensors"))
    save_file({**state, "blocks.0.adapter.weight": torch.zeros(4)}, str(tmp_path / "extra.safetensors"))
    with pytest.raises(UserError, match=r"unexpected: 1 \(e\.g\. blocks\.0\.adapter\.weight\)"):
        load_init_checkpoint(_model(), tmp_path / "extra.safetensors")
