"""finetune writes a complete artifact that learns; eval and info read it back."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.conftest import TINY, run_cli
from vitcompress.artifact import load_model, read_meta
from vitcompress.compress.finetune import finetune
from vitcompress.config import FinetuneConfig, TrainConfig
from vitcompress.evaluate import evaluate_artifact


def test_artifact_files_and_metadata(shapes_artifact: Path) -> None:
    names = sorted(p.name for p in shapes_artifact.iterdir())
    assert names == ["confusion.png", "model.safetensors", "train_log.csv", "vitcompress.json"]
    assert not shapes_artifact.with_name(shapes_artifact.name + ".tmp-run").exists()
    assert (shapes_artifact / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    meta = json.loads((shapes_artifact / "vitcompress.json").read_text())
    assert meta["stage"] == "finetune"
    assert meta["model"]["name"] == "vit_tiny_patch16_224"
    assert meta["model"]["kwargs"]["depth"] == 2 and meta["model"]["kwargs"]["num_classes"] == 10
    assert meta["model"]["heads_per_block"] == [2, 2]
    assert meta["input"]["size"] == [3, 32, 32]
    assert len(meta["classes"]) == 10
    assert meta["recipe"]["train"]["epochs"] == 8
    assert {"torch", "timm"} <= set(meta["versions"])
    m = meta["metrics"]
    for key in ("top1", "top5", "precision_macro", "recall_macro", "f1_macro", "params", "macs"):
        assert key in m
    assert len(m["per_class_accuracy"]) == 10
    assert sum(map(sum, m["confusion_matrix"])) == m["samples"] == 1000
    assert m["params"] > 50_000 and m["macs"] > 1_000_000


def test_model_learns_well_above_chance(shapes_artifact: Path) -> None:
    metrics = read_meta(shapes_artifact).metrics
    assert metrics["top1"] > 0.35, metrics["top1"]  # chance is 0.10
    assert metrics["top5"] > metrics["top1"]


def test_train_log_has_one_row_per_epoch(shapes_artifact: Path) -> None:
    rows = list(csv.DictReader(open(shapes_artifact / "train_log.csv")))
    assert [int(r["epoch"]) for r in rows] == list(range(1, 9))
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert all(0 <= float(r["val_top1"]) <= 1 for r in rows)


def test_weights_rebuild_from_metadata(shapes_artifact: Path) -> None:
    model, meta = load_model(shapes_artifact)
    stored = load_file(str(shapes_artifact / "model.safetensors"))
    for name, tensor in model.state_dict().items():
        assert (tensor == stored[name]).all(), name
    assert len(model.blocks) == 2 and meta.classes[0] == "circle"


def test_eval_json_reproduces_stored_metrics(shapes_artifact: Path, capsys: pytest.CaptureFixture) -> None:
    assert run_cli("eval", shapes_artifact, "--data", "shapes", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    stored = read_meta(shapes_artifact).metrics
    assert report["top1"] == pytest.approx(stored["top1"], abs=1e-6)
    assert report["f1_macro"] == pytest.approx(stored["f1_macro"], abs=1e-6)
    assert report["confusion_matrix"] == stored["confusion_matrix"]


def test_info_describes_artifact(shapes_artifact: Path, capsys: pytest.CaptureFixture) -> None:
    assert run_cli("info", shapes_artifact) == 0
    out = capsys.readouterr().out
    assert "vit_tiny_patch16_224" in out and "[2, 2] (total 4)" in out and "circle" in out and "top1" in out


def test_python_api_with_recipe_switches(tmp_path: Path) -> None:
    """Every switchable part of the recipe at once, through the Python API."""
    train = TrainConfig(epochs=2, batch_size=32, lr=1e-3, accum_steps=2, ema=True, ema_decay=0.9, mixup=0.2,
                        cutmix=0.5, layer_decay=0.75, freeze_blocks=1, patience=1, amp="bf16", quiet=True, seed=3)
    train.augment.crop, train.augment.auto_augment, train.augment.color_jitter = "rrc", "randaugment", 0.3
    cfg = FinetuneConfig(model="deit_tiny_patch16_224", data="shapes", out=str(tmp_path / "a"), img_size=32,
                         patch_size=8, model_kwargs="depth=2,embed_dim=64,num_heads=2", train=train)
    result = finetune(cfg)
    assert result.path.is_dir() and result.meta.metrics["epochs_run"] >= 1
    assert result.meta.model_name == "deit_tiny_patch16_224"
    # trained under bf16 autocast, yet the stored metrics are the full-precision ones eval reproduces
    report = evaluate_artifact(str(result.path), "shapes")
    assert report["top1"] == result.meta.metrics["top1"] and report["loss"] == result.meta.metrics["loss"]


def test_head_only_trains_only_the_classifier(tmp_path: Path) -> None:
    first = tmp_path / "first"
    assert run_cli("finetune", *TINY, "--data", "shapes", "--epochs", "1", "--out", first) == 0
    probe = tmp_path / "probe"
    assert run_cli("finetune", *TINY, "--data", "shapes", "--epochs", "1", "--head-only",
                   "--init-checkpoint", first / "model.safetensors", "--out", probe) == 0
    before, after = load_file(str(first / "model.safetensors")), load_file(str(probe / "model.safetensors"))
    assert all((before[k] == after[k]).all() for k in before if not k.startswith("head."))
    assert not (before["head.weight"] == after["head.weight"]).all()


def test_beit_family_trains(tmp_path: Path) -> None:
    out = tmp_path / "beit"
    assert run_cli("finetune", *TINY[:6], "--model-kwargs", "depth=1,embed_dim=32,num_heads=2", "--quiet",
                   "--data", "shapes", "--epochs", "1", "--model", "beitv2_base_patch16_224", "--out", out) == 0
    assert read_meta(out).heads_per_block == [2]
