"""The one training loop that finetune, prune-recovery and QAT use.

It owns optimisation only: AdamW with layer-wise LR decay (timm; fused on GPUs), warmup + cosine
schedule over a fixed number of epochs or a wall-clock budget (``budget.py``), gradient accumulation,
AMP, optional ``torch.compile``, clipping, EMA, MixUp/CutMix, an optional distillation loss, early
stopping, DDP, and a resumable ``last.ckpt`` (model, optimizer, scheduler, scaler, EMA, RNG) written
atomically after every epoch (or at most every ``--checkpoint-interval`` seconds).
"""

from __future__ import annotations

import csv
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import fmean
from typing import Any

import numpy as np
import torch
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from vitcompress.augment import BatchTransform
from vitcompress.budget import RECENT_EPOCHS, DecayTimeline, planned_epochs, schedule_can_follow
from vitcompress.config import TrainConfig
from vitcompress.datasets.imageset import DataSplits
from vitcompress.distributed import DistContext
from vitcompress.errors import UserError, require
from vitcompress.evaluate import evaluate
from vitcompress.fsutil import atomic_file, write_safetensors, write_torch
from vitcompress.loader import BatchLoader
from vitcompress.progress import progress_bar

STARVED_SHARE = 0.2  # a streamed epoch that waits for data this share of its time gets a hint
CHECKPOINT_FILE = "last.ckpt"
BEST_WEIGHTS_FILE = "best.safetensors"
LOG_FILE = "train_log.csv"


@dataclass
class FitResult:
    """What training leaves behind: the weights to keep and the history that led to them."""

    history: list[dict[str, Any]]
    best_epoch: int
    best_val_top1: float | None
    stopped_early: bool
    seconds: float  # in training steps alone
    images_per_second: float
    wall_seconds: float  # the whole loop: steps, validation, checkpoints (what --time-budget counts)


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """``auto`` is bf16 on GPUs that support it and full precision on CPUs."""
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    if amp == "none":
        return None
    if amp == "fp16" and device.type != "cuda":
        raise UserError("--amp fp16 needs a CUDA device", "use --amp bf16 or none on the CPU")
    return torch.float16 if amp == "fp16" else torch.bfloat16


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def apply_freezing(model: nn.Module, cfg: TrainConfig) -> None:
    """Freeze everything but the classifier, or the embeddings and the first N blocks."""
    if cfg.head_only:
        head = model.get_classifier()
        for p in model.parameters():
            p.requires_grad = False
        for p in head.parameters():
            p.requires_grad = True
        return
    if cfg.freeze_blocks:
        blocks = getattr(model, "blocks", None)
        require(blocks is not None and cfg.freeze_blocks <= len(blocks),
                f"--freeze-blocks {cfg.freeze_blocks} is more than the model's {len(blocks or [])} blocks",
                "pass a smaller number")
        frozen = [model.patch_embed, *blocks[: cfg.freeze_blocks]]
        for module in frozen:
            for p in module.parameters():
                p.requires_grad = False
        for name in ("cls_token", "pos_embed", "reg_token"):
            if isinstance(getattr(model, name, None), nn.Parameter):
                getattr(model, name).requires_grad = False


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [int(x) for x in np.random.get_state()[1]], "numpy_pos": int(np.random.get_state()[2])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    np.random.set_state(("MT19937", np.asarray(state["numpy"], dtype=np.uint32), state["numpy_pos"], 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _hms(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def class_and_distillation_logits(outputs: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The head the labels train and the head the teacher trains: a DeiT-distilled model in distilled training
    returns both (class token, distillation token); any other model's one head is both."""
    if isinstance(outputs, tuple):
        return outputs
    return outputs, outputs


class Trainer:
    """Trains ``model`` on ``data.train``, selecting the best epoch on ``data.val``.

    Files live in ``workdir`` (the stage's staging directory): ``last.ckpt``, ``best.safetensors``
    and ``train_log.csv``. Only rank 0 writes them.
    """

    def __init__(self, model: nn.Module, data: DataSplits, cfg: TrainConfig, transform: BatchTransform,
                 ctx: DistContext, workdir: Path, distill: nn.Module | None = None,
                 stop_at_val_top1: float | None = None) -> None:
        self.cfg, self.data, self.ctx, self.workdir, self.transform = cfg, data, ctx, workdir, transform
        self.stop_at_val_top1 = stop_at_val_top1  # training ends after the first epoch whose validation reaches it
        # distill(inputs, logits, task_loss) -> loss, e.g. compress.distill.DistillationLoss
        self.distill = distill.to(ctx.device) if distill is not None else None
        self.model = model.to(ctx.device)
        if ctx.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        apply_freezing(self.model, cfg)
        self.amp = amp_dtype(cfg.amp, ctx.device)
        self.train_loader = BatchLoader(data.train, cfg.batch_size, ctx.device, shuffle=True, drop_last=True,
                                        seed=cfg.seed, rank=ctx.rank, world_size=ctx.world_size)
        require(len(self.train_loader) >= cfg.accum_steps,
                f"--batch-size {cfg.batch_size} x --accum-steps {cfg.accum_steps} is more than the "
                f"{len(data.train)} training images per rank", "use a smaller --batch-size")
        self.steps_per_epoch = len(self.train_loader) // cfg.accum_steps
        fused = {"fused": True} if ctx.device.type == "cuda" else {}  # one kernel for the whole update on a GPU
        self.optimizer = create_optimizer_v2(self.model, opt="adamw", lr=cfg.lr, weight_decay=cfg.weight_decay,
                                             layer_decay=cfg.layer_decay if cfg.layer_decay < 1 else None, **fused)
        warmup = int(cfg.warmup_epochs * self.steps_per_epoch)
        self.planned_epochs = cfg.epochs  # --time-budget re-plans it after every epoch
        self.timeline = DecayTimeline.fixed(warmup, self._decay_updates(cfg.epochs, warmup))
        self.scheduler = CosineLRScheduler(self.optimizer, t_initial=self.timeline.length,
                                           lr_min=cfg.min_lr, warmup_t=warmup, warmup_lr_init=cfg.lr * 1e-3,
                                           warmup_prefix=True, t_in_epochs=False)
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=self.amp == torch.float16)
        # DDP broadcasts rank 0's weights when wrapping, so the EMA copy must be taken after it.
        self.ddp = (DistributedDataParallel(self.model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
                    if ctx.distributed else self.model)
        # Only the training step runs compiled: checkpoints, EMA and evaluation keep the plain module (and its keys).
        self.step_model = torch.compile(self.ddp, mode=cfg.compile_mode) if cfg.compile else self.ddp
        self.ema = ModelEmaV3(self.model, decay=cfg.ema_decay) if cfg.ema else None
        mixes = cfg.mixup > 0 or cfg.cutmix > 0
        self.mixup = (Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                            label_smoothing=cfg.label_smoothing, num_classes=data.num_classes) if mixes else None)
        self.criterion = SoftTargetCrossEntropy() if self.mixup else nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.start_epoch, self.history = 0, []
        self.best_val, self.best_epoch, self.bad_epochs = None, -1, 0
        self.train_seconds, self.train_images = 0.0, 0
        self.epoch_wall_seconds: list[float] = []  # each epoch's wall time: training, validation, checkpoint
        self._last_checkpoint = time.perf_counter()
        self._hinted = False  # the data-starvation note is printed once

    def _decay_updates(self, epochs: int, warmup: int) -> int:
        """The cosine decay's length: it follows the warmup and ends with the last update of ``epochs``.

        At least 2: a warmup as long as the run leaves no decay, and timm warns about a length of 1."""
        return max(2, epochs * self.steps_per_epoch - warmup)

    def _set_schedule_length(self, epochs: int, epochs_done: int) -> None:
        """End the cosine decay with the last update of ``epochs``, continuing from where it is now."""
        warmup = self.timeline.warmup
        self.timeline.replan(epochs_done * self.steps_per_epoch, end=warmup + self._decay_updates(epochs, warmup))

    # ---------------------------------------------------------------- resume
    def save_checkpoint(self, epoch: int) -> None:
        state = {
            "epoch": epoch, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None, "history": self.history,
            "best_val": self.best_val, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
            "train_seconds": self.train_seconds, "train_images": self.train_images,
            "planned_epochs": self.planned_epochs, "epoch_wall_seconds": self.epoch_wall_seconds,
            "decay_timeline": asdict(self.timeline),
            "config": asdict(self.cfg), "rng": _rng_state(),
        }
        write_torch(state, self.workdir / CHECKPOINT_FILE)

    def load_checkpoint(self) -> None:
        path = self.workdir / CHECKPOINT_FILE
        state = torch.load(path, map_location="cpu", weights_only=True)
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError:
            raise UserError(f"{path} was written for another model",
                            "resume with the same --model, --model-kwargs and --img-size, "
                            "or pass --force to start over") from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        # checkpoints from before the timeline re-planned by moving the scheduler's own decay length
        saved = state.get("decay_timeline")
        self.timeline = DecayTimeline(**saved) if saved else DecayTimeline.fixed(self.timeline.warmup, self.scheduler.t_initial)
        self.scaler.load_state_dict(state["scaler"])
        if self.ema and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        self.history, self.best_val = state["history"], state["best_val"]
        self.best_epoch, self.bad_epochs = state["best_epoch"], state["bad_epochs"]
        self.train_seconds, self.train_images = state["train_seconds"], state["train_images"]
        self.planned_epochs = state.get("planned_epochs", self.cfg.epochs)
        self.epoch_wall_seconds = state.get("epoch_wall_seconds", [])
        self.start_epoch = state["epoch"] + 1
        _set_rng_state(state["rng"])

    # ---------------------------------------------------------------- loop
    def fit(self) -> FitResult:
        stopped_early = False
        mark = time.perf_counter()
        epoch = self.start_epoch
        while epoch < self.planned_epochs:
            row = self._train_epoch(epoch)
            row.update(self._validate())
            now = time.perf_counter()
            self.epoch_wall_seconds.append(now - mark)  # the previous epoch's checkpoint lands here: it is training time too
            mark = now
            if self.cfg.time_budget:
                self.planned_epochs = self._replan()
                if schedule_can_follow(len(self.epoch_wall_seconds)):
                    self._set_schedule_length(self.planned_epochs, epochs_done=epoch + 1)
            row["wall_seconds"] = self.epoch_wall_seconds[-1]
            row["planned_epochs"] = self.planned_epochs
            row["eta_seconds"] = round(self._eta(epoch), 1)
            self._select(epoch, row)
            self.history.append(row)
            if self.ctx.is_main:
                if self._checkpoint_due(epoch):
                    self.save_checkpoint(epoch)
                self._write_log()
            self.ctx.barrier()
            if self.cfg.patience and self.data.val is not None and self.bad_epochs >= self.cfg.patience:
                stopped_early = True
                if self.ctx.is_main and not self.cfg.quiet:
                    print(f"early stopping: no val improvement for {self.cfg.patience} epochs", flush=True)
                break
            if self.stop_at_val_top1 is not None and (row.get("val_top1") or 0.0) >= self.stop_at_val_top1:
                stopped_early = True
                if self.ctx.is_main and not self.cfg.quiet:
                    print(f"target reached: val top-1 {row['val_top1']:.4f} >= {self.stop_at_val_top1:.4f}", flush=True)
                break
            epoch += 1
        ips = self.train_images / self.train_seconds if self.train_seconds else 0.0
        return FitResult(self.history, self.best_epoch, self.best_val, stopped_early, self.train_seconds, ips,
                         sum(self.epoch_wall_seconds))

    def _checkpoint_due(self, epoch: int) -> bool:
        """After every epoch, or with --checkpoint-interval at most that often (and after the planned last epoch)."""
        now = time.perf_counter()
        due = (not self.cfg.checkpoint_interval or epoch + 1 >= self.planned_epochs
               or now - self._last_checkpoint >= self.cfg.checkpoint_interval)
        if due:
            self._last_checkpoint = now
        return due

    def _eta(self, epoch: int) -> float:
        eta = fmean(self.epoch_wall_seconds[-RECENT_EPOCHS:]) * (self.planned_epochs - epoch - 1)
        return min(eta, max(0.0, self.cfg.time_budget - sum(self.epoch_wall_seconds))) if self.cfg.time_budget else eta

    def _replan(self) -> int:
        """Rank 0's plan for the budget, so that every rank stops after the same epoch."""
        plan = planned_epochs(self.cfg.time_budget, self.cfg.epochs, self.epoch_wall_seconds)
        return self.ctx.broadcast_int(plan)

    def eval_model(self) -> nn.Module:
        """The weights validation scores: the EMA copy when EMA is on."""
        return self.ema.module if self.ema else self.model

    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        cfg, model = self.cfg, self.ddp
        model.train()
        self.train_loader.set_epoch(epoch)
        totals = torch.zeros(3, device=self.ctx.device)  # loss sum, correct, count
        micro_steps = self.steps_per_epoch * cfg.accum_steps  # whole optimizer steps only: no gradient leaks
        bar = progress_bar(self.train_loader, desc=f"epoch {epoch + 1}/{self.planned_epochs}", total=micro_steps,
                           quiet=cfg.quiet or not self.ctx.is_main)
        start = time.perf_counter()
        update = epoch * self.steps_per_epoch
        waited, asked = 0.0, start  # time spent waiting for the next batch: the loader holding training back
        for step, (images, labels) in enumerate(bar):
            waited += time.perf_counter() - asked
            if step == micro_steps:
                break
            x = self.transform.train(images)
            targets = labels
            if self.mixup:
                x, targets = self.mixup(x, labels)
            last_micro = (step + 1) % cfg.accum_steps == 0
            sync = nullcontext() if (last_micro or not self.ctx.distributed) else model.no_sync()
            with sync:
                with torch.autocast(self.ctx.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
                    logits, distill_logits = class_and_distillation_logits(self.step_model(x))
                    loss = self.criterion(logits.float(), targets)
                    if self.distill is not None:
                        loss = self.distill(x, distill_logits.float(), loss)
                    if distill_logits is not logits:  # two heads: the model predicts their mean in eval
                        logits = (logits + distill_logits) / 2
                self.scaler.scale(loss / cfg.accum_steps).backward()
            if last_micro:
                if cfg.clip_grad > 0:
                    self.scaler.unscale_(self.optimizer)
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                update += 1
                self.scheduler.step_update(self.timeline.scheduler_time(update))
                if self.ema:
                    self.ema.update(self.model, step=update)
            with torch.no_grad():
                count = torch.full((), len(labels), device=self.ctx.device)  # filled on the device: no host copy
                totals += torch.stack([loss.detach() * len(labels), (logits.argmax(1) == labels).sum(), count]).float()
            if step % 10 == 0 and not bar.disable:
                seen = float(totals[2])
                bar.set_postfix(loss=f"{float(totals[0]) / seen:.3f}", acc=f"{float(totals[1]) / seen:.3f}",
                                img_s=f"{seen * self.ctx.world_size / (time.perf_counter() - start):.0f}",
                                lr=f"{self.optimizer.param_groups[0]['lr']:.2e}")
            asked = time.perf_counter()
        if self.ctx.device.type == "cuda":
            torch.cuda.synchronize(self.ctx.device)
        seconds = time.perf_counter() - start
        if self.ctx.distributed:
            torch.distributed.all_reduce(totals)
        self.train_seconds += seconds
        self.train_images += int(totals[2])
        self._hint_if_starved(epoch, waited / seconds)
        return {"epoch": epoch + 1, "lr": self.optimizer.param_groups[-1]["lr"], "train_loss": float(totals[0] / totals[2]),
                "train_acc": float(totals[1] / totals[2]), "images_per_s": float(totals[2]) / seconds, "seconds": seconds,
                "data_wait_share": round(waited / seconds, 4)}

    def _hint_if_starved(self, epoch: int, share: float) -> None:
        """Say once when a streamed split's loader keeps the model waiting (it decodes every epoch)."""
        if share < STARVED_SHARE or not self.data.train.streamed or self._hinted or not self.ctx.is_main or self.cfg.quiet:
            return
        self._hinted = True
        workers = self.data.train.images.workers
        print(f"note: epoch {epoch + 1} waited for data {share:.0%} of its time: {workers} decoding worker(s) per process "
              "cannot keep up; pass more --workers if there are idle cores, or drop --stream to decode once into the cache",
              file=sys.stderr, flush=True)

    def _validate(self) -> dict[str, Any]:
        if self.data.val is None:
            return {}
        report = evaluate(self.eval_model(), self.data.val, self.transform, self.ctx, amp_dtype=self.amp)
        return {"val_loss": report["loss"], "val_top1": report["top1"]}

    def _select(self, epoch: int, row: dict[str, Any]) -> None:
        """Keep the weights of the best validation epoch (or of the last epoch without a val split)."""
        score = row.get("val_top1")
        improved = score is None or self.best_val is None or score > self.best_val
        if improved:
            self.best_val, self.best_epoch, self.bad_epochs = score, epoch + 1, 0
            if self.ctx.is_main and score is not None:  # without validation the last epoch is kept as is
                state = {k: v.detach().cpu().contiguous() for k, v in self.eval_model().state_dict().items()}
                write_safetensors(state, self.workdir / BEST_WEIGHTS_FILE)
        else:
            self.bad_epochs += 1
        if self.ctx.is_main and not self.cfg.quiet:
            val = f" val_top1 {score:.4f}" if score is not None else ""
            print(f"epoch {epoch + 1}/{self.planned_epochs}: loss {row['train_loss']:.4f} train_acc {row['train_acc']:.4f}"
                  f"{val} ({row['images_per_s']:.0f} img/s, eta {_hms(row['eta_seconds'])})"
                  f"{' *' if improved and score is not None else ''}", flush=True)

    def _write_log(self) -> None:
        keys = list(dict.fromkeys(k for row in self.history for k in row))
        with atomic_file(self.workdir / LOG_FILE) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.history)
