"""Training-speed benchmark: images/second of `vitcompress finetune` on CIFAR-10 (32px).

Measures in one run, on one machine:
  train_ips     full training steps (device augmentation + forward + backward + AdamW) through the
                real Trainer, vit_small_patch16_224 at 32px with 4px patches (65 tokens)
  pipeline_ips  our data path alone: uint8 tensor (decoded once) -> BatchLoader -> BatchTransform.train
  streamed_ips  the same with --stream: JPEGs decoded by --workers loader processes every epoch, no cache
  streamed_train_ips  full training steps through the Trainer on the streamed data
  classic_ips   the usual torchvision path on the same JPEG files: ImageFolder + PIL transforms + DataLoader
  plain_loop_ips  a plain timm-style training loop (that DataLoader, autocast, AdamW) on the same model
  compiled_train_ips  with --compile: the Trainer again with ``--compile`` (torch.compile of the step), once per
                      --compile-modes entry (``compiled_reduce_overhead_train_ips`` for reduce-overhead, ...)
and records these ratios (one more per compile mode): pipeline_ips / train_ips (>1: the data path cannot starve the
model), pipeline_ips / classic_ips (what decoding once and augmenting batches on the device buys),
streamed_ips / classic_ips (streaming against the usual path, both decoding every epoch), streamed_train_ips /
train_ips (what streaming costs a training step), train_ips / plain_loop_ips (what the whole training path buys end
to end), and each compiled_*_ips / plain_loop_ips.

Usage:  python benchmarks/train_speed.py [--device cpu|cuda] [--steps 10] [--batch-size 64] [--compile]
                                         [--compile-modes default,reduce-overhead]
Writes: benchmarks/results/train_speed_<device>_<precision>.json (with hardware and the exact command).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch
from timm.data import resolve_data_config

from vitcompress.augment import BatchTransform
from vitcompress.config import COMPILE_MODES, AugmentOptions, TrainConfig
from vitcompress.data import DataOptions, load_data
from vitcompress.datasets.imageset import DataSplits
from vitcompress.distributed import DistContext, resolve_device
from vitcompress.loader import BatchLoader
from vitcompress.models import build_kwargs, create_model
from vitcompress.train import Trainer, amp_dtype

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "cifar10-jpeg.tar.xz"


def hardware(device: torch.device) -> dict:
    info = {"platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def train_ips(data: DataSplits, args: argparse.Namespace, ctx: DistContext, workdir: Path,
              compile_mode: str | None = None) -> float:
    """Images/s of the real training loop over ``steps`` batches (after one warm-up epoch, which compiles).

    ``compile_mode``: train with ``--compile --compile-mode compile_mode``; None trains eagerly."""
    kwargs = build_kwargs(len(data.classes), 32, 4, {})
    model = create_model(args.model, kwargs)
    data_cfg = resolve_data_config({}, model=model)
    transform = BatchTransform(32, data_cfg["mean"], data_cfg["std"], AugmentOptions())
    subset = data.train.subset(torch.arange(args.steps * args.batch_size))
    splits = DataSplits(subset, None, data.test, data.classes, {})
    trainer = Trainer(model, splits, TrainConfig(epochs=2, batch_size=args.batch_size, quiet=True, amp=args.amp,
                                                  compile=compile_mode is not None,
                                                  compile_mode=compile_mode or "default"),
                      transform, ctx, workdir)
    result = trainer.fit()
    return result.history[-1]["images_per_s"]  # epoch 2: compiled kernels and allocator warm


def pipeline_ips(data: DataSplits, args: argparse.Namespace, ctx: DistContext) -> float:
    loader = BatchLoader(data.train, args.batch_size, ctx.device, shuffle=True, drop_last=True)
    transform = BatchTransform(32, [0.5] * 3, [0.5] * 3, AugmentOptions())
    return _time_batches(((transform.train(x), y) for x, y in loader), args.pipeline_batches, args.batch_size, ctx.device)


def classic_loader(root: Path, args: argparse.Namespace, ctx: DistContext) -> torch.utils.data.DataLoader:
    """The usual torchvision path: ImageFolder + per-image PIL transforms + DataLoader workers."""
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.5] * 3)])
    ds = datasets.ImageFolder(str(root / "train"), transform=tf)
    return torch.utils.data.DataLoader(ds, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                                       pin_memory=ctx.device.type == "cuda", drop_last=True, persistent_workers=False)


def classic_ips(root: Path, args: argparse.Namespace, ctx: DistContext) -> float:
    loader = classic_loader(root, args, ctx)
    batches = ((x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)) for x, y in loader)
    return _time_batches(batches, args.pipeline_batches, args.batch_size, ctx.device)


def plain_loop_ips(root: Path, args: argparse.Namespace, ctx: DistContext) -> float:
    """A plain timm-style loop: DataLoader + torchvision transforms feeding forward/backward/AdamW."""
    loader = classic_loader(root, args, ctx)
    model = create_model(args.model, build_kwargs(len(loader.dataset.classes), 32, 4, {})).to(ctx.device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    dtype = amp_dtype(args.amp, ctx.device)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=dtype == torch.float16)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.1)

    def steps():
        for x, y in loader:
            x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
            with torch.autocast(ctx.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = criterion(model(x).float(), y)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            yield loss

    return _time_batches(steps(), args.steps, args.batch_size, ctx.device, warmup=3)


def _time_batches(batches, count: int, batch_size: int, device: torch.device, warmup: int = 1) -> float:
    it = iter(batches)
    for _ in range(warmup):  # worker start-up, first allocation, kernel selection
        next(it)
    start = time.perf_counter()
    for _ in range(count):
        next(it)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return count * batch_size / (time.perf_counter() - start)


# ratio -> (numerator, denominator), recorded as soon as both are measured
RATIOS = {"pipeline_over_train": ("pipeline_ips", "train_ips"), "pipeline_over_classic": ("pipeline_ips", "classic_ips"),
          "streamed_over_classic": ("streamed_ips", "classic_ips"),
          "streamed_train_over_train": ("streamed_train_ips", "train_ips"),
          "train_over_plain_loop": ("train_ips", "plain_loop_ips")}


def _compiled_name(mode: str) -> str:
    """The record's name for the Trainer compiled in ``mode``: compiled, compiled_reduce_overhead, ..."""
    return "compiled" if mode == "default" else f"compiled_{mode.replace('-', '_')}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="CIFAR-10 ImageFolder archive or folder")
    parser.add_argument("--model", default="vit_small_patch16_224")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", default="auto")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8, help="training steps timed")
    parser.add_argument("--pipeline-batches", type=int, default=50)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="loader processes of the torchvision path and of --stream")
    parser.add_argument("--compile", action="store_true", help="also time the Trainer with --compile")
    parser.add_argument("--compile-modes", default="default",
                        help=f"with --compile: the torch.compile modes to time, comma-separated ({', '.join(COMPILE_MODES)})")
    parser.add_argument("--record", default="", help="where to write the record "
                        "(default: benchmarks/results/train_speed_<device>_<precision>.json); rewritten after each measurement")
    args = parser.parse_args()
    compile_modes = args.compile_modes.split(",") if args.compile else []
    if unknown := set(compile_modes) - set(COMPILE_MODES):
        parser.error(f"--compile-modes: unknown {', '.join(sorted(unknown))}; use {', '.join(COMPILE_MODES)}")
    ctx = DistContext(device=resolve_device(args.device))
    data = load_data(DataOptions(spec=f"folder:{args.data}", img_size=32, val_split=0))
    streamed = load_data(DataOptions(spec=f"folder:{args.data}", img_size=32, val_split=0, stream=True, workers=args.workers))
    if args.steps * args.batch_size > len(data.train):
        parser.error(f"--steps {args.steps} x --batch-size {args.batch_size} is more than the {len(data.train)} "
                     "training images: pass fewer steps or a smaller batch")
    workdir = HERE / "results" / ".scratch"
    workdir.mkdir(parents=True, exist_ok=True)
    precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp_dtype(args.amp, ctx.device)]
    out = Path(args.record) if args.record else HERE / "results" / f"train_speed_{ctx.device.type}_{precision}.json"
    record = {"benchmark": "train_speed", "model": args.model, "img_size": 32, "patch_size": 4,
              "batch_size": args.batch_size, "amp": args.amp, "precision": precision, "device": str(ctx.device),
              "hardware": hardware(ctx.device), "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
              "date": time.strftime("%Y-%m-%d"), "results": {}}
    measured, failures = {}, {}
    compiled = [_compiled_name(mode) for mode in compile_modes]
    ratios = {**RATIOS, **{f"{name}_over_plain_loop": (f"{name}_train_ips", "plain_loop_ips") for name in compiled}}

    def measure(name: str, fn, *fn_args, **fn_kwargs) -> None:
        """Measure one thing and rewrite the record at once: a run cut short (a lease that ends) keeps what it had."""
        try:
            measured[name] = fn(*fn_args, **fn_kwargs)
        except Exception as error:  # noqa: BLE001 - recorded: one broken path must not cost the others
            failures[name] = f"{type(error).__name__}: {str(error)[-1500:]}"
        for ratio, (top, bottom) in ratios.items():
            if top in measured and bottom in measured:
                measured[ratio] = measured[top] / measured[bottom]
        record["results"] = {k: round(v, 2) for k, v in measured.items()}
        if failures:
            record["failed"] = failures
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=2) + "\n")

    root = Path(data.description["root"])
    measure("train_ips", train_ips, data, args, ctx, workdir)
    measure("pipeline_ips", pipeline_ips, data, args, ctx)
    measure("classic_ips", classic_ips, root, args, ctx)
    measure("plain_loop_ips", plain_loop_ips, root, args, ctx)
    for mode, name in zip(compile_modes, compiled, strict=True):
        measure(f"{name}_train_ips", train_ips, data, args, ctx, workdir, compile_mode=mode)
    measure("streamed_ips", pipeline_ips, streamed, args, ctx)  # last: the comparisons above matter more to a short lease
    measure("streamed_train_ips", train_ips, streamed, args, ctx, workdir)
    for key, value in record["results"].items():
        print(f"{key:42s} {value:>10.2f}")
    for key, error in failures.items():
        print(f"{key:42s} failed: {error}")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
