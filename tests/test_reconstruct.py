"""Least-squares reconstruction after pruning (``compress/reconstruct.py``, ``prune --reconstruct``)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from tests.conftest import run_cli
from tests.test_prune import KWARGS, logits, scrambled
from vitcompress.compress import reconstruct as reconstruction
from vitcompress.compress.plan import PrunePlan
from vitcompress.compress.prune import apply_plan
from vitcompress.compress.reconstruct import _stream_scale, _sublayers, reconstruct
from vitcompress.compress.surgery import head_channels, head_dim
from vitcompress.models import attention_blocks, create_model


def images(seed: int, n: int = 16) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def relative_error(model: torch.nn.Module, reference: torch.nn.Module) -> float:
    got, want = logits(model, seed=99), logits(reference, seed=99)
    return float((got - want).pow(2).sum() / want.pow(2).sum())


def duplicate_head(attn: torch.nn.Module, source: int, copy_to: int) -> None:
    """Make head ``copy_to`` compute exactly what head ``source`` does (q, k and v rows alike)."""
    width = attn.num_heads * head_dim(attn)
    src, dst = head_channels(attn, [source]), head_channels(attn, [copy_to])
    with torch.no_grad():
        for part in range(3):
            rows_src, rows_dst = [part * width + c for c in src], [part * width + c for c in dst]
            attn.qkv.weight[rows_dst] = attn.qkv.weight[rows_src]
            attn.qkv.bias[rows_dst] = attn.qkv.bias[rows_src]


def test_a_removed_duplicate_head_is_restored() -> None:
    """A head that duplicates a kept one is a linear function of it: the refit folds its proj columns into the
    kept head's, and the pruned model gives the unpruned model's logits again (up to the ridge's small pull
    towards the old weights: 1e-3 against the 5e-2 of the cut alone)."""
    model = scrambled(create_model("vit_tiny_patch16_224", dict(KWARGS))).eval()
    for block in model.blocks:
        duplicate_head(block.attn, source=0, copy_to=2)
    reference = copy.deepcopy(model)
    apply_plan(model, PrunePlan(heads=[[2], [2]], mlp=[[], []]), img_size=32)
    assert relative_error(model, reference) > 1e-2  # the cut alone loses what head 2 added
    errors = reconstruct(model, reference, [images(0), images(1)])
    assert all(after < 1e-3 for _, after in errors)
    assert relative_error(model, reference) < 1e-3


def test_refit_with_nothing_removed_changes_nothing() -> None:
    model = scrambled(create_model("vit_tiny_patch16_224", dict(KWARGS))).eval()
    reference = copy.deepcopy(model)
    reconstruct(model, reference, [images(0)])
    for got, want in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "beitv2_base_patch16_224"])
def test_refit_brings_a_pruned_model_closer_to_its_parent(name: str) -> None:
    """Half the heads and a quarter of the MLP channels gone: the refit (on other images than those checked) cuts
    the logits' error, and every layer's fit error, on BEiT too (its heads keep separate q/v biases)."""
    model = scrambled(create_model(name, dict(KWARGS))).eval()
    reference = copy.deepcopy(model)
    apply_plan(model, PrunePlan(heads=[[0, 1], [2, 3]], mlp=[list(range(64)), list(range(64, 128))]), img_size=32)
    cut = relative_error(model, reference)
    errors = reconstruct(model, reference, [images(0, 32), images(1, 32)])
    assert len(errors) == 4  # proj and fc2 of both blocks
    assert all(after < before for before, after in errors)
    assert relative_error(model, reference) < 0.5 * cut


def test_prune_records_the_refit_and_no_reconstruct_leaves_it_out(shapes_artifact: Path, tmp_path: Path) -> None:
    for flag in ("--reconstruct", "--no-reconstruct"):
        out = tmp_path / flag
        assert run_cli("prune", shapes_artifact, "--heads", "0.5", "--finetune-epochs", "0", flag, "--quiet",
                       "--out", out) == 0
        step = json.loads((out / "vitcompress.json").read_text())["metrics"]["pruning"]["steps"][0]
        if flag == "--reconstruct":
            assert step["reconstruction_error"]["after"] < step["reconstruction_error"]["before"]
        else:
            assert step["reconstruction_error"] is None


def test_a_bias_free_projection_is_refitted_without_gaining_a_bias() -> None:
    """A ``proj`` without a bias is fitted on its inputs alone (no column of ones) and stays bias-free."""
    model = scrambled(create_model("vit_tiny_patch16_224", dict(KWARGS))).eval()
    for block in model.blocks:
        block.attn.proj.bias = None
    reference = copy.deepcopy(model)
    apply_plan(model, PrunePlan(heads=[[0, 1], [2, 3]], mlp=[[], []]), img_size=32)
    cut = relative_error(model, reference)
    errors = reconstruct(model, reference, [images(0, 32), images(1, 32)])
    assert all(block.attn.proj.bias is None for block in model.blocks)
    assert all(after < before for before, after in errors)
    assert relative_error(model, reference) < 0.5 * cut


def stream_scales(model: torch.nn.Module) -> list[torch.Tensor | None]:
    """What the refit finds each block to multiply its ``proj`` and ``fc2`` outputs by before adding them to the
    residual stream (None: not added to the stream as it is read, so the layer is fitted to its own output)."""
    return [_stream_scale(model, layer, before, after, images(0))
            for block in attention_blocks(model) for layer, before, after in _sublayers(block)]


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "deit3_small_patch16_224", "beitv2_base_patch16_224"])
def test_the_refit_finds_each_layers_scale_on_the_residual_stream(name: str) -> None:
    """ViT adds ``proj``/``fc2`` outputs as they are, DeiT III through a LayerScale, BEiT through ``gamma_1``/``2``."""
    model = scrambled(create_model(name, dict(KWARGS))).eval()
    expected = []
    for block in model.blocks:
        for ls, gamma in (("ls1", "gamma_1"), ("ls2", "gamma_2")):
            scale = getattr(getattr(block, ls, None), "gamma", None)
            scale = getattr(block, gamma, None) if scale is None else scale
            expected.append(torch.ones(64) if scale is None else scale.detach().double())
    for got, want in zip(stream_scales(model), expected, strict=True):
        torch.testing.assert_close(got, want.double(), rtol=1e-4, atol=1e-6)


def test_swin_attention_is_fitted_to_its_own_output() -> None:
    """Swin adds its attention's output after reversing the windows, so in stage 1 (four 4x4 windows of an 8x8
    grid) the rows of ``proj``'s output are not the stream's; stage 2's 4x4 grid is one window, whose rows are
    in the stream's order; every MLP adds to the stream as ViT's does."""
    model = scrambled(create_model("swin_tiny_patch4_window7_224", {
        "num_classes": 10, "img_size": 32, "depths": (2, 2), "num_heads": (2, 4), "embed_dim": 32, "window_size": 4}))
    scales = stream_scales(model.eval())
    assert [s is None for s in scales[0::2]] == [True, True, False, False]  # proj of each block
    assert all(s is not None for s in scales[1::2])  # fc2 of each block


def test_fitting_the_stream_leaves_the_logits_closer_than_fitting_each_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stream target makes each layer also absorb what earlier blocks still get wrong: after the same cut, the
    pruned model's logits end closer to the parent's than when every layer is fitted to its own output."""
    model = scrambled(create_model("vit_tiny_patch16_224", dict(KWARGS))).eval()
    reference = copy.deepcopy(model)
    apply_plan(model, PrunePlan(heads=[[0, 1, 2], []], mlp=[[], []]), img_size=32)  # block 1 must fix block 0's error
    per_layer = copy.deepcopy(model)
    reconstruct(model, reference, [images(0, 32), images(1, 32)])
    monkeypatch.setattr(reconstruction, "_stream_scale", lambda *args: None)
    reconstruct(per_layer, reference, [images(0, 32), images(1, 32)])
    assert relative_error(model, reference) < 0.95 * relative_error(per_layer, reference)  # measured: 0.90x
