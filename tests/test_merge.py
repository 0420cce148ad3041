"""merge: token merging keeps the prefix tokens and the size-weighted sum, follows its schedule, rebuilds from the
artifact, stacks with INT8 in both orders, exports verified to ONNX and OpenVINO, and refuses what it cannot do."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch

from tests.conftest import run_cli
from tests.test_export import FP32_TOLERANCE, INT8_MIN_AGREEMENT, assert_close_logits, do_export, images, torch_logits
from vitcompress.artifact import load_model
from vitcompress.compress.merge import merge
from vitcompress.compress.token_merging import (
    apply_merging,
    check_mergeable,
    merge_tokens,
    r_for_keep,
    schedule,
    tokens_per_block,
)
from vitcompress.config import MergeConfig
from vitcompress.errors import UserError
from vitcompress.models import count_macs, create_model
from vitcompress.pipeline import plan


@pytest.fixture(scope="module")
def merged_artifact(shapes_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("merge") / "merged"
    merge(MergeConfig(src=str(shapes_artifact), out=str(out), keep=0.5))
    return out


def test_schedules_leave_the_share_asked_for() -> None:
    assert r_for_keep(0.4, 12, 196) == [10] * 12  # 196 - 120 = 76 patch tokens left: 39 %
    decreasing = r_for_keep(0.4, 12, 196, "decreasing")
    assert decreasing == sorted(decreasing, reverse=True) and decreasing[0] > decreasing[-1]
    assert abs(196 - sum(decreasing) - 0.4 * 196) <= 6
    assert schedule(4, 8, "decreasing") == [12, 9, 6, 4]
    assert tokens_per_block([4, 4], 16, 1) == [13, 9]
    assert r_for_keep(0.0, 3, 16) == [8, 4, 2]  # never more than half of what a block receives


def test_a_merge_keeps_the_size_weighted_sum_and_the_prefix_tokens() -> None:
    torch.manual_seed(0)
    x, metric = torch.randn(3, 1 + 20, 8), torch.randn(3, 1 + 20, 5)
    size = torch.ones(3, 21, 1)
    merged, sizes = merge_tokens(x, size, metric, 6, prefix=1)
    assert merged.shape == (3, 15, 8) and sizes.shape == (3, 15, 1)
    assert torch.equal(merged[:, 0], x[:, 0]) and torch.equal(sizes[:, 0], size[:, 0])  # the class token
    assert torch.allclose((merged * sizes).sum(1), (x * size).sum(1), atol=1e-5)  # nothing lost, nothing made
    assert torch.equal(sizes.sum(1), size.sum(1)) and sizes.max() >= 2


def tome_merge(x: torch.Tensor, size: torch.Tensor, metric: torch.Tensor, r: int,
               prefix: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ToMe's own merge (facebookresearch/ToMe, ``bipartite_soft_matching`` and ``merge_wavg``), with its
    ``scatter_reduce``, written from the paper's code as the reference."""
    metric = metric / metric.norm(dim=-1, keepdim=True)
    a, b = metric[:, prefix::2], metric[:, prefix + 1::2]
    node_max, node_idx = (a @ b.transpose(-1, -2)).max(dim=-1)
    edge_idx = node_max.argsort(dim=-1, descending=True)[..., None]
    unm_idx, src_idx = edge_idx[:, r:], edge_idx[:, :r]
    dst_idx = node_idx[..., None].gather(dim=-2, index=src_idx)

    def merge(t: torch.Tensor) -> torch.Tensor:
        src, dst = t[:, prefix::2], t[:, prefix + 1::2]
        n, _, c = src.shape
        unm = src.gather(dim=-2, index=unm_idx.expand(n, -1, c))
        src = src.gather(dim=-2, index=src_idx.expand(n, r, c))
        dst = dst.scatter_reduce(-2, dst_idx.expand(n, r, c), src, reduce="sum")
        return torch.cat([t[:, :prefix], unm, dst], dim=1)

    summed, sizes = merge(x * size), merge(size)
    return summed / sizes, sizes


@pytest.mark.parametrize("patches, r, prefix", [(20, 6, 1), (21, 10, 2), (196, 16, 1)])
def test_the_merge_is_tomes(patches: int, r: int, prefix: int) -> None:
    """The one-MatMul merge gives what ToMe's gather/scatter_reduce merge gives, token for token, sizes too."""
    torch.manual_seed(0)
    x, metric = torch.randn(3, prefix + patches, 8), torch.randn(3, prefix + patches, 5)
    size = torch.randint(1, 4, (3, prefix + patches, 1)).float()
    expected, expected_sizes = tome_merge(x, size, metric, r, prefix)
    merged, sizes = merge_tokens(x, size, metric, r, prefix)
    torch.testing.assert_close(merged, expected, atol=1e-6, rtol=1e-6)
    assert torch.equal(sizes, expected_sizes)


def test_no_merging_is_the_unmerged_model_and_merging_follows_the_schedule() -> None:
    torch.manual_seed(0)
    kwargs = {"num_classes": 10, "img_size": 32, "patch_size": 4, "depth": 3, "embed_dim": 32, "num_heads": 2}
    for name, prefix in (("vit_tiny_patch16_224", 1), ("deit_tiny_distilled_patch16_224", 2)):
        model = create_model(name, kwargs).eval()
        x = torch.randn(2, 3, 32, 32)
        expected = model(x)  # timm's fused attention
        apply_merging(model, {"per_block": [0, 0, 0]})
        assert torch.allclose(model(x), expected, atol=1e-6)
        apply_merging(model, {"per_block": [10, 8, 4], "prop_attn": True})
        tokens = model.forward_features(x)
        assert tokens.shape[1] == prefix + 64 - 22
        assert model(x).shape == (2, 10) and torch.isfinite(model(x)).all()


def test_merging_saves_more_multiply_adds_than_its_matrix_product_costs() -> None:
    """The merge's MatMul (tokens out x tokens in x width) is counted with the rest: at a real width (192) merging
    8 tokens a block saves more than it costs (at width 32 it would not: the product's cost is quadratic in tokens,
    a block's per-token cost quadratic in width)."""
    kwargs = {"num_classes": 10, "img_size": 32, "patch_size": 4, "depth": 3, "embed_dim": 192, "num_heads": 3}
    model = create_model("vit_tiny_patch16_224", kwargs).eval()
    unmerged_macs = count_macs(model, 32)
    apply_merging(model, {"per_block": [8, 8, 8], "prop_attn": True})
    assert count_macs(model, 32) < 0.9 * unmerged_macs  # attention counted in both, as it runs


def test_merge_writes_an_artifact_that_rebuilds_and_keeps_accuracy(merged_artifact: Path, shapes_artifact: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    model, meta = load_model(merged_artifact)
    assert meta.stage == "merge" and meta.merging["per_block"] == [4, 4]
    assert meta.merging["tokens_per_block"] == [13, 9] and meta.merging["keep"] == 0.5
    report = meta.metrics["merging"]
    assert report["top1_merged"] > 0.2 and report["top1_merged"] >= report["top1_before"] - 0.15  # chance: 0.1
    assert meta.metrics["macs"] < report["before"]["macs"]
    x = torch.randn(3, 3, 32, 32)
    unmerged, _ = load_model(shapes_artifact)
    assert model.forward_features(x).shape[1] == 9 < unmerged.forward_features(x).shape[1] == 17
    assert run_cli("info", merged_artifact) == 0
    assert "r per block [4, 4]" in capsys.readouterr().out
    assert run_cli("eval", merged_artifact, "--data", "shapes", "--quiet", "--json") == 0
    assert json.loads(capsys.readouterr().out)["top1"] == pytest.approx(meta.metrics["top1"])


def test_recovery_trains_the_merged_model_from_the_unmerged_teacher(tmp_path: Path, shapes_artifact: Path) -> None:
    from vitcompress.config import TrainConfig

    result = merge(MergeConfig(src=str(shapes_artifact), out=str(tmp_path / "ft"), r=4, finetune_epochs=1,
                               train=TrainConfig(quiet=True, batch_size=64)))
    report = result.meta.metrics["merging"]
    assert report["finetune_epochs"] == 1 and report["top1_after_recovery"] is not None
    assert report["top1_after_recovery"] > 0.2 and result.meta.merging["per_block"] == [4, 4]
    source, _ = load_model(shapes_artifact)
    recovered, _ = load_model(result.path)
    assert not torch.equal(recovered.head.weight, source.head.weight)  # it trained


@pytest.mark.parametrize("target", ["ort", "standard"])
def test_a_merged_model_exports_to_onnx_and_matches_pytorch(tmp_path: Path, merged_artifact: Path, target: str) -> None:
    result = do_export(merged_artifact, tmp_path / target, target=target)
    assert result.manifest["verify"]["onnxruntime"]["passed"]
    ops = result.manifest["graph"]["ops"]
    assert "Attention" not in ops and not {"ScatterElements", "ScatterND"} & set(ops)  # no fused kernel; no scatter
    assert ops["TopK"] == 2 * 2  # the match order and its inverse, per block (the merge is a MatMul)
    x = images(pixels=False)
    from vitcompress.export.onnx_runtime import ort_runner, ort_session

    got = ort_runner(ort_session(result.path / "model.onnx"))(x)
    assert_close_logits(torch_logits(merged_artifact, x), got, FP32_TOLERANCE)
    assert ort_runner(ort_session(result.path / "model.onnx"))(x[:1]).shape == (1, 10)  # dynamic batch


def test_merging_and_int8_stack_in_both_orders_and_export(tmp_path: Path, merged_artifact: Path,
                                                           int8_artifact: Path) -> None:
    from vitcompress.compress.qat import qat
    from vitcompress.config import QatConfig, TrainConfig

    merged_int8 = qat(QatConfig(src=str(merged_artifact), out=str(tmp_path / "merged-int8"), calib_size=64,
                                train=TrainConfig(epochs=0, quiet=True))).path
    int8_merged = merge(MergeConfig(src=str(int8_artifact), out=str(tmp_path / "int8-merged"), r=3)).path
    for path in (merged_int8, int8_merged):
        _, meta = load_model(path)
        assert meta.quantization and meta.merging
        result = do_export(path, tmp_path / f"ir-{path.name}", format="openvino")
        for runtime in ("onnxruntime", "openvino"):
            assert result.manifest["verify"][runtime]["top1_agreement"] >= INT8_MIN_AGREEMENT
    onnx_file = do_export(merged_int8, tmp_path / "std", target="standard").path / "model.onnx"
    ops = {n.op_type for n in onnx.load(str(onnx_file)).graph.node}
    assert {"QuantizeLinear", "TopK"} <= ops and not {"ScatterElements", "ScatterND"} & ops


def test_the_pipeline_merges_the_pruned_model_and_quantizes_it() -> None:
    names = [s.name for s in plan({"finetune": {}, "prune": {}, "merge": {}, "qat": {}})]
    assert names == ["fp32", "pruned", "pruned-merged", "int8", "pruned-int8", "pruned-merged-int8"]


@pytest.mark.parametrize("case", ["nothing", "both", "twice", "prune-merged"])
def test_what_merge_cannot_do_is_one_line(tmp_path: Path, merged_artifact: Path, shapes_artifact: Path, case: str,
                                          capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    args = {"nothing": ["merge", shapes_artifact, "--out", out],
            "both": ["merge", shapes_artifact, "--r", "2", "--keep", "0.5", "--out", out],
            "twice": ["merge", merged_artifact, "--r", "2", "--out", out],
            "prune-merged": ["prune", merged_artifact, "--heads", "0.5", "--out", out]}[case]
    assert run_cli(*args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and err.count("\n") == 0
    assert not out.exists()


@pytest.mark.parametrize("name", ["beit_base_patch16_224", "eva02_tiny_patch14_224"])
def test_families_whose_attention_needs_token_positions_are_refused(name: str) -> None:
    model = create_model(name, {"num_classes": 10, "img_size": 32, "patch_size": 8, "depth": 1})
    with pytest.raises(UserError, match="position"):
        check_mergeable(model, name)
