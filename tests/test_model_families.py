"""timm ViTs beyond the plain ViT: each stage works on them, or refuses them in one line before doing anything.

Random weights at 32 px: what is checked (the shape of the surgery, logits before and after, the
exported graph against PyTorch) does not depend on training.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.test_bad_input import assert_clean_failure
from tests.test_export import FP32_TOLERANCE, assert_close_logits, do_export, images, onnx_logits, torch_logits
from tests.test_prune import KWARGS, logits, make_artifact, scrambled, zero_head
from vitcompress.artifact import load_model
from vitcompress.compress.plan import PrunePlan
from vitcompress.compress.prune import apply_plan, prune
from vitcompress.compress.qat import qat
from vitcompress.compress.surgery import mlp_widths
from vitcompress.config import PruneConfig, QatConfig, TrainConfig
from vitcompress.errors import UserError
from vitcompress.models import count_macs, create_model, heads_per_block, parse_model_kwargs

RELPOS = "vit_relpos_small_patch16_224"
DINOV2_SWIGLU = "vit_giant_patch14_dinov2"  # its MLP is SwiGLUPacked: fc1 holds the gate and the value
SWIGLU_KWARGS = {**KWARGS, "mlp_ratio": 4.0}


def test_model_kwargs_take_tuples_and_lists_for_per_stage_models() -> None:
    """Swin's ``depths`` and ``num_heads`` are tuples: their commas are not item separators."""
    kwargs = parse_model_kwargs("depths=(1,1),num_heads=[2, 4],window_size=4,embed_dim=32,global_pool=avg")
    assert kwargs == {"depths": (1, 1), "num_heads": [2, 4], "window_size": 4, "embed_dim": 32, "global_pool": "avg"}
    model = create_model("swin_tiny_patch4_window7_224", {"num_classes": 10, "img_size": 32, **kwargs})
    assert [len(stage.blocks) for stage in model.layers] == [1, 1]
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_macs_of_a_model_with_an_attention_pooling_head() -> None:
    """SigLIP pools with a learned query (``latent.expand``), which the FLOP counter used to fail on."""
    model = create_model("vit_base_patch16_siglip_224", dict(KWARGS))
    assert count_macs(model, 32) > count_macs(create_model("vit_tiny_patch16_224", dict(KWARGS)), 32)
    assert all(p.requires_grad for p in model.parameters())  # frozen while counting only


@pytest.mark.parametrize("target", ["ort", "standard"])
def test_eva02_exports_and_matches_pytorch(tmp_path: Path, target: str) -> None:
    """EVA's forward has an ``is_causal`` flag, which the exporter used to pass as a tensor."""
    src = make_artifact(tmp_path, "eva02_tiny_patch14_224")
    result = do_export(src, tmp_path / "onnx", target=target)
    x = images(pixels=False)
    assert_close_logits(torch_logits(src, x), onnx_logits(result.path / "model.onnx", x), FP32_TOLERANCE)


@pytest.mark.parametrize("name, extra", [
    (RELPOS, {"rel_pos_type": "mlp"}),  # a relative position MLP with one output per head
    (RELPOS, {"rel_pos_type": "bias"}),  # a relative position table with one column per head
    ("eva02_tiny_patch14_224", {}),  # q/v biases beside the fused qkv, RoPE, a SwiGLU MLP
])
def test_heads_come_out_with_what_each_head_owns(name: str, extra: dict) -> None:
    """Removing zeroed heads leaves the logits as they were only if every per-head weight of the right heads goes."""
    model = scrambled(create_model(name, {**KWARGS, **extra})).eval()
    zero_head(model.blocks[0].attn, 2)
    zero_head(model.blocks[1].attn, 0)
    before = logits(model)
    apply_plan(model, PrunePlan(heads=[[2], [0]], mlp=[[], []]), img_size=32)
    assert heads_per_block(model) == [3, 3]
    torch.testing.assert_close(logits(model), before, atol=1e-5, rtol=1e-5)


def test_a_norm_over_the_attention_width_loses_the_heads_channels() -> None:
    """EVA's ``scale_attn_inner`` LayerNorm spans every head, so even a zeroed head moves the others' statistics:
    exact logits cannot be the check; the norm must shrink with the heads and the model still run."""
    model = create_model("eva02_tiny_patch14_224", {**KWARGS, "scale_attn_inner": True}).eval()
    apply_plan(model, PrunePlan(heads=[[2], [0, 1]], mlp=[[], []]), img_size=32)
    assert [b.attn.norm.normalized_shape for b in model.blocks] == [(48,), (32,)]
    assert torch.isfinite(logits(model)).all()


def test_pruned_relpos_model_reloads_and_quantizes_its_attention(tmp_path: Path) -> None:
    src = make_artifact(tmp_path, RELPOS)
    pruned = prune(PruneConfig(src=str(src), out=str(tmp_path / "pruned"), heads=0.5, mlp=0.25, finetune_epochs=0))
    reloaded, meta = load_model(pruned.path)
    assert heads_per_block(reloaded) == meta.heads_per_block == [2, 2] and mlp_widths(reloaded) == [192, 192]
    torch.testing.assert_close(logits(reloaded), logits(pruned.model), atol=0, rtol=0)
    int8 = qat(QatConfig(src=str(pruned.path), out=str(tmp_path / "int8"), calib_size=64, quantize_attention=True,
                         train=TrainConfig(epochs=0, quiet=True)))
    model, _ = load_model(int8.path)
    bmm = [name for name, _ in model.named_modules() if name.endswith("_bmm_quantizer")]
    assert len(bmm) == 3 * 2  # q, k and v of both blocks


@pytest.mark.parametrize("name", [DINOV2_SWIGLU, "eva02_tiny_patch14_224"])
def test_a_gated_mlp_model_loses_heads_but_refuses_mlp_pruning(tmp_path: Path, name: str) -> None:
    src = make_artifact(tmp_path, name, kwargs=SWIGLU_KWARGS if name == DINOV2_SWIGLU else KWARGS)
    result = prune(PruneConfig(src=str(src), out=str(tmp_path / "heads"), heads=0.5, finetune_epochs=0))
    assert result.meta.heads_per_block == [2, 2] and result.meta.mlp_per_block == []
    with pytest.raises(UserError, match="--mlp 0"):
        prune(PruneConfig(src=str(src), out=str(tmp_path / "mlp"), heads=0.5, mlp=0.25, finetune_epochs=0))
    assert not (tmp_path / "mlp").exists()


@pytest.mark.parametrize("name, attention", [("xcit_nano_12_p8_224", "XCA"), ("cait_xxs24_224", "TalkingHeadAttn")])
def test_prune_refuses_attention_it_cannot_cut(tmp_path: Path, capsys: pytest.CaptureFixture, name: str,
                                               attention: str) -> None:
    src = make_artifact(tmp_path, name)
    assert_clean_failure(capsys, ["prune", src, "--heads", "0.5", "--finetune-epochs", "0", "--out", tmp_path / "p"],
                         attention, "prune an artifact of")
    assert not (tmp_path / "p").exists()


def test_quantize_attention_refuses_attention_modelopt_cannot_patch(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = make_artifact(tmp_path, "cait_xxs24_224")
    assert_clean_failure(capsys, ["qat", src, "--epochs", "0", "--calib-size", "16", "--quantize-attention",
                                  "--out", tmp_path / "q"], "--quantize-attention", "drop --quantize-attention")
    assert not (tmp_path / "q").exists()
