"""Everything that needs a GPU, in commands that fit a short lease.

Steps, in order (the open targets first), each logged with its wall time; a step that fails is
recorded and the next runs:
  1. cifar   CIFAR-10 from scratch for --cifar-seconds of training (finetune --time-budget: the
             epochs are re-planned from measured epoch times, the schedule ends with the budget);
             compiled with CUDA graphs (--compile-mode reduce-overhead), and if the compiled step
             breaks, eager for the time that is left
  2. suite   benchmarks/suite.py with the CIFAR model as its base: heads pruned at 0.25 and 0.5 with
             recovery, PTQ and QAT INT8 of the unpruned and the 0.5-pruned model (on the GPU), ONNX
             exports, bench on ONNX Runtime on this machine's CPU cores; stopped at the deadline
  3. prune   the CIFAR model pruned on the GPU (heads 0.25 / 0.5 / 0.5 + MLP 0.25; l1, taylor, random)
             with distillation recovery, each with and without recovery
  4. latency the base and pruned models in torch fp32, bf16 and torch.compile (default mode, and
             reduce-overhead: CUDA graphs) at batch 1 and 256
  5. bench   `vitcompress bench` of the base and pruned models on torch, torch-bf16, torch-compile, torch-cudagraphs
             (and ort-cuda / ort-trt / tensorrt where they exist, else listed as skipped), CIFAR-10 accuracy
  6. speed   benchmarks/train_speed.py on CUDA (our Trainer, eager and compiled with torch.compile's
             default and reduce-overhead (CUDA graphs) modes, against a plain timm-style loop), its
             record rewritten in OUTDIR after each measurement, and stopped after --speed-seconds
  7. smoke   the GPU code paths of finetune: data kept on the GPU, bf16, fp16 + GradScaler,
             torchrun with NCCL (one process; also compiled as CUDA graphs, with EMA), --stream (pinned batches
             from loader workers), eval on CUDA

Usage:  python benchmarks/gpu_session.py --data data/cifar10-jpeg.tar.xz --out OUTDIR [--cifar-seconds 415]

On a lent machine (no network; torch, timm, onnx and onnxruntime are there): here, `make device-wheels`
(this tree as a wheel, and torch-pruning, nvidia-modelopt and the modelopt dependencies the machine lacks, for
its Python 3.12, into the ignored .whl/: about 21 MB) and copy the CIFAR-10 archive into the ignored data/;
then each `run` carries [".whl", "data"] and is
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl && export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 || exit; R=$PWD; cd /tmp &&
    python3 $R/benchmarks/gpu_session.py --data $R/data/cifar10-jpeg.tar.xz --out $OUT/gpu --steps cifar,suite ...
It runs from outside the checkout: there, `python -m vitcompress` would import the source tree's
vitcompress/, which lacks the compress/ and export/ subpackages that an install maps into it.
A 15-minute lease (10 minutes a command, the machine's start included) fits one full command and a short one.
Measured on the two 2026-11-27 leases: the start and transfers took 31-100 s; cifar took its budget + ~40 s
(decoding, compiling, the final evaluation); modelopt's CUDA extension built in 73-79 s beside it; speed ~105 s,
bench ~75 s, smoke ~195 s. A machine left idle 30 s goes back, bare: on the second lease the follow-up command came
too late and found a fresh machine without the model. So the first command does the most: --steps cifar,suite
--cifar-seconds 415 --budget-seconds 570 (the suite gets what the 10 minutes leave, ~110 s; with the wheels'
install the command ends ~20 s inside the 600 s limit), and returns the trained model (cifar_model.tar.*, below;
here, on the CPU, the suite can then go on from it without a lease); then at once, the same command with
--steps suite,bench and --budget-seconds set to what the lease has left less ~40 s continues the suite (it skips
the steps whose output exists). If the machine was lost meanwhile, that command records why it skipped them.
A lease returns at most 8 files: the command that trains the model returns the model (its record and training log
inside), a later one nothing of it, and bench leaves all but its report in the work folder.
Writes: OUTDIR/gpu_results.json (all numbers, hardware, commands), OUTDIR/session.log, and after the cifar step
OUTDIR/cifar_model.tar.00 (.01, ... past 15 MiB: the model's files in parts; here: cat cifar_model.tar.* | tar x).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shlex
import subprocess
import sys
import tarfile
import time
import traceback
from pathlib import Path

import torch
from suite import STEPS_FILE  # benchmarks/suite.py, beside this script

from vitcompress.artifact import META_FILE
from vitcompress.train import BEST_WEIGHTS_FILE, CHECKPOINT_FILE

HERE = Path(__file__).resolve().parent
START = time.time()
RETURN_PART_BYTES = 15 * 2**20  # a lease returns files of at most 16 MiB

# The CIFAR-10 recipe: the plain-ViT baseline of "Vision Transformer for Small-Size Datasets" (Lee et al. 2021, code
# aanna0701/SPT_LSA_ViT, whose README reports 93.58 % on CIFAR-10 from scratch): 32 px, 4 px patches (65 tokens),
# depth 9, width 192, 12 heads, MLP ratio 2 (2.7 M params, 173 M MACs); batch 128, AdamW lr 1e-3, weight decay 0.05,
# warmup then cosine; AutoAugment's CIFAR-10 policy, MixUp (alpha 1) or CutMix (alpha 1) on half of the batches,
# random erasing of a quarter of the images (filled with the mean colour; its largest box is 40 % of the image, the
# timm rule used here 33 %), label smoothing 0.1, stochastic depth 0.1. Its "100 epochs" are 300 passes over the
# data, its 10 warmup epochs 30: its `--ra 3` is the len_factor of a batch sampler that makes each epoch three passes
# with one copy per image, not repeated augmentation's copies within a batch. Here --time-budget plans as many
# passes as the budget holds, with 10 of warmup (how many fit is not measured for this model: far fewer than 300
# would be the likely cause of a shortfall). AutoAugment is drawn per 64 images on the GPU; the training step is
# compiled and replayed as CUDA graphs (below); a checkpoint a minute, not one per ~1 s epoch.
# Why this recipe: the runs so far used a depth-7, width-384, MLP-ratio-1 ViT (6.3 M params, 404 M MACs: the shape of
# omihub777/ViT-CIFAR, which reports 90.9 % after 200 epochs) at batch 256 with AutoAugment's ImageNet policy, no MixUp:
# 79.9 % in 73 epochs (torch.compile's default mode, ~10,500 img/s), 85.0 % in 197 epochs (CUDA graphs, 24,800 img/s),
# train accuracy (93.5 %) far above test accuracy. A published 90.9 % leaves no margin, the less so on these JPEG
# (quality 75) images; this recipe's 93.58 % leaves 3.6 points, regularises more against the overfit, and costs 2.3x
# fewer MACs per image, so more epochs fit the budget (how many more is not measured: at this size the step is partly
# bound by kernel latency, not arithmetic). The same model ran once before (2026-11-26: eager, 43 epochs, MixUp/CutMix
# on every batch: 69.5 %, train accuracy 37 %, far too short for that much mixing).
CIFAR_MODEL = ["--model", "vit_tiny_patch16_224", "--img-size", "32", "--patch-size", "4",
               "--model-kwargs", "depth=9,embed_dim=192,num_heads=12,mlp_ratio=2"]
CIFAR_RECIPE = ["--batch-size", "128", "--lr", "1e-3", "--min-lr", "1e-5", "--weight-decay", "0.05",
                "--warmup-epochs", "10", "--drop-path", "0.1", "--label-smoothing", "0.1", "--crop", "pad",
                "--auto-augment", "autoaugment-cifar10", "--auto-augment-group", "64",
                "--mixup", "1.0", "--cutmix", "1.0", "--mixup-prob", "0.5",
                "--random-erase", "0.25", "--random-erase-mode", "const", "--val-split", "0",
                "--amp", "bf16", "--checkpoint-interval", "60"]
COMPILED = ["--compile", "--compile-mode", "reduce-overhead"]
# The benchmark suite (benchmarks/suite.py) from the CIFAR model on: it is trained to convergence, which the CPU
# suites' vit_small bases were not. Pruning recovers at about the training LR, as a model trained from scratch needs
# (docs/pruning.md); prune, PTQ and QAT run on the GPU, bench on ONNX Runtime on this machine's CPU cores.
SUITE = ["--recovery-epochs", "5", "--qat-epochs", "1", "--amp", "bf16", "--recovery-args=--batch-size 256",
         "--prune-args=--lr 1e-3 --warmup-epochs 0.5 --auto-augment autoaugment-cifar10", "--backends", "ort-cpu",
         "--batch", "1,32", "--bench-args=--max-seconds 1", "--tag", "gpu"]
TINY = ["--model", "vit_tiny_patch16_224", "--img-size", "32", "--patch-size", "8",
        "--model-kwargs", "depth=2,embed_dim=64,num_heads=2", "--drop-path", "0", "--batch-size", "64", "--quiet"]


def log(out: Path, message: str) -> None:
    line = f"[{time.time() - START:7.1f}s] {message}"
    print(line, flush=True)
    with open(out / "session.log", "a") as f:
        f.write(line + "\n")


def cli(*args: str, torchrun: bool = False) -> subprocess.CompletedProcess:
    prefix = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "-m", "vitcompress"] if torchrun \
        else [sys.executable, "-m", "vitcompress"]
    return subprocess.run([*prefix, *args], capture_output=True, text=True)


def step_smoke(args: argparse.Namespace, work: Path) -> dict:
    results = {}
    for name, extra in (("bf16", ["--amp", "bf16"]), ("fp16_gradscaler", ["--amp", "fp16"]), ("fp32", ["--amp", "none"]),
                        ("bf16_compile", ["--amp", "bf16", "--compile"])):
        proc = cli("finetune", *TINY, "--data", "shapes", "--epochs", "2", "--device", args.device, *extra,
                   "--out", str(work / f"smoke-{name}"), "--force")
        results[name] = _outcome(proc, work / f"smoke-{name}")
    proc = cli("finetune", *TINY, "--data", "shapes", "--epochs", "1", "--out", str(work / "smoke-ddp"), "--force",
               torchrun=True)
    results["torchrun_nccl"] = _outcome(proc, work / "smoke-ddp")
    # CUDA graphs under DDP, with EMA (a decay short enough for the EMA copy, which is what is scored, to follow 2 epochs)
    proc = cli("finetune", *TINY, "--data", "shapes", "--epochs", "2", "--amp", "bf16", *COMPILED, "--ema",
               "--ema-decay", "0.9", "--out", str(work / "smoke-ddp-graphs-ema"), "--force", torchrun=True)
    results["torchrun_nccl_cudagraphs_ema"] = _outcome(proc, work / "smoke-ddp-graphs-ema")
    proc = cli("finetune", *TINY, "--data", f"folder:{args.data}", "--stream", "--train-subset", "5000", "--epochs", "1",
               "--device", args.device, "--out", str(work / "smoke-stream"), "--force")  # pinned batches from workers
    results["stream"] = _outcome(proc, work / "smoke-stream")
    proc = cli("eval", str(work / "smoke-bf16"), "--data", "shapes", "--device", args.device, "--json", "--quiet")
    results["eval_cuda"] = {"ok": proc.returncode == 0, "stderr": proc.stderr[-800:]}
    if proc.returncode == 0:
        results["eval_cuda"]["top1"] = json.loads(proc.stdout)["top1"]
    return results


def _outcome(proc: subprocess.CompletedProcess, artifact: Path) -> dict:
    result = {"ok": proc.returncode == 0, "stderr": proc.stderr[-800:]}
    meta = artifact / META_FILE
    if meta.is_file():
        metrics = json.loads(meta.read_text())["metrics"]
        result.update(top1=metrics["top1"], device=metrics.get("device"), img_s=metrics.get("train_images_per_s"))
    return result


def step_speed(args: argparse.Namespace, out: Path) -> dict:
    """train_speed.py, its record written into OUTDIR after every measurement: a lease that ends mid-way keeps
    what was measured, and a compile that hangs costs at most --speed-seconds."""
    record = out / f"train_speed_{torch.device(args.device).type}_bf16.json"
    cmd = [sys.executable, str(HERE / "train_speed.py"), "--data", args.data, "--device", args.device, "--amp", "bf16",
           "--batch-size", "256", "--steps", "40", "--pipeline-batches", "100", "--compile",
           "--compile-modes", "default,reduce-overhead", "--record", str(record)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.speed_seconds)
        error = proc.stderr[-1500:] if proc.returncode else None
    except subprocess.TimeoutExpired:
        error = f"stopped after {args.speed_seconds:.0f} s"
    result = json.loads(record.read_text()) if record.is_file() else {}
    return {**result, "error": error} if error else result


def step_cifar(args: argparse.Namespace, work: Path) -> dict:
    """CIFAR-10 from scratch for --cifar-seconds of training (``--time-budget``: the epochs are re-planned from
    measured epoch times, the compile included, and the cosine schedule ends with the budget)."""
    from vitcompress.cli import main as vitcompress_main

    out = work / "cifar10-vit"
    compiled = torch.device(args.device).type == "cuda"  # a toy run of this script on a CPU trains eagerly
    command = _cifar_command(args, out, args.cifar_seconds, compiled)
    started = time.time()
    code, error = _run_main(vitcompress_main, command)
    compile_failed = code != 0 and compiled
    left = args.cifar_seconds - (time.time() - started)
    if compile_failed and left > 60:  # the compiled step broke: what eager steps reach is still worth the lease
        command = _cifar_command(args, out, left, compiled=False)
        code, error = _run_main(vitcompress_main, command)
    meta = json.loads((out / META_FILE).read_text()) if code == 0 else {}
    return {"exit": code, "wall_seconds": round(time.time() - started, 1), "command": "vitcompress " + " ".join(command),
            "artifact": str(out), "compile_failed_then_eager": compile_failed, "error": error,
            "metrics": {k: meta.get("metrics", {}).get(k) for k in ("top1", "top5", "f1_macro", "epochs_run", "train_seconds",
                                                                    "train_wall_seconds", "train_images_per_s", "params",
                                                                    "macs", "device")}}


def _cifar_command(args: argparse.Namespace, out: Path, seconds: float, compiled: bool) -> list[str]:
    recipe = [*CIFAR_RECIPE, *COMPILED] if compiled else CIFAR_RECIPE
    return ["finetune", *CIFAR_MODEL, "--data", f"folder:{args.data}", *recipe, "--epochs", "1000",
            "--time-budget", f"{seconds:.0f}", "--device", args.device, "--out", str(out), "--force", "--quiet"]


def _run_main(main_fn, command: list[str]) -> tuple[int, str | None]:
    """The CLI's exit status, or 1 and the traceback's tail when it raised."""
    try:
        return main_fn(command), None
    except Exception:  # noqa: BLE001 - recorded; the caller decides what to try next
        return 1, traceback.format_exc()[-2000:]


def step_prune(args: argparse.Namespace, work: Path, base: Path, deadline: float) -> list[dict]:
    from vitcompress.cli import main as vitcompress_main

    runs = [("l1", 0.5, 0.0), ("taylor", 0.5, 0.0), ("random", 0.5, 0.0), ("l1", 0.25, 0.0), ("l1", 0.5, 0.25)]
    results = []
    for criterion, heads, mlp in runs:
        if time.time() > deadline:
            results.append({"criterion": criterion, "heads": heads, "mlp": mlp, "skipped": "out of time"})
            continue
        out = work / f"pruned-{criterion}-h{heads}-m{mlp}"
        command = ["prune", str(base), "--heads", str(heads), "--mlp", str(mlp), "--criterion", criterion,
                   "--finetune-epochs", str(args.recovery_epochs), "--batch-size", "256", "--lr", "5e-4",
                   "--warmup-epochs", "1", "--auto-augment", "autoaugment-cifar10", "--mixup", "0.8", "--cutmix", "1.0",
                   "--amp", "bf16", "--val-split", "0", "--out", str(out), "--force", "--quiet"]
        started = time.time()
        code = vitcompress_main(command)
        record = {"criterion": criterion, "heads": heads, "mlp": mlp, "exit": code,
                  "wall_seconds": round(time.time() - started, 1), "command": "vitcompress " + " ".join(command)}
        if code == 0:
            pruning = json.loads((out / META_FILE).read_text())["metrics"]["pruning"]
            record.update({k: pruning[k] for k in ("top1_before", "top1_after_surgery", "top1_after_recovery",
                                                     "heads_after", "before", "after")})
            record["artifact"] = str(out)
        results.append(record)
    return results


def step_suite(args: argparse.Namespace, work: Path, base: Path, out: Path, deadline: float) -> dict:
    """benchmarks/suite.py with the CIFAR model as its base, stopped at the deadline; its record and report land in
    OUTDIR (suite_gpu.json, suite_gpu/). Stopped early, what each finished step made is still recorded."""
    suite = work / "suite"
    suite.mkdir(parents=True, exist_ok=True)
    if not (suite / "base").exists():  # the suite skips a step whose output exists: the CIFAR model is its base
        (suite / "base").symlink_to(base.resolve(), target_is_directory=True)
    cmd = [sys.executable, str(HERE / "suite.py"), "--work", str(suite), "--data", f"folder:{args.data}", *SUITE,
           *shlex.split(args.suite_extra), "--results-dir", str(out)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(1.0, deadline - time.time()))
        error = proc.stderr[-1500:] if proc.returncode else None
    except subprocess.TimeoutExpired:
        error = "stopped at the deadline"
    record = out / "suite_gpu.json"
    if record.is_file():
        data = json.loads(record.read_text())
        return {"command": data["command"], "targets": data["targets"], "steps": data["steps"], "error": error}
    steps = suite / STEPS_FILE  # the suite's record of the steps it finished, written after each
    return {"command": shlex.join(cmd), "error": error,
            "steps": json.loads(steps.read_text()) if steps.is_file() else [],
            "variants": {path.name: _top1s(path) for path in sorted(suite.iterdir()) if (path / META_FILE).is_file()}}


def _top1s(artifact: Path) -> dict:
    """A finished suite step's test top-1; for a qat artifact also the FP32 and PTQ top-1 that qat measured."""
    metrics = json.loads((artifact / META_FILE).read_text())["metrics"]
    qat = metrics.get("qat") or {}
    return {"top1": metrics.get("top1"), **{k: qat[k] for k in ("top1_fp32", "top1_ptq", "device") if k in qat}}


def start_quant_extension_build(device: str) -> subprocess.Popen | None:
    """Build modelopt's CUDA fake-quant extension in the background (on CPU cores the training leaves idle).

    The first fake-quantized CUDA tensor makes modelopt compile it with nvcc ("may take a few mins", says modelopt;
    not measured here), then it is cached under ~/.cache/torch_extensions: built during the CIFAR run, it costs the
    suite's PTQ and QAT nothing."""
    if torch.device(device).type != "cuda":
        return None
    code = "from modelopt.torch.quantization.extensions import get_cuda_ext; get_cuda_ext(raise_if_failed=True)"
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish_quant_extension_build(build: subprocess.Popen, started: float) -> dict:
    try:
        output, _ = build.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        build.kill()
        output, _ = build.communicate()
    # Ready after: the build ran beside the training, so this is when it was waited for, not how long it took
    # (modelopt's own "Loaded extension ... in N seconds" is in the output).
    return {"ok": build.returncode == 0, "ready_after_seconds": round(time.time() - started, 1), "output": output[-800:]}


def return_model(artifact: Path, out: Path) -> dict:
    """The trained model, as a tar of its files (no resume checkpoint) in parts of at most RETURN_PART_BYTES.

    A lease returns files of 16 MiB at most, and its machine is bare afterwards: with the model back here, its
    CPU-side follow-ups (PTQ, export, ONNX Runtime bench) need no lease. Here: cat cifar_model.tar.* | tar x"""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(artifact.iterdir()):
            if path.is_file() and path.name not in (CHECKPOINT_FILE, BEST_WEIGHTS_FILE):
                tar.add(path, arcname=f"{artifact.name}/{path.name}")
    data = buffer.getvalue()
    parts = [data[i:i + RETURN_PART_BYTES] for i in range(0, len(data), RETURN_PART_BYTES)]
    for index, part in enumerate(parts):
        (out / f"cifar_model.tar.{index:02d}").write_bytes(part)
    return {"bytes": len(data), "parts": len(parts), "unpack": "cat cifar_model.tar.* | tar x"}


def step_latency(args: argparse.Namespace, paths: dict[str, Path], deadline: float) -> dict:
    from vitcompress.artifact import load_model
    from vitcompress.latency import torch_latency_ms

    device = torch.device(args.device)
    results = {}
    for name, path in paths.items():
        model, meta = load_model(path, device)
        row = {}
        for batch in (1, 256):
            row[f"fp32_b{batch}"] = torch_latency_ms(model, meta.img_size, batch, device, max_seconds=1)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                row[f"bf16_b{batch}"] = torch_latency_ms(model, meta.img_size, batch, device, max_seconds=1)
        for mode in ("default", "reduce-overhead"):  # reduce-overhead: the compiled forward replayed as CUDA graphs
            if time.time() > deadline:
                break
            compiled = torch.compile(model, mode=mode, dynamic=False)  # a graph per batch size, as bench's torch-compile
            for batch in (1, 256):
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    row[f"compile_{mode.replace('-', '_')}_bf16_b{batch}"] = torch_latency_ms(
                        compiled, meta.img_size, batch, device, max_seconds=1)
        results[name] = row
    return results


def step_bench(args: argparse.Namespace, variants: list[Path], work: Path, out: Path) -> dict:
    """The bench variants on the GPU runtimes; the report is copied to OUTDIR/bench_report.md (a lease returns
    at most 8 files, so the rest of bench's output stays in the work folder; its numbers are in the results)."""
    backends = "torch,torch-bf16,torch-compile,torch-cudagraphs,ort-cuda,ort-trt,tensorrt"
    # --in-process: a fresh process per variant x backend would cost seconds of the lease each (CUDA's start),
    # and the torch allocator's peak, which bench reports on CUDA, counts live tensors only: right in one process
    proc = cli("bench", *map(str, variants), "--backends", backends,
               "--batch", "1,32,256", "--data", f"folder:{args.data}", "--eval-size", "2000", "--max-seconds", "2",
               "--in-process", "--out", str(work / "bench"), "--force", "--quiet")
    results = work / "bench" / "results.json"
    if not results.is_file():
        return {"error": proc.stderr[-3000:]}
    (out / "bench_report.md").write_bytes((work / "bench" / "report.md").read_bytes())
    data = json.loads(results.read_text())
    return {"records": [{k: r.get(k) for k in ("variant", "backend", "batch", "p50_ms", "throughput_ips", "top1",
                                                "speedup")} for r in data["records"]], "skipped": data["skipped"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/cifar10-jpeg.tar.xz")
    parser.add_argument("--device", default="cuda", help="cpu only for a toy run of this script")
    parser.add_argument("--out", default="runs/gpu-session")
    parser.add_argument("--cifar-seconds", type=float, default=415, help="CIFAR-10 training budget (the target: 420)")
    parser.add_argument("--recovery-epochs", type=int, default=10)
    parser.add_argument("--budget-seconds", type=float, default=560, help="stop starting new work after this")
    parser.add_argument("--steps", default="smoke,speed,cifar,suite,prune,latency,bench")
    parser.add_argument("--speed-seconds", type=float, default=330, help="the most the speed step may take")
    parser.add_argument("--suite-extra", default="", help="more suite.py options (a toy run: '--recovery-args=...')")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path("runs") / "gpu-work"
    work.mkdir(parents=True, exist_ok=True)
    deadline = START + args.budget_seconds
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    # A lease runs this twice: the second command adds to the first's results, kept beside the work (the device
    # tool empties OUTDIR before each command).
    kept = work / "gpu_results.json"
    results: dict = json.loads(kept.read_text()) if kept.is_file() else {}
    results.update(hardware={"gpu": gpu, "torch": torch.__version__, "cuda": torch.version.cuda,
                             "cpu_count": os.cpu_count()}, date=time.strftime("%Y-%m-%d"))
    results["commands"] = [*results.get("commands", []), "python " + " ".join(sys.argv)]
    steps = args.steps.split(",")

    def run(name: str, fn, *fn_args) -> None:
        if name not in steps:
            return
        if time.time() > deadline:
            results[name] = {"skipped": "out of time"}
            log(out, f"{name}: skipped, out of time")
            return
        log(out, f"{name}: start")
        try:
            results[name] = fn(*fn_args)
        except Exception:  # noqa: BLE001 - record and go on: one broken path must not hide the others
            results[name] = {"error": traceback.format_exc()[-3000:]}
        log(out, f"{name}: done: {json.dumps(results[name])[:1500]}")
        save()

    def save() -> None:
        for path in (out / "gpu_results.json", kept):
            path.write_text(json.dumps(results, indent=2) + "\n")

    build_started = time.time()
    build = start_quant_extension_build(args.device) if "cifar" in steps else None
    run("cifar", step_cifar, args, work)
    if build:
        results["quant_extension_build"] = finish_quant_extension_build(build, build_started)
        log(out, f"modelopt's CUDA extension: {json.dumps(results['quant_extension_build'])[:400]}")
        save()
    base = work / "cifar10-vit"
    if (base / META_FILE).is_file():
        if "cifar" in steps:  # the command that trained it returns it; a later one has no room to spare
            results["returned_model"] = return_model(base, out)
            save()
        run("suite", step_suite, args, work, base, out, deadline)
        run("prune", step_prune, args, work, base, deadline - 60)
        pruned = [Path(r["artifact"]) for r in results.get("prune", []) if isinstance(r, dict) and r.get("artifact")]
        variants = {"base": base, **({"pruned_h0.5": pruned[0]} if pruned else {})}
        run("latency", step_latency, args, variants, deadline)
        run("bench", step_bench, args, list(variants.values()), work, out)
    else:
        for name in [step for step in steps if step in ("suite", "prune", "latency", "bench")]:
            results[name] = {"skipped": f"no CIFAR model at {base}: this machine has not run the cifar step "
                                        "(a fresh machine: the one that ran it went back)"}
            log(out, f"{name}: skipped: {results[name]['skipped']}")
        save()
    run("speed", step_speed, args, out)
    run("smoke", step_smoke, args, work)  # last: all but the CUDA-graphs-under-torchrun one passed on the H100 once
    log(out, "finished")


if __name__ == "__main__":
    main()
