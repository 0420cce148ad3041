"""Swin (hierarchical, windowed attention) through every stage: finetune, prune (heads per stage, MLP channels,
global ranking within a stage), qat, export on both targets, predict."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import onnx
import pytest
import torch

from tests.conftest import run_cli
from vitcompress.artifact import load_model
from vitcompress.compress.prune import prune
from vitcompress.compress.quantize import active_quantizers
from vitcompress.compress.surgery import blocks_of, remove_heads
from vitcompress.config import PruneConfig
from vitcompress.models import create_model, heads_per_block

# Two stages (2 + 2 blocks, 2 then 4 heads) at 32 px: 4 px patches make an 8x8 grid, so stage 1 has four 4x4 windows
# and shifted windows (with their attention mask); stage 2's 4x4 grid is one window.
SWIN_KWARGS = "depths=(2,2),num_heads=(2,4),embed_dim=32,window_size=4"
SWIN = ["--model", "swin_tiny_patch4_window7_224", "--img-size", "32", "--model-kwargs", SWIN_KWARGS,
        "--drop-path", "0", "--lr", "1e-3", "--batch-size", "64", "--quiet"]


def tiny_swin(name: str = "swin_tiny_patch4_window7_224") -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(name, {"num_classes": 10, "img_size": 32, "depths": (2, 2), "num_heads": (2, 4),
                               "embed_dim": 32, "window_size": 4}).eval()


@pytest.fixture(scope="module")
def swin_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("swin") / "fp32"
    assert run_cli("finetune", *SWIN, "--data", "shapes", "--epochs", "10", "--out", out) == 0
    return out


def test_swin_trains_and_records_heads_per_block(swin_artifact: Path) -> None:
    meta = json.loads((swin_artifact / "vitcompress.json").read_text())
    assert meta["model"]["heads_per_block"] == [2, 2, 4, 4]
    assert meta["metrics"]["top1"] > 0.3  # chance is 0.1


@pytest.mark.parametrize("name", ["swin_tiny_patch4_window7_224", "swinv2_tiny_window8_256"])
def test_removing_a_silent_head_leaves_the_output_unchanged(name: str) -> None:
    """A head whose proj columns are zero adds nothing: cutting it (its q/k/v rows, proj columns, relative position
    bias column; SwinV2: its logit scale and position-bias MLP output) must leave every other head's output, bias
    and the shift mask as they were. Per-head weights are made to differ, so a cut of the wrong one shows."""
    model = tiny_swin(name)
    block = blocks_of(model)[1]  # a shifted-window block
    attn = block.attn
    d = attn.qkv.out_features // (3 * attn.num_heads)
    with torch.no_grad():
        attn.proj.weight[:, :d] = 0  # head 0 is silent
        for norm in (block.norm1, block.norm2):  # SwinV2 starts its post-norms at 0, which would hide attention
            norm.weight.fill_(1.0)
        for per_head in ("relative_position_bias_table", "logit_scale"):
            if hasattr(attn, per_head):
                torch.nn.init.normal_(getattr(attn, per_head), mean=1.0, std=1.0)
        if hasattr(attn, "cpb_mlp"):
            torch.nn.init.normal_(attn.cpb_mlp[-1].weight, std=1.0)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        unchanged = copy.deepcopy(model)
        remove_heads(blocks_of(unchanged)[1].attn, [])  # a plan that removes nothing
        torch.testing.assert_close(unchanged(x), before, atol=0, rtol=0)
        wrong = copy.deepcopy(model)
        remove_heads(blocks_of(wrong)[1].attn, [1])  # the head that speaks: the output must change
        assert (wrong(x) - before).abs().max() > 1e-4
        remove_heads(attn, [0])
        after = model(x)
    assert attn.num_heads == 1
    torch.testing.assert_close(after, before, atol=1e-6, rtol=1e-6)


def test_window_gathers_compute_what_timms_blocks_compute() -> None:
    """The export form of Swin's blocks (two gathers, one bias constant) gives timm's output, shifted windows and
    their mask included, also with uneven heads; and a wrong bias would show."""
    from vitcompress.export.graph import with_window_gathers
    from vitcompress.export.swin_windows import WindowOrderBlock

    model = tiny_swin()
    remove_heads(blocks_of(model)[1].attn, [0])  # heads 2, 1, 4, 4: a shifted block with one head left
    gathered = with_window_gathers(copy.deepcopy(model))
    blocks = [m for m in gathered.modules() if isinstance(m, WindowOrderBlock)]
    assert len(blocks) == 4 and blocks[1].bias.shape == (4, 1, 16, 16)  # 4 windows (8x8 grid), 1 head, 4x4 window
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(gathered(x), model(x), atol=1e-5, rtol=1e-5)
        blocks[1].bias[0, :, :, 0] += 5.0  # attention to the first token of the first window
        assert (gathered(x) - model(x)).abs().max() > 1e-4


def test_prune_halves_the_heads_of_every_stage_and_reloads(swin_artifact: Path, tmp_path: Path) -> None:
    out = tmp_path / "pruned"
    assert run_cli("prune", swin_artifact, "--heads", "0.5", "--mlp", "0.25", "--criterion", "taylor",
                   "--finetune-epochs", "1", "--batch-size", "64", "--quiet", "--out", out) == 0
    model, meta = load_model(out)
    assert heads_per_block(model) == meta.heads_per_block == [1, 1, 2, 2]
    assert [b.attn.qkv.out_features for b in blocks_of(model)] == [48, 48, 96, 96]  # 3 x heads x 16 (head width)
    assert [b.mlp.fc1.out_features for b in blocks_of(model)] == [96, 96, 192, 192]  # 128 and 256, less a quarter
    assert json.loads((out / "vitcompress.json").read_text())["metrics"]["top1"] > 0.2


def test_global_ranking_ranks_within_each_stage(swin_artifact: Path) -> None:
    """Global ranking compares heads of one stage (one width) only: each stage loses half of its heads, but a
    stage's blocks may lose different numbers."""
    preview = prune(PruneConfig(src=str(swin_artifact), heads=0.5, ranking="global", criterion="l1", dry_run=True))
    assert preview.heads_before == [2, 2, 4, 4]
    after = preview.heads_after
    assert after[0] + after[1] == 2 and after[2] + after[3] == 4 and min(after) >= 1


def test_swin_int8_quantizes_patch_merging_and_exports(swin_artifact: Path, tmp_path: Path) -> None:
    int8 = tmp_path / "int8"
    assert run_cli("qat", swin_artifact, "--epochs", "0", "--calib-size", "128", "--quiet", "--out", int8) == 0
    model, meta = load_model(int8)
    quantized = {name for name, module in model.named_modules() if hasattr(module, "weight_quantizer")}
    assert "layers.1.downsample.reduction" in quantized and "layers.0.blocks.1.attn.qkv" in quantized
    # INT8 goes into the layers with weights only: no LayerNorm quantizes its input (the residual stream)
    active = [name.rsplit(".", 1)[0] for name, _ in active_quantizers(model)]
    assert active and all(isinstance(model.get_submodule(name), torch.nn.Linear) for name in active)
    for source, target, precision in ((swin_artifact, "ort", "fp32"), (swin_artifact, "standard", "fp16"),
                                      (int8, "ort", "int8"), (int8, "standard", "int8")):
        out = tmp_path / f"onnx-{source.name}-{target}-{precision}"
        assert run_cli("export", source, "--target", target, "--precision", precision, "--out", out) == 0
        verify = json.loads((out / "verify.json").read_text())["onnxruntime"]
        assert verify["passed"] and verify["batch_sizes"] == [1, 7], verify  # dynamic batch
        if target == "ort":  # the windows are gathers: only PatchMerging pads
            graph = onnx.load(str(out / "model.onnx")).graph
            assert {n.input[1] for n in graph.node if n.op_type == "Gather"} >= {"model.layers.0.blocks.1.order",
                                                                                  "model.layers.0.blocks.1.inverse"}
            assert all("downsample" in n.name for n in graph.node if n.op_type == "Pad")


def test_predict_on_a_swin_export(swin_artifact: Path, tmp_path: Path, capsys) -> None:
    from PIL import Image

    out = tmp_path / "onnx"
    assert run_cli("export", swin_artifact, "--out", out) == 0
    image = tmp_path / "x.png"
    Image.new("RGB", (40, 40), (200, 30, 30)).save(image)
    capsys.readouterr()
    assert run_cli("predict", out, image) == 0
    assert "x.png" in capsys.readouterr().out
