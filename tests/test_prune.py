"""prune removes exactly the heads and MLP channels it says, the result reloads, and recovery learns."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests.conftest import run_cli
from vitcompress.artifact import ArtifactMeta, load_model, write_artifact
from vitcompress.compress.distill import DistillationLoss
from vitcompress.compress.importance import CRITERIA
from vitcompress.compress.plan import PrunePlan, choose
from vitcompress.compress.prune import apply_plan, prune
from vitcompress.compress.surgery import head_channels, head_dim, mlp_widths, remove_heads
from vitcompress.config import PRUNE_CRITERIA, DistillOptions, PruneConfig, TrainConfig
from vitcompress.datasets.shapes import CLASSES
from vitcompress.errors import UserError
from vitcompress.models import count_params, create_model, heads_per_block

# Families whose attention differs: timm's ViT, DeiT with its distillation token, BEiT v2 (separate q/v
# biases and a per-head relative position bias table), vit_relpos (a relative position MLP with an output
# per head) and timm's RoPE ViT (EVA's attention: q/v biases, RoPE, a norm over the attention width).
FAMILIES = ["vit_tiny_patch16_224", "deit_tiny_distilled_patch16_224", "beitv2_base_patch16_224",
            "vit_relpos_small_patch16_224", "vit_base_patch16_rope_reg1_gap_256"]
KWARGS = {"num_classes": 10, "img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 64, "num_heads": 4}


def make_artifact(root: Path, name: str, model: torch.nn.Module | None = None, kwargs: dict | None = None) -> Path:
    """An artifact with random weights (the surgery's correctness does not depend on training)."""
    torch.manual_seed(0)
    kwargs = kwargs or dict(KWARGS)
    model = model or create_model(name, dict(kwargs))
    meta = ArtifactMeta(stage="finetune", model_name=name, model_kwargs=dict(kwargs), classes=list(CLASSES),
                        img_size=32, mean=[0.5] * 3, std=[0.5] * 3, heads_per_block=heads_per_block(model),
                        data={"spec": "shapes"})
    out = root / name
    write_artifact(out, model, meta)
    return out


def scrambled(model: torch.nn.Module) -> torch.nn.Module:
    """Every parameter drawn anew at a scale where each head visibly moves the logits. timm's own inits leave
    some families' classifier, layer scales or attention output near zero: a wrongly removed head then
    changes the logits by less than the tolerance (BEiT v2: 1e-10), and a test of the surgery could not fail."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=generator))
    return model


def logits(model: torch.nn.Module, seed: int = 1) -> torch.Tensor:
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.eval()(x)


def zero_head(attn: torch.nn.Module, head: int) -> None:
    """Zero every weight of one head, so that it contributes nothing."""
    width = attn.num_heads * head_dim(attn)
    channels = head_channels(attn, [head])
    rows = [part * width + c for part in range(3) for c in channels]
    with torch.no_grad():
        attn.qkv.weight[rows] = 0
        if attn.qkv.bias is not None:
            attn.qkv.bias[rows] = 0
        for name in ("q_bias", "v_bias"):
            if getattr(attn, name, None) is not None:
                getattr(attn, name)[channels] = 0
        attn.proj.weight[:, channels] = 0


def zero_mlp_channels(mlp: torch.nn.Module, channels: list[int]) -> None:
    with torch.no_grad():
        mlp.fc1.weight[channels] = 0
        mlp.fc1.bias[channels] = 0
        mlp.fc2.weight[:, channels] = 0


@pytest.mark.parametrize("name", FAMILIES)
def test_removing_zeroed_heads_and_channels_leaves_logits_unchanged(name: str) -> None:
    model = scrambled(create_model(name, dict(KWARGS))).eval()
    zero_head(model.blocks[0].attn, 1)
    zero_head(model.blocks[1].attn, 3)
    zero_mlp_channels(model.blocks[1].mlp, [0, 7, 100])
    before = logits(model)
    apply_plan(model, PrunePlan(heads=[[1], [3]], mlp=[[], [0, 7, 100]]), img_size=32)
    assert heads_per_block(model) == [3, 3]
    assert mlp_widths(model) == [256, 253]
    torch.testing.assert_close(logits(model), before, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", FAMILIES)
def test_pruned_model_reloads_from_the_artifact_alone(tmp_path: Path, name: str) -> None:
    model = scrambled(create_model(name, dict(KWARGS))).eval()
    apply_plan(model, PrunePlan(heads=[[0, 2, 3], [1]], mlp=[[5, 6], list(range(0, 256, 3))]), img_size=32)
    meta = ArtifactMeta(stage="prune", model_name=name, model_kwargs=dict(KWARGS), classes=list(CLASSES),
                        img_size=32, mean=[0.5] * 3, std=[0.5] * 3, heads_per_block=heads_per_block(model),
                        mlp_per_block=mlp_widths(model))
    write_artifact(tmp_path / "a", model, meta)
    reloaded, meta2 = load_model(tmp_path / "a")
    assert meta2.heads_per_block == [1, 3]  # uneven heads per block
    assert meta2.mlp_per_block == [254, 170]
    torch.testing.assert_close(logits(reloaded), logits(model), atol=0, rtol=0)


@pytest.mark.parametrize("name", FAMILIES)
def test_stage_output_matches_surgery_in_memory(tmp_path: Path, name: str) -> None:
    src = make_artifact(tmp_path, name)
    result = prune(PruneConfig(src=str(src), out=str(tmp_path / "pruned"), heads=0.5, mlp=0.25, finetune_epochs=0))
    pruning = result.meta.metrics["pruning"]
    assert pruning["heads_after"] == [2, 2] and pruning["mlp_after"] == [192, 192]
    # Redo the recorded surgery by hand on the source model: the artifact must hold exactly that model.
    model, _ = load_model(src)
    removed_mlp = result.meta.metrics["pruning"]["steps"][0]["removed_mlp"]
    assert removed_mlp == 128
    reloaded, _ = load_model(result.path)
    plan_heads = pruning["removed_heads"]
    for block, drop in zip(model.blocks, plan_heads, strict=True):
        remove_heads(block.attn, drop)
    # heads match exactly; compare attention weights of block 0 (MLP channels are chosen by l1 too)
    torch.testing.assert_close(reloaded.blocks[0].attn.qkv.weight, model.blocks[0].attn.qkv.weight)
    assert (tmp_path / "pruned" / "vitcompress.json").is_file()
    assert not (tmp_path / "pruned.tmp-run").exists()


def test_nothing_to_remove_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    """Both ratios 0 was a silent no-op: an artifact with every head kept, after the whole run."""
    src = make_artifact(tmp_path, "vit_tiny_patch16_224")
    with pytest.raises(UserError, match="nothing to remove"):
        prune(PruneConfig(src=str(src), out=str(tmp_path / "same"), heads=0.0, mlp=0.0, finetune_epochs=0))
    assert not (tmp_path / "same").exists() and not (tmp_path / "same.tmp-run").exists()


def test_head_and_parameter_counts_follow_the_ratio(tmp_path: Path) -> None:
    src = make_artifact(tmp_path, "vit_tiny_patch16_224")
    model, _ = load_model(src)
    params = count_params(model)
    result = prune(PruneConfig(src=str(src), out=str(tmp_path / "p"), heads=0.25, finetune_epochs=0))
    d, c = 16, 64  # head dim, embed dim
    per_head = 3 * d * c + 3 * d + d * c  # q/k/v rows with biases, proj columns
    assert result.meta.heads_per_block == [3, 3]
    assert result.meta.metrics["params"] == params - 2 * per_head
    assert result.meta.metrics["pruning"]["after"]["macs"] < result.meta.metrics["pruning"]["before"]["macs"]


def test_global_ranking_is_uneven_and_keeps_a_head_per_block(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("vit_tiny_patch16_224", dict(KWARGS))
    with torch.no_grad():  # block 0's heads are all tiny, so a global ranking takes them first
        model.blocks[0].attn.qkv.weight.mul_(1e-3)
        model.blocks[0].attn.proj.weight.mul_(1e-3)
    src = make_artifact(tmp_path, "vit_tiny_patch16_224", model)
    result = prune(PruneConfig(src=str(src), out=str(tmp_path / "g"), heads=0.5, ranking="global", finetune_epochs=0))
    assert result.meta.heads_per_block == [1, 3]
    reloaded, _ = load_model(result.path)
    assert heads_per_block(reloaded) == [1, 3]


def test_plan_rounds_to_nearest_and_iterative_reaches_the_same_size() -> None:
    scores = [torch.arange(6.0), torch.arange(6.0)]
    assert [len(d) for d in choose(scores, [6, 6], 0.25, "uniform", "heads")] == [2, 2]  # 1.5 rounds up
    first = choose(scores, [6, 6], 0.25, "uniform", "heads")
    remaining = [s[[i for i in range(6) if i not in d]] for s, d in zip(scores, first, strict=True)]
    second = choose(remaining, [6, 6], 0.5, "uniform", "heads")
    assert [len(d) for d in second] == [1, 1]  # 3 of 6 in total


def test_iterative_pruning(tmp_path: Path, shapes_artifact: Path) -> None:
    big = make_artifact(tmp_path, "vit_tiny_patch16_224")
    result = prune(PruneConfig(src=str(big), out=str(tmp_path / "it"), heads=0.5, iterative=2, finetune_epochs=0))
    assert result.meta.heads_per_block == [2, 2]
    assert len(result.meta.metrics["pruning"]["steps"]) == 2


def test_recovery_with_distillation_learns(tmp_path: Path, shapes_artifact: Path) -> None:
    code = run_cli("prune", shapes_artifact, "--heads", "0.5", "--criterion", "taylor", "--finetune-epochs", "2",
                   "--batch-size", "64", "--lr", "1e-3", "--quiet", "--out", tmp_path / "rec")
    assert code == 0
    meta = json.loads((tmp_path / "rec" / "vitcompress.json").read_text())
    pruning = meta["metrics"]["pruning"]
    assert meta["stage"] == "prune" and meta["model"]["heads_per_block"] == [1, 1]
    assert pruning["top1_after_recovery"] > pruning["top1_after_surgery"]  # recovery recovered something
    assert pruning["top1_after_recovery"] == meta["metrics"]["top1"]
    assert set(pruning["before"]["latency_ms"]) == {"1", "64"}
    assert meta["parent"]["sha256"]
    assert (tmp_path / "rec" / "train_log.csv").is_file()
    assert not any(p.name in ("last.ckpt", "best.safetensors") for p in (tmp_path / "rec").iterdir())


@pytest.mark.parametrize("criterion", PRUNE_CRITERIA)
def test_every_criterion_prunes(tmp_path: Path, shapes_artifact: Path, criterion: str) -> None:
    assert sorted(CRITERIA) == sorted(PRUNE_CRITERIA)
    result = prune(PruneConfig(src=str(shapes_artifact), out=str(tmp_path / criterion), heads=0.5, mlp=0.25,
                               criterion=criterion, finetune_epochs=0, score_batches=2))
    assert result.meta.heads_per_block == [1, 1]
    assert result.meta.mlp_per_block == [192, 192]


def test_data_criteria_see_the_data(shapes_artifact: Path) -> None:
    """taylor and attention rank heads from data; attention must agree with a direct measurement."""
    from vitcompress.compress.scoring import score_blocks

    model, _ = load_model(shapes_artifact)
    x = torch.randn(8, 3, 32, 32)
    outputs = []
    hook = model.blocks[0].attn.proj.register_forward_pre_hook(lambda _m, a: outputs.append(a[0]))
    scores = score_blocks(model, CRITERIA["attention"](), [(x, torch.zeros(8, dtype=torch.long))])
    hook.remove()
    direct = outputs[0].reshape(8, -1, 2, 32).norm(dim=-1).mean((0, 1))
    torch.testing.assert_close(scores.heads[0], direct)


def gated(unit: slice, gate: torch.Tensor) -> Callable[..., tuple]:
    """A forward pre-hook that multiplies the ``unit`` slice of a layer's input by ``gate``."""
    def hook(_m: torch.nn.Module, args: tuple) -> tuple:
        scale = torch.ones(args[0].shape[-1]).index_put((torch.arange(args[0].shape[-1])[unit],), gate)
        return (args[0] * scale,)
    return hook


def test_fisher_is_each_samples_squared_gate_gradient(shapes_artifact: Path) -> None:
    """fisher: summed over samples, the squared gradient of each sample's own loss with respect to a gate on a head's
    output (and on an MLP channel), computed here one sample at a time by scaling that unit's slice of the input of
    ``attn.proj`` / ``fc2``."""
    from vitcompress.compress.scoring import score_blocks

    model, _ = load_model(shapes_artifact)
    x, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 1])
    scores = score_blocks(model, CRITERIA["fisher"](), [(x[:2], labels[:2]), (x[2:], labels[2:])])
    head, channel, width = 1, 5, head_dim(model.blocks[0].attn)
    units = {"head": (model.blocks[0].attn.proj, slice(head * width, (head + 1) * width)),
             "channel": (model.blocks[0].mlp.fc2, slice(channel, channel + 1))}
    expected = {"head": 0.0, "channel": 0.0}
    for i in range(4):
        gates = {name: torch.ones((), requires_grad=True) for name in units}
        hooks = [layer.register_forward_pre_hook(gated(unit, gates[name])) for name, (layer, unit) in units.items()]
        loss = torch.nn.functional.cross_entropy(model(x[i:i + 1]), labels[i:i + 1])
        grads = torch.autograd.grad(loss, list(gates.values()))
        for h in hooks:
            h.remove()
        for name, grad in zip(gates, grads, strict=True):
            expected[name] += grad.item() ** 2
    expected_head, expected_channel = expected["head"], expected["channel"]
    assert expected_head > 0 and expected_channel > 0
    torch.testing.assert_close(scores.heads[0][head].item(), expected_head, rtol=1e-4, atol=0)
    torch.testing.assert_close(scores.mlp[0][channel].item(), expected_channel, rtol=1e-4, atol=0)


def test_dry_run_writes_nothing(tmp_path: Path, shapes_artifact: Path, capsys: pytest.CaptureFixture) -> None:
    code = run_cli("prune", shapes_artifact, "--heads", "0.5", "--dry-run", "--out", tmp_path / "never")
    out = capsys.readouterr().out
    assert code == 0
    assert "dry run" in out and "heads that would go" in out and "would remain" in out
    assert not (tmp_path / "never").exists() and not list(tmp_path.iterdir())


def test_info_and_eval_on_a_pruned_artifact(tmp_path: Path, shapes_artifact: Path, capsys: pytest.CaptureFixture) -> None:
    assert run_cli("prune", shapes_artifact, "--heads", "0.5", "--mlp", "0.5", "--finetune-epochs", "0",
                   "--out", tmp_path / "p") == 0
    capsys.readouterr()
    assert run_cli("info", tmp_path / "p") == 0
    info = capsys.readouterr().out
    assert "[1, 1] (total 2)" in info and "MLP width per block  [128, 128]" in info
    assert run_cli("eval", tmp_path / "p", "--data", "shapes", "--json", "--quiet") == 0
    report = json.loads(capsys.readouterr().out)
    meta = json.loads((tmp_path / "p" / "vitcompress.json").read_text())
    assert report["top1"] == meta["metrics"]["top1"]


def test_distillation_loss() -> None:
    teacher = torch.nn.Linear(4, 3)
    x = torch.randn(6, 4)
    with torch.no_grad():
        same = teacher(x)
    task = torch.tensor(2.0)
    soft = DistillationLoss(teacher, "soft", temperature=3.0, alpha=0.5)
    assert torch.isclose(soft(x, same, task), torch.tensor(1.0))  # KL of identical distributions is 0
    hard = DistillationLoss(teacher, "hard", alpha=1.0)
    expected = torch.nn.functional.cross_entropy(same * 0, same.argmax(1))
    assert torch.isclose(hard(x, same * 0, task), expected)
    assert not any(p.requires_grad for p in teacher.parameters())


def test_an_interrupted_iterative_prune_resumes(tmp_path: Path, shapes_artifact: Path) -> None:
    """Killed in the second step's recovery, ``--resume`` finishes it with the first step's report intact."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import REPO

    out, staging = tmp_path / "pruned", tmp_path / "pruned.tmp-run"
    args = ["prune", str(shapes_artifact), "--heads", "0.5", "--iterative", "2", "--finetune-epochs", "4",
            "--criterion", "l1", "--quiet", "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "vitcompress", *args], env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300

    def in_second_recovery() -> bool:
        return (staging / "train_log_step1.csv").exists() and (staging / "last.ckpt").exists()

    while not in_second_recovery() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert in_second_recovery() and not out.exists()
    assert run_cli(*args, "--resume", "--heads", "0.25") == 2  # the plan was made for 0.5: refused, not recorded
    assert in_second_recovery()
    assert run_cli(*args, "--resume") == 0
    pruning = json.loads((out / "vitcompress.json").read_text())["metrics"]["pruning"]
    assert [len(s["removed_heads"]) for s in pruning["steps"]] == [2, 2]
    assert all(s["top1_after_recovery"] is not None for s in pruning["steps"])
    assert pruning["heads_after"] == [1, 1]
    assert sorted(pruning["removed_heads"][0] + [h for h in range(2) if h not in pruning["removed_heads"][0]]) == [0, 1]
    assert len((out / "train_log_step2.csv").read_text().splitlines()) == 1 + 2  # each epoch of step 2 once
    load_model(out)


def test_recover_until_stops_as_soon_as_the_parent_is_within_reach(shapes_artifact: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    """A generous target (50 points): the first recovery epoch reaches it, and the other two of the cap never run."""
    out = tmp_path / "close"
    assert run_cli("prune", shapes_artifact, "--heads", "0.5", "--finetune-epochs", "3", "--recover-until", "50",
                   "--quiet", "--out", out) == 0
    recovery = json.loads((out / "vitcompress.json").read_text())["metrics"]["pruning"]["recovery"]
    assert recovery["epochs_run"] == 1 and recovery["reached"] and recovery["epochs_cap"] == 3
    assert "after 1 of at most 3 epochs" in capsys.readouterr().out


def test_recover_until_runs_to_the_cap_and_says_by_how_much_it_missed(shapes_artifact: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    """A recovery that cannot learn (a vanishing LR) after half the heads went: it runs every epoch of the cap."""
    out = tmp_path / "far"
    assert run_cli("prune", shapes_artifact, "--heads", "0.5", "--finetune-epochs", "2", "--recover-until", "0.1",
                   "--lr", "1e-12", "--min-lr", "0", "--quiet", "--out", out) == 0
    pruning = json.loads((out / "vitcompress.json").read_text())["metrics"]["pruning"]
    recovery = pruning["recovery"]
    assert recovery["epochs_run"] == 2 and not recovery["reached"]
    assert recovery["points_below_parent"] > 0.1
    printed = capsys.readouterr().out
    assert "the cap of 2 epochs was reached" in printed and f"{recovery['points_below_parent']:.2f} points" in printed


@pytest.mark.parametrize("extra, needle", [(["--recover-until", "1", "--finetune-epochs", "0"], "needs recovery epochs"),
                                           (["--recover-until", "-1"], "not in [0, 100)")])
def test_recover_until_mistakes_are_one_line(shapes_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                             extra: list[str], needle: str) -> None:
    from tests.test_bad_input import assert_clean_failure

    assert_clean_failure(capsys, ["prune", shapes_artifact, "--heads", "0.5", *extra, "--out", tmp_path / "p"], needle)
    assert not (tmp_path / "p").exists()


def _parent(pretrained: bool, lr: float, batch: int, epochs: int, command: str = "finetune") -> ArtifactMeta:
    recipe = {"command": command, "pretrained": pretrained, "init_checkpoint": None,
              "train": {"lr": lr, "batch_size": batch, "epochs": epochs}}
    return ArtifactMeta(stage="finetune", model_name="vit_tiny_patch16_224", model_kwargs={}, classes=["a", "b"],
                        img_size=32, mean=[0.5] * 3, std=[0.5] * 3, recipe=recipe, metrics={"epochs_run": epochs})


@pytest.mark.parametrize("parent, explicit, expected", [
    # from scratch: half the peak LR, a tenth of the epochs, the same batch
    (_parent(False, 2e-3, 128, 30), {}, (1e-3, 128, 3)),
    # ... the LR scaled with a smaller batch
    (_parent(False, 2e-3, 128, 30), {"batch_size": 64}, (5e-4, 64, 3)),
    # fine-tuned from pretrained weights: its own LR
    (_parent(True, 1e-4, 256, 10), {}, (1e-4, 256, 1)),
    # training not recorded (a pruned source): fixed defaults
    (_parent(False, 2e-3, 128, 30, command="prune"), {}, (2e-4, 128, 5)),
    # what the user passed stays
    (_parent(False, 2e-3, 128, 30), {"lr": 7e-4, "epochs": 4, "batch_size": 32}, (7e-4, 32, 4)),
])
def test_recovery_defaults_follow_the_parents_recorded_training(parent: ArtifactMeta, explicit: dict,
                                                                expected: tuple) -> None:
    from vitcompress.compress.recovery import derive_recovery
    from vitcompress.config import prune_train_config

    train = prune_train_config()
    train.lr = explicit.get("lr", train.lr)
    train.batch_size = explicit.get("batch_size", train.batch_size)
    epochs, line = derive_recovery(train, explicit.get("epochs"), parent)
    assert (train.lr, train.batch_size, epochs) == pytest.approx(expected)
    assert ("derived from the source" in line) == (len(explicit) < 3)  # said whenever something was derived


def test_hidden_state_distillation_is_zero_for_identical_teacher_and_student() -> None:
    import copy

    from vitcompress.compress.distill import DistillationLoss

    torch.manual_seed(0)
    student = create_model("vit_tiny_patch16_224", dict(KWARGS)).train()
    teacher = copy.deepcopy(student).eval()
    loss = DistillationLoss(teacher, "soft", alpha=0.0, layers=1.0, student=student)
    x = torch.randn(4, 3, 32, 32)
    assert loss(x, student(x), torch.tensor(0.0)).abs() < 1e-6  # same blocks, same outputs
    with torch.no_grad():
        student.blocks[0].mlp.fc2.weight.add_(0.1)
    assert loss(x, student(x), torch.tensor(0.0)) > 1e-3  # one block changed: it shows


def test_prune_recovers_with_hidden_state_distillation_and_leaves_no_hooks(shapes_artifact: Path,
                                                                           tmp_path: Path) -> None:
    """Over two iterative steps (a new loss each, the same teacher): every hook that recorded block outputs is taken
    off again. Left on, each later forward's outputs piled up (an iterative prune ran out of 24 GB)."""
    from vitcompress.models import attention_blocks

    result = prune(PruneConfig(src=str(shapes_artifact), out=str(tmp_path / "layers"), heads=0.5, mlp=0.25,
                               iterative=2, finetune_epochs=2, kd=DistillOptions(kd_layers=1.0),
                               train=TrainConfig(quiet=True)))
    assert result.meta.recipe["kd"]["kd_layers"] == 1.0
    assert all(not block._forward_hooks for block in attention_blocks(result.model))
