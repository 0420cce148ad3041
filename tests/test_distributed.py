"""torchrun with two CPU processes (gloo): DDP trains (finetune, prune's recovery, qat), rank 0 alone writes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

from tests.conftest import TINY, run_cli
from vitcompress.artifact import read_meta
from vitcompress.distributed import DistContext, process_group


def test_torchrun_two_processes(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "vitcompress", "finetune", *TINY, "--data", "shapes", "--epochs", "8", "--batch-size", "16",
           "--accum-steps", "2", "--ema", "--ema-decay", "0.9",
           "--time-budget", "900",  # never binding here: rank 0's plan is broadcast after every epoch
           "--device", "cpu", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    meta = read_meta(out)
    assert meta.metrics["world_size"] == 2
    assert meta.metrics["epochs_run"] == 8 and meta.metrics["time_budget"] == 900
    assert meta.metrics["samples"] == 1000  # every test image scored once across the two shards
    assert meta.metrics["top1"] > 0.3, meta.metrics["top1"]
    assert result.stdout.count("artifact:") == 1  # one summary, from rank 0
    assert sorted(p.name for p in out.iterdir()) == ["confusion.png", "model.safetensors", "train_log.csv", "vitcompress.json"]


SHORT_TIMEOUT = timedelta(seconds=3)  # stands in for NCCL's default 10 minutes


def _rank_waits_for_slow_data(rank: int, port: int, folder: Path) -> None:
    os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", timeout=SHORT_TIMEOUT)  # as torchrun's environment, with a short timeout
    with process_group("cpu") as ctx:  # joins nothing new: the group above is kept, as a pipeline's is

        def prepare() -> str:
            cache = folder / "cache.txt"
            if rank == 0:
                time.sleep(2.5 * SHORT_TIMEOUT.total_seconds())  # decoding a large dataset into the cache
                cache.write_text("decoded")
            return cache.read_text()

        assert isinstance(ctx, DistContext) and ctx.world_size == 2
        data = ctx.main_first(prepare)
        total = torch.ones(1)
        dist.all_reduce(total)  # the default group still works after the long wait
        (folder / f"rank{rank}.txt").write_text(f"{data} {int(total.item())}")
    dist.destroy_process_group()


def test_ranks_wait_for_data_longer_than_the_collective_timeout(tmp_path: Path) -> None:
    """Rank 0 building the data cache for longer than the process group's timeout (NCCL's is 10 minutes) must not
    abort the other ranks waiting for it: ``main_first`` waits on its own gloo group with a long timeout."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    mp.spawn(_rank_waits_for_slow_data, args=(port, tmp_path), nprocs=2, join=True)
    assert [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)] == ["decoded 2", "decoded 2"]


def _torchrun(*args: object, processes: int = 2) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
           "-m", "vitcompress", *map(str, args)]
    return subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)


def test_torchrun_prune_then_qat(tmp_path: Path, shapes_artifact: Path) -> None:
    """prune and qat under torchrun: rank 0's plan and INT8 ranges on every rank, recovery and QAT with DDP,
    one artifact. The surgery and the PTQ are the single-process ones (same plan, same ranges, same score)."""
    prune_args = ["--heads", "0.5", "--criterion", "taylor", "--batch-size", "32", "--device", "cpu", "--quiet"]
    single = tmp_path / "single"
    assert run_cli("prune", shapes_artifact, *prune_args, "--finetune-epochs", "0", "--out", single) == 0
    pruned = tmp_path / "pruned"
    result = _torchrun("prune", shapes_artifact, *prune_args, "--finetune-epochs", "2", "--out", pruned)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("artifact:") == 1  # one summary, from rank 0
    meta, alone = read_meta(pruned), read_meta(single)
    assert meta.metrics["pruning"]["world_size"] == 2 and meta.heads_per_block == [1, 1]
    assert meta.metrics["pruning"]["removed_heads"] == alone.metrics["pruning"]["removed_heads"]
    assert meta.metrics["pruning"]["top1_after_surgery"] == alone.metrics["pruning"]["top1_after_surgery"]
    assert meta.metrics["samples"] == 1000 and meta.metrics["top1"] > 0.3, meta.metrics["top1"]
    assert not any(p.name.endswith(".tmp-run") for p in tmp_path.iterdir())

    qat_args = ["--calib-size", "128", "--batch-size", "32", "--device", "cpu", "--quiet"]
    ptq = tmp_path / "ptq"
    assert run_cli("qat", pruned, *qat_args, "--epochs", "0", "--out", ptq) == 0
    int8 = tmp_path / "int8"
    result = _torchrun("qat", pruned, *qat_args, "--epochs", "1", "--out", int8)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("artifact:") == 1
    qat, alone = read_meta(int8).metrics["qat"], read_meta(ptq).metrics["qat"]
    assert qat["world_size"] == 2 and qat["epochs"] == 1
    assert qat["top1_ptq"] == alone["top1_ptq"]
    assert read_meta(int8).metrics["top1"] > 0.3


def test_torchrun_pipeline(tmp_path: Path) -> None:
    """The whole pipeline under torchrun: every training stage on both processes, exports and bench on rank 0."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "finetune": {"model": "vit_tiny_patch16_224", "data": "shapes", "img_size": 32, "patch_size": 8,
                     "model_kwargs": "depth=1,embed_dim=32,num_heads=2", "epochs": 2, "lr": "3e-3", "batch_size": 64,
                     "drop_path": 0.0, "device": "cpu"},
        "prune": {"heads": 0.5, "criterion": "l1", "finetune_epochs": 1, "batch_size": 64, "device": "cpu"},
        "qat": {"epochs": 1, "calib_size": 64, "batch_size": 64, "device": "cpu"},
        "export": {"verify_size": 16},
        "bench": {"data": "shapes", "eval_size": 64, "backends": "ort-cpu", "batch": "1", "warmup": 1, "min_iters": 2,
                  "max_seconds": 0.05},
    }, sort_keys=False))
    out = tmp_path / "out"
    result = _torchrun("pipeline", recipe, "--out", out, "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("pipeline: ") == 1 and result.stdout.count("[pipeline] bench") == 1
    state = json.loads((out / "pipeline.json").read_text())["steps"]
    assert {name: step["status"] for name, step in state.items()} == dict.fromkeys(
        ["fp32", "pruned", "int8", "pruned-int8", "onnx-fp32", "onnx-pruned", "onnx-int8", "onnx-pruned-int8", "bench"], "done")
    assert read_meta(out / "fp32").metrics["world_size"] == 2
    assert read_meta(out / "pruned").metrics["pruning"]["world_size"] == 2
    assert read_meta(out / "pruned-int8").metrics["qat"]["world_size"] == 2
    assert len(json.loads((out / "bench" / "results.json").read_text())["records"]) == 4
