"""Least-squares reconstruction after pruning (``compress/reconstruct.py``, ``prune --reconstruct``)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from tests.conftest import run_cli
from tests.test_prune import KWARGS, logits, scrambled
from vitcompress.compress.plan import PrunePlan
from vitcompress.compress.prune import apply_plan
from vitcompress.compress.reconstruct import reconstruct
from vitcompress.compress.surgery import head_channels, head_dim
from vitcompress.models import create_model


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
    errors = reconstruct(model, reference, [images(0), images(1)], mlp=False)
    assert all(after < 1e-3 for _, after in errors)
    assert relative_error(model, reference) < 1e-3


def test_refit_with_nothing_removed_changes_nothing() -> None:
    model = scrambled(create_model("vit_tiny_patch16_224", dict(KWARGS))).eval()
    reference = copy.deepcopy(model)
    reconstruct(model, reference, [images(0)], mlp=True)
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
    errors = reconstruct(model, reference, [images(0, 32), images(1, 32)], mlp=True)
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
    errors = reconstruct(model, reference, [images(0, 32), images(1, 32)], mlp=False)
    assert all(block.attn.proj.bias is None for block in model.blocks)
    assert all(after < before for before, after in errors)
    assert relative_error(model, reference) < 0.5 * cut
