"""The training loop's edges: whole accumulation steps only, runs without validation."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY, fitted_tiny_trainer, run_cli, tiny_trainer
from vitcompress.artifact import read_meta
from vitcompress.augment import BatchTransform
from vitcompress.config import TrainConfig
from vitcompress.datasets.imageset import DataSplits
from vitcompress.datasets.shapes import generate
from vitcompress.distributed import DistContext
from vitcompress.errors import UserError
from vitcompress.models import create_model
from vitcompress.train import Trainer


def test_no_gradient_left_over_from_partial_accumulation(tmp_path: Path) -> None:
    data = generate(4, seed=0)  # 40 images: 5 batches of 8, accumulation 3 -> 1 optimizer step per epoch
    splits = DataSplits(data, None, data, data.classes, {})
    model = create_model("vit_tiny_patch16_224", {"num_classes": 10, "img_size": 32, "patch_size": 8,
                                                  "depth": 1, "embed_dim": 32, "num_heads": 2})
    cfg = TrainConfig(epochs=1, batch_size=8, accum_steps=3, quiet=True)
    trainer = Trainer(model, splits, cfg, BatchTransform(32, [0.5] * 3, [0.5] * 3), DistContext(), tmp_path)
    trainer.fit()
    assert trainer.steps_per_epoch == 1
    assert all(p.grad is None for p in model.parameters())
    assert trainer.history[0]["train_loss"] > 0


def test_without_validation_the_last_epoch_is_kept(tmp_path: Path) -> None:
    out = tmp_path / "noval"
    assert run_cli("finetune", *TINY, "--data", "shapes", "--epochs", "2", "--val-split", "0", "--out", out) == 0
    metrics = read_meta(out).metrics
    assert metrics["best_epoch"] == 2 and metrics["best_val_top1"] is None
    assert torch.isfinite(torch.tensor(metrics["loss"]))


def test_layer_decay_scales_learning_rates_by_depth(tmp_path: Path) -> None:
    trainer = tiny_trainer(tmp_path, layer_decay=0.5)
    head = trainer.model.head.weight
    scale_of = {id(p): g["lr_scale"] for g in trainer.optimizer.param_groups for p in g["params"]}
    patch = trainer.model.patch_embed.proj.weight
    last_block = trainer.model.blocks[-1].attn.qkv.weight
    assert scale_of[id(head)] == 1.0
    assert scale_of[id(patch)] < scale_of[id(last_block)] < scale_of[id(head)]
    assert scale_of[id(patch)] == 0.5 ** 4  # 3 blocks + embedding + head: the embedding is 4 layers below the head


def test_freeze_blocks(tmp_path: Path) -> None:
    model = tiny_trainer(tmp_path, freeze_blocks=2).model
    assert not any(p.requires_grad for p in model.patch_embed.parameters())
    assert not model.pos_embed.requires_grad and not model.cls_token.requires_grad
    assert not any(p.requires_grad for b in model.blocks[:2] for p in b.parameters())
    assert all(p.requires_grad for p in model.blocks[2].parameters())
    assert all(p.requires_grad for p in model.head.parameters())


def test_compiled_training_matches_eager_and_checkpoints_plain_keys(tmp_path: Path) -> None:
    def trained(compile_step: bool) -> tuple[Trainer, dict[str, torch.Tensor]]:
        trainer, initial = fitted_tiny_trainer(tmp_path / str(compile_step), compile=compile_step)
        assert not torch.equal(initial["head.weight"], trainer.model.head.weight)  # it really trained
        return trainer, torch.load(tmp_path / str(compile_step) / "last.ckpt", weights_only=True)["model"]

    eager, eager_state = trained(False)
    compiled, compiled_state = trained(True)
    assert compiled.step_model is not compiled.model  # the step really ran through torch.compile
    assert compiled_state.keys() == eager_state.keys()  # no "_orig_mod." prefixes in what is saved
    for name, weight in compiled_state.items():
        torch.testing.assert_close(weight, eager_state[name], atol=2e-4, rtol=1e-3, msg=name)
    assert abs(compiled.history[0]["train_loss"] - eager.history[0]["train_loss"]) < 1e-3


def test_checkpoint_interval_skips_checkpoints_but_never_the_last(tmp_path: Path) -> None:
    def saved_epochs(interval: float) -> list[int]:
        trainer = tiny_trainer(tmp_path / str(interval), epochs=4, checkpoint_interval=interval)
        (tmp_path / str(interval)).mkdir()
        saved, save = [], trainer.save_checkpoint
        trainer.save_checkpoint = lambda epoch: (saved.append(epoch), save(epoch))
        trainer.fit()
        with open(tmp_path / str(interval) / "train_log.csv") as log:
            assert len(list(csv.DictReader(log))) == 4  # the log still has every epoch
        return saved

    assert saved_epochs(0) == [0, 1, 2, 3]
    assert saved_epochs(1000) == [3]  # 4 short epochs inside 1,000 s: only the last


def test_mixup_prob_sets_the_share_of_mixed_batches(tmp_path: Path) -> None:
    """--mixup-prob 0 never mixes: the same training as without MixUp/CutMix (timm's smoothed one-hot targets are
    what label-smoothed cross-entropy uses); --mixup-prob 1 mixes every batch, and the weights come out different."""
    def trained(name: str, **overrides) -> torch.Tensor:
        return fitted_tiny_trainer(tmp_path / name, epochs=2, **overrides)[0].model.head.weight.detach().clone()

    plain = trained("plain")
    never_mixed = trained("never", mixup=0.8, cutmix=1.0, mixup_prob=0.0)
    always_mixed = trained("always", mixup=0.8, cutmix=1.0, mixup_prob=1.0)
    torch.testing.assert_close(never_mixed, plain, atol=1e-5, rtol=1e-4)
    assert (always_mixed - plain).abs().max() > 1e-3


def test_mixup_prob_outside_zero_one_is_a_user_error() -> None:
    with pytest.raises(UserError, match="--mixup-prob 1.5"):
        TrainConfig(mixup=0.8, mixup_prob=1.5).validate()
