"""The stages' configurations: plain dataclasses, no torch, so the CLI can build its options fast.

The CLI generates one option per field (``vitcompress.cliargs``); the Python API takes the same
objects. Each config checks its own values (``validate``) and raises ``UserError`` with the fix.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from vitcompress.datasets.torchvision_catalog import TORCHVISION_SETS
from vitcompress.errors import UserError, require

DATA_SPEC_HELP = (f"{' | '.join(TORCHVISION_SETS)} (torchvision) | folder:PATH (ImageFolder tree or .zip/.tar/.tar.gz/.tar.xz "
                  "of one) | shapes[:N]")
CROP_CHOICES = ("pad", "rrc", "none")
AUTO_AUGMENT_CHOICES = ("none", "randaugment", "autoaugment", "autoaugment-cifar10", "autoaugment-svhn", "trivialaugment")
RANDOM_ERASE_MODES = ("pixel", "const")
AMP_CHOICES = ("auto", "none", "bf16", "fp16")
# torch.compile's modes; reduce-overhead and max-autotune also replay the compiled step as CUDA graphs on GPUs
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
PREDICT_BATCH_SIZE = 32  # images per call of the model in `predict`


@dataclass
class AugmentOptions:
    """Training-time augmentation; every switch can be turned off."""

    crop: str = "pad"
    crop_padding: float = 0.125
    rrc_min_scale: float = 0.35
    hflip: bool = True
    color_jitter: float = 0.0
    auto_augment: str = "none"
    auto_augment_group: int = 64
    random_erase: float = 0.0
    random_erase_mode: str = "pixel"


def check_data_spec(spec: str, flag: str = "--data") -> None:
    """A dataset spec's form, and a folder's existence: what can be checked before any work starts."""
    name, _, arg = spec.partition(":")
    if name == "shapes":
        require(not arg or (arg.isdigit() and int(arg) > 0), f"data spec {spec!r} needs a positive count",
                "use shapes or shapes:N (N training images per class)")
    elif name == "folder" and arg:
        require(Path(arg).expanduser().exists(), f"{flag} {spec}: {arg} does not exist",
                "pass folder:PATH with PATH an image folder or a .zip/.tar[.gz|.xz] of one")
    elif spec not in TORCHVISION_SETS:
        raise UserError(f"unknown data spec {spec!r}", f"use one of: {DATA_SPEC_HELP}")


def absolute_path(path: str | None) -> str | None:
    """``path`` from the filesystem root (``~`` expanded), so that a record of it works from any directory."""
    return os.path.abspath(os.path.expanduser(path)) if path else path


def absolute_data_spec(spec: str | None) -> str | None:
    """``folder:PATH`` with PATH absolute (:func:`absolute_path`); other specs as they are."""
    name, _, arg = (spec or "").partition(":")
    return f"folder:{absolute_path(arg)}" if name == "folder" and arg else spec


def check_workers(workers: int) -> None:
    require(workers >= 0, f"--workers {workers} must not be negative", "pass 0 for one per CPU core")


@dataclass
class TrainConfig:
    """Hyper-parameters of the training loop (shared by every stage that trains)."""

    epochs: int = 10
    time_budget: float = 0.0
    checkpoint_interval: float = 0.0
    batch_size: int = 128
    lr: float = 1e-3
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    layer_decay: float = 1.0
    freeze_blocks: int = 0
    head_only: bool = False
    accum_steps: int = 1
    amp: str = "auto"
    compile: bool = False
    compile_mode: str = "default"
    clip_grad: float = 1.0
    ema: bool = False
    ema_decay: float = 0.999
    label_smoothing: float = 0.1
    mixup: float = 0.0
    cutmix: float = 0.0
    mixup_prob: float = 1.0
    patience: int = 0
    augment: AugmentOptions = field(default_factory=AugmentOptions)
    seed: int = 0
    quiet: bool = False

    def validate(self) -> None:
        require(self.epochs >= 1, f"--epochs {self.epochs} must be at least 1", "pass --epochs 1 or more")
        require(self.time_budget >= 0, f"--time-budget {self.time_budget:g} must not be negative",
                "pass the seconds to train for, e.g. --time-budget 420, or 0 for exactly --epochs")
        require(self.checkpoint_interval >= 0, f"--checkpoint-interval {self.checkpoint_interval:g} must not be negative",
                "pass the seconds between checkpoints, e.g. 60, or 0 for one after every epoch")
        # None: left for the stage to derive (prune's recovery, from its source's training)
        require(self.batch_size is None or self.batch_size >= 1, f"--batch-size {self.batch_size} must be at least 1",
                "pass --batch-size 1 or more")
        require(self.lr is None or self.lr > 0, f"--lr {self.lr} must be positive", "pass e.g. --lr 1e-3")
        require(self.min_lr >= 0, f"--min-lr {self.min_lr} must not be negative", "pass e.g. --min-lr 1e-6")
        require(self.weight_decay >= 0, f"--weight-decay {self.weight_decay} must not be negative", "pass e.g. 0.05")
        require(self.warmup_epochs >= 0, f"--warmup-epochs {self.warmup_epochs} must not be negative", "pass e.g. 1")
        require(0 < self.layer_decay <= 1, f"--layer-decay {self.layer_decay} is not in (0, 1]",
                "pass e.g. 0.75, or 1 to turn it off")
        require(self.accum_steps >= 1, f"--accum-steps {self.accum_steps} must be at least 1", "pass 1 for no accumulation")
        require(self.amp in AMP_CHOICES, f"--amp {self.amp!r} is unknown", "use auto, none, bf16 or fp16")
        require(self.compile_mode in COMPILE_MODES, f"--compile-mode {self.compile_mode!r} is unknown",
                f"use one of {', '.join(COMPILE_MODES)}")
        require(self.compile or self.compile_mode == "default", f"--compile-mode {self.compile_mode} needs --compile",
                "add --compile, or leave --compile-mode out")
        require(self.clip_grad >= 0, f"--clip-grad {self.clip_grad} must not be negative", "pass 0 to turn clipping off")
        require(0 < self.ema_decay < 1, f"--ema-decay {self.ema_decay} is not in (0, 1)", "pass e.g. 0.999")
        require(0 <= self.label_smoothing < 1, f"--label-smoothing {self.label_smoothing} is not in [0, 1)", "pass e.g. 0.1")
        require(self.mixup >= 0 and self.cutmix >= 0, "--mixup/--cutmix must not be negative",
                "pass alpha values like 0.8 and 1.0, or 0")
        require(0 <= self.mixup_prob <= 1, f"--mixup-prob {self.mixup_prob} is not in [0, 1]",
                "pass e.g. 0.5 to mix half of the batches, or 1 to mix every batch")
        require(self.patience >= 0, f"--patience {self.patience} must not be negative", "pass 0 to turn early stopping off")
        require(self.freeze_blocks >= 0, f"--freeze-blocks {self.freeze_blocks} must not be negative",
                "pass 0 to train all blocks")
        a = self.augment
        require(a.crop in CROP_CHOICES, f"--crop {a.crop!r} is unknown", f"use one of {', '.join(CROP_CHOICES)}")
        require(a.auto_augment in AUTO_AUGMENT_CHOICES, f"--auto-augment {a.auto_augment!r} is unknown",
                f"use one of {', '.join(AUTO_AUGMENT_CHOICES)}")
        require(a.auto_augment_group >= 1, f"--auto-augment-group {a.auto_augment_group} must be at least 1",
                "pass e.g. 64 (images per operation draw)")
        require(0 <= a.random_erase <= 1, f"--random-erase {a.random_erase} is not in [0, 1]",
                "pass e.g. 0.25 to erase a box in a quarter of the images, or 0 for none")
        require(a.random_erase_mode in RANDOM_ERASE_MODES, f"--random-erase-mode {a.random_erase_mode!r} is unknown",
                f"use one of {', '.join(RANDOM_ERASE_MODES)}")
        require(0 <= a.crop_padding < 1 and 0 < a.rrc_min_scale <= 1 and a.color_jitter >= 0,
                "crop padding must be in [0, 1), rrc min scale in (0, 1], colour jitter >= 0", "fix the augmentation options")


KD_CHOICES = ("soft", "hard", "none")


@dataclass
class DistillOptions:
    """Distillation from a teacher: the source (unpruned / FP32) model while a compressed model trains, or
    finetune's ``--teacher``."""

    distill: str = "soft"
    kd_temperature: float = 2.0
    kd_alpha: float = 0.5
    kd_layers: float = 0.0

    def validate(self) -> None:
        require(self.distill in KD_CHOICES, f"--distill {self.distill!r} is unknown", "use soft, hard or none")
        require(self.kd_temperature > 0, f"--kd-temperature {self.kd_temperature} must be positive", "pass e.g. 2")
        require(0 <= self.kd_alpha <= 1, f"--kd-alpha {self.kd_alpha} is not in [0, 1]", "pass e.g. 0.5")
        require(self.kd_layers >= 0, f"--kd-layers {self.kd_layers} must not be negative", "pass e.g. 1, or 0 for off")


@dataclass
class FinetuneConfig:
    """Everything ``finetune`` needs; the CLI flags are generated from these fields."""

    model: str
    data: str
    out: str
    img_size: int | None = None
    patch_size: int | None = None
    model_kwargs: str = ""
    drop_path: float = 0.1
    pretrained: bool = False
    init_checkpoint: str | None = None
    data_dir: str | None = None
    download: bool = False
    val_split: float = 0.1
    train_subset: int = 0
    cache_dir: str | None = None
    stream: bool = False
    workers: int = 0
    device: str = "auto"
    force: bool = False
    resume: bool = False
    teacher: str | None = None
    teacher_checkpoint: str | None = None
    # soft at DeiT's temperature 3: +3.9 points on CIFAR-10 against +1.6 for DeiT's hard (docs/results.md)
    kd: DistillOptions = field(default_factory=lambda: DistillOptions(distill="soft", kd_temperature=3.0))
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        """Check every value, and make the paths absolute (the artifact records them; see docs/artifact.md)."""
        require(self.train.lr is not None and self.train.batch_size is not None, "finetune needs --lr and --batch-size",
                "pass both (the defaults are 1e-3 and 128)")
        self.train.validate()
        self.kd.validate()
        require(self.kd.distill != "none" or not self.teacher, "--distill none leaves --teacher nothing to teach",
                "pass --distill hard or soft, or leave --teacher out")
        require(self.teacher or not self.teacher_checkpoint, "--teacher-checkpoint needs --teacher",
                "add --teacher MODEL_NAME (the architecture the checkpoint holds)")
        if self.teacher and Path(self.teacher).expanduser().exists():  # an artifact (else a timm model name)
            self.teacher = absolute_path(self.teacher)
        self.teacher_checkpoint = absolute_path(self.teacher_checkpoint)
        require(0 <= self.drop_path < 1, f"--drop-path {self.drop_path} is not in [0, 1)", "pass e.g. 0.1")
        check_data_spec(self.data)
        check_workers(self.workers)
        self.data = absolute_data_spec(self.data)
        self.init_checkpoint, self.data_dir, self.cache_dir = map(absolute_path, (self.init_checkpoint, self.data_dir,
                                                                                 self.cache_dir))


PRUNE_CRITERIA = ("l1", "l2", "taylor", "fisher", "attention", "random")
PRUNE_RANKINGS = ("uniform", "global")
CALIBRATION_METHODS = ("max", "entropy", "percentile", "mse")


def recovery_train_config() -> TrainConfig:
    """Recovery fine-tuning defaults: a pruned model starts close to a good solution (small LR, short warmup)."""
    return TrainConfig(epochs=5, lr=2e-4, min_lr=1e-6, warmup_epochs=0.5)


def prune_train_config() -> TrainConfig:
    """prune's recovery: the LR and batch size left unset (``None``) are derived from the source's own training
    (``compress/recovery.py``, ``derive_recovery``). No random crop: in a short recovery distilled from the parent
    the crop slows the fit more than it regularises (docs/pruning.md: 1 point on a converged CIFAR-10 ViT)."""
    train = recovery_train_config()
    train.lr, train.batch_size = None, None  # type: ignore[assignment]
    train.augment.crop = "none"
    return train


def qat_train_config() -> TrainConfig:
    """QAT defaults: a few epochs at a small LR, so the calibrated ranges stay valid."""
    return TrainConfig(epochs=2, lr=2e-5, min_lr=1e-7, warmup_epochs=0.0)


@dataclass
class SourceData:
    """The data a stage that starts from an artifact uses (default: the artifact's own)."""

    data: str | None = None
    data_dir: str | None = None
    download: bool = False
    val_split: float = 0.1
    train_subset: int = 0
    cache_dir: str | None = None
    stream: bool = False  # also when the artifact's own data was streamed
    workers: int = 0

    def validate(self) -> None:
        """Check every value, and make the paths absolute (the artifact records them)."""
        if self.data:
            check_data_spec(self.data)
        check_workers(self.workers)
        self.data = absolute_data_spec(self.data)
        self.data_dir, self.cache_dir = absolute_path(self.data_dir), absolute_path(self.cache_dir)


def validate_recovery(cfg: PruneConfig | MergeConfig, stage: str) -> None:
    """What prune and merge check alike: distillation, data, the source's path, and a recovery in epochs."""
    cfg.kd.validate()
    cfg.source.validate()
    cfg.src = absolute_path(cfg.src)
    require(not cfg.train.time_budget, f"{stage}'s recovery runs in epochs, not to a time budget",
            "pass --finetune-epochs N (train.time_budget=0)")
    apply_recovery_epochs(cfg)


def apply_recovery_epochs(cfg: PruneConfig | MergeConfig) -> None:
    """The recovery's length is ``--finetune-epochs``: put it in the training config and check that config (again
    after prune derives what was left unset)."""
    if cfg.finetune_epochs:
        cfg.train.epochs = cfg.finetune_epochs
        cfg.train.validate()


@dataclass
class PruneConfig:
    """Everything ``prune`` needs; the CLI flags are generated from these fields."""

    src: str
    out: str = ""
    heads: float = 0.0
    mlp: float = 0.0
    criterion: str = "taylor"  # kept 7-13 points more than l1 right after the cut, and more after recovery (results.md)
    ranking: str = "uniform"
    iterative: int = 1
    finetune_epochs: int | None = None
    recover_until: float = 0.0
    reconstruct: bool = True
    score_batches: int = 4
    device: str = "auto"
    dry_run: bool = False
    force: bool = False
    resume: bool = False
    # hidden-state distillation on: the pruned blocks against the same unpruned blocks (docs/pruning.md, measured)
    kd: DistillOptions = field(default_factory=lambda: DistillOptions(kd_layers=1.0))
    source: SourceData = field(default_factory=SourceData)
    train: TrainConfig = field(default_factory=prune_train_config)

    def validate(self) -> None:
        for flag, ratio in (("--heads", self.heads), ("--mlp", self.mlp)):
            require(0 <= ratio < 1, f"{flag} {ratio:g} is not in [0, 1)", f"pass the share to remove, e.g. {flag} 0.5")
        require(self.criterion in PRUNE_CRITERIA, f"--criterion {self.criterion!r} is unknown",
                f"use one of {', '.join(PRUNE_CRITERIA)}")
        require(self.ranking in PRUNE_RANKINGS, f"--ranking {self.ranking!r} is unknown", "use --uniform or --global")
        require(self.iterative >= 1, f"--iterative {self.iterative} must be at least 1", "pass 1 for one-shot pruning")
        require(self.finetune_epochs is None or self.finetune_epochs >= 0,
                f"--finetune-epochs {self.finetune_epochs} must not be negative", "pass 0 for no recovery")
        require(0 <= self.recover_until < 100, f"--recover-until {self.recover_until:g} is not in [0, 100) points",
                "pass the points of validation top-1 the pruned model may stay under its parent, e.g. 1.0")
        require(not self.recover_until or self.finetune_epochs != 0, "--recover-until needs recovery epochs to stop in",
                "pass --finetune-epochs N as the most it may take (or leave it out: derived from the source)")
        require(self.score_batches >= 1, f"--score-batches {self.score_batches} must be at least 1", "pass e.g. 4")
        require(bool(self.out) or self.dry_run, "--out is required", "pass --out DIR (or --dry-run to only look)")
        validate_recovery(self, "prune")
        require(self.heads > 0 or self.mlp > 0, "prune was given nothing to remove (neither --heads nor --mlp)",
                "pass --heads 0.5 (the share of attention heads to remove), --mlp 0.25 (of MLP channels), or both")


@dataclass
class QatConfig:
    """Everything ``qat`` needs; the CLI flags are generated from these fields (``--epochs 0``: PTQ only)."""

    src: str
    out: str = ""
    calib_method: str = "max"
    calib_size: int = 512
    percentile: float = 99.99
    skip: str = "patch_embed*,head*"
    quantize_attention: bool = False
    sensitivity: bool = False
    sensitivity_threshold: float = 0.005
    device: str = "auto"
    force: bool = False
    resume: bool = False
    kd: DistillOptions = field(default_factory=DistillOptions)
    source: SourceData = field(default_factory=SourceData)
    train: TrainConfig = field(default_factory=qat_train_config)

    def validate(self) -> None:
        require(self.calib_method in CALIBRATION_METHODS, f"--calib-method {self.calib_method!r} is unknown",
                f"use one of {', '.join(CALIBRATION_METHODS)}")
        require(self.calib_size >= 1, f"--calib-size {self.calib_size} must be at least 1", "pass e.g. --calib-size 512")
        require(0 < self.percentile <= 100, f"--percentile {self.percentile} is not in (0, 100]", "pass e.g. 99.99")
        require(self.train.epochs >= 0, f"--epochs {self.train.epochs} must not be negative", "pass 0 for PTQ only")
        require(bool(self.out) or self.sensitivity, "--out is required", "pass --out DIR (or --sensitivity to only measure)")
        self.kd.validate()
        self.source.validate()
        self.src = absolute_path(self.src)
        if self.train.epochs:
            self.train.validate()


MERGE_SCHEDULES = ("constant", "decreasing")


@dataclass
class MergeConfig:
    """Everything ``merge`` needs; the CLI flags are generated from these fields (``--r`` or ``--keep``)."""

    src: str
    out: str = ""
    r: int = 0
    keep: float = 0.0
    schedule: str = "constant"
    prop_attn: bool = True
    finetune_epochs: int = 0
    device: str = "auto"
    force: bool = False
    resume: bool = False
    kd: DistillOptions = field(default_factory=DistillOptions)
    source: SourceData = field(default_factory=SourceData)
    train: TrainConfig = field(default_factory=recovery_train_config)

    def validate(self) -> None:
        require(self.r >= 0, f"--r {self.r} must not be negative", "pass the tokens to merge per block, e.g. --r 8")
        require(0 <= self.keep < 1, f"--keep {self.keep:g} is not in (0, 1)",
                "pass the share of tokens left after the last block, e.g. --keep 0.4")
        require(not (self.r and self.keep), "--r and --keep both set how many tokens merge", "pass one of them")
        require(self.schedule in MERGE_SCHEDULES, f"--schedule {self.schedule!r} is unknown",
                f"use one of {', '.join(MERGE_SCHEDULES)}")
        require(self.finetune_epochs >= 0, f"--finetune-epochs {self.finetune_epochs} must not be negative",
                "pass 0 for none (merging needs no training)")
        require(bool(self.out), "--out is required", "pass --out DIR")
        validate_recovery(self, "merge")
        require(not self.kd.kd_layers, "--kd-layers compares blocks token by token, and merging leaves fewer tokens",
                "leave --kd-layers out (the logits are distilled)")
        require(self.r > 0 or self.keep > 0, "merge was given nothing to merge (neither --r nor --keep)",
                "pass --r 8 (tokens merged in each block) or --keep 0.4 (share of tokens left at the last block)")


EXPORT_FORMATS = ("onnx", "openvino", "tensorrt", "triton")
EXPORT_PRECISIONS = ("auto", "fp32", "fp16", "int8")
# The graph forms: ONNX Runtime's fused contrib ops, or standard ONNX (Q/DQ for INT8) that TensorRT and OpenVINO take
EXPORT_TARGETS = ("ort", "standard")
RENAMED_TARGETS = {"tensorrt": "standard"}  # the old names, accepted until the next release with a line saying so
EXPORT_INPUTS = ("float", "uint8")
TRITON_PLATFORMS = ("onnxruntime", "tensorrt", "openvino")
TRITON_INSTANCE_KINDS = ("auto", "cpu", "gpu")


@dataclass
class ExportConfig:
    """Everything ``export`` needs; the CLI flags are generated from these fields."""

    src: str
    out: str
    format: str = "onnx"
    precision: str = "auto"
    target: str = "auto"
    input: str = "float"
    opset: int = 17
    simplify: bool = False
    verify_data: str | None = None
    verify_size: int = 256
    data_dir: str | None = None
    cache_dir: str | None = None
    batch: str = "1,8,32"
    workspace_gb: float = 4.0
    timing_cache: str | None = None
    model_name: str = ""
    max_batch_size: int = 32
    dynamic_batching: bool = True
    max_queue_delay_us: int = 100
    instances: int = 1
    instance_kind: str = "auto"
    triton_platform: str = "onnxruntime"
    force: bool = False
    quiet: bool = False

    def validate(self) -> None:
        require(self.format in EXPORT_FORMATS, f"--format {self.format!r} is unknown",
                f"use one of {', '.join(EXPORT_FORMATS)}")
        require(self.precision in EXPORT_PRECISIONS, f"--precision {self.precision!r} is unknown",
                f"use one of {', '.join(EXPORT_PRECISIONS)}")
        if self.target in RENAMED_TARGETS:
            print(f"note: --target {self.target} is now --target {RENAMED_TARGETS[self.target]} (the standard ONNX graph "
                  "TensorRT and OpenVINO take); the old name goes in the next release", file=sys.stderr)
            self.target = RENAMED_TARGETS[self.target]
        require(self.target in ("auto", *EXPORT_TARGETS), f"--target {self.target!r} is unknown",
                "use ort (ONNX Runtime's fused graph) or standard (TensorRT, OpenVINO)")
        require(self.input in EXPORT_INPUTS, f"--input {self.input!r} is unknown", "use float or uint8")
        require(17 <= self.opset <= 21, f"--opset {self.opset} is not supported",
                "use 17 to 21 (LayerNormalization needs 17)")
        require(self.verify_size >= 1, f"--verify-size {self.verify_size} must be at least 1", "pass e.g. 256")
        require(self.workspace_gb > 0, f"--workspace-gb {self.workspace_gb} must be positive", "pass e.g. 4")
        require(self.max_batch_size >= 1, f"--max-batch-size {self.max_batch_size} must be at least 1", "pass e.g. 32")
        require(self.instances >= 1, f"--instances {self.instances} must be at least 1", "pass e.g. 1")
        require(self.instance_kind in TRITON_INSTANCE_KINDS, f"--instance-kind {self.instance_kind!r} is unknown",
                "use auto, cpu or gpu")
        require(self.triton_platform in TRITON_PLATFORMS, f"--triton-platform {self.triton_platform!r} is unknown",
                "use onnxruntime, tensorrt or openvino")
        require(self.max_queue_delay_us >= 0, "--max-queue-delay-us must not be negative", "pass e.g. 100")
        parse_batch_profile(self.batch)
        if self.verify_data:
            check_data_spec(self.verify_data, "--verify-data")

    def resolved_target(self) -> str:
        """``auto``: the standard graph for TensorRT and OpenVINO (engines, IR, Triton's tensorrt and openvino
        platforms), ONNX Runtime's fused one otherwise."""
        if self.target != "auto":
            return self.target
        return "standard" if self.runtime_family() in ("tensorrt", "openvino") else "ort"

    def runtime_family(self) -> str:
        """What will run the export: ``tensorrt``, ``openvino`` or ``onnxruntime``."""
        if self.format == "triton":
            return self.triton_platform
        return self.format if self.format in ("tensorrt", "openvino") else "onnxruntime"


def parse_batch_profile(text: str) -> tuple[int, int, int]:
    """``--batch min,opt,max`` (or one value for all three) as three ints with 1 <= min <= opt <= max."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) == 1:
        values *= 3
    require(len(values) == 3 and 1 <= values[0] <= values[1] <= values[2],
            f"--batch {text!r} is not min,opt,max with 1 <= min <= opt <= max", "pass e.g. --batch 1,8,32")
    return values[0], values[1], values[2]


BENCH_BACKENDS = ("torch", "torch-bf16", "torch-compile", "torch-cudagraphs", "ort-cpu", "ort-cuda", "ort-trt", "openvino",
                  "openvino-fp32", "tensorrt", "triton")


@dataclass
class BenchConfig:
    """Everything ``bench`` needs; the CLI flags are generated from these fields."""

    srcs: list[str]
    out: str
    backends: str = "auto"
    batch: str = "1,8,32"
    data: str | None = None
    data_dir: str | None = None
    cache_dir: str | None = None
    stream: bool = False
    eval_size: int = 0
    baseline: str | None = None
    threads: int = 0
    warmup: int = 3
    min_iters: int = 10
    max_seconds: float = 3.0
    rounds: int = 5
    concurrency: str = "1,4,16"
    requests: int = 200
    in_process: bool = False
    force: bool = False
    quiet: bool = False

    def validate(self) -> None:
        require(bool(self.srcs), "bench needs at least one model", "pass artifact or export directories")
        if self.data:
            check_data_spec(self.data)
        for name in self.backend_names():
            require(name in BENCH_BACKENDS, f"--backends {name!r} is unknown", f"use auto or some of {', '.join(BENCH_BACKENDS)}")
        self.batch_sizes()
        self.concurrency_levels()
        require(self.eval_size >= 0, f"--eval-size {self.eval_size} must not be negative", "pass 0 for the whole test split")
        require(self.threads >= 0, f"--threads {self.threads} must not be negative", "pass 0 for the runtime's default")
        require(self.warmup >= 0 and self.min_iters >= 1 and self.max_seconds > 0 and self.requests >= 1,
                "--warmup, --min-iters, --max-seconds and --requests must be positive", "pass e.g. 3, 10, 3 and 200")
        require(self.rounds >= 1, f"--rounds {self.rounds} must be at least 1", "pass e.g. 5")

    def backend_names(self) -> list[str]:
        return list(BENCH_BACKENDS) if self.backends == "auto" else [b.strip() for b in self.backends.split(",") if b.strip()]

    def batch_sizes(self) -> list[int]:
        return _positive_ints(self.batch, "--batch", "1,8,32")

    def concurrency_levels(self) -> list[int]:
        return _positive_ints(self.concurrency, "--concurrency", "1,4,16")


def _positive_ints(text: str, flag: str, example: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    require(bool(values) and all(v >= 1 for v in values), f"{flag} {text!r} is not a list of positive integers",
            f"pass e.g. {flag} {example}")
    return values


@dataclass
class ServeConfig:
    """``serve``: one exported model (an artifact is exported first, into the cache) behind a local Triton server."""

    src: str
    model_name: str = ""
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    max_batch_size: int = 0
    max_queue_delay_us: int = 100
    threads: int = 0
    cache_dir: str | None = None
    triton_log: bool = False

    def validate(self) -> None:
        for flag, port in (("--http-port", self.http_port), ("--grpc-port", self.grpc_port),
                           ("--metrics-port", self.metrics_port)):
            require(0 <= port < 65536, f"{flag} {port} is not a port", "pass e.g. 8000 (0: any free port)")
        require(self.max_batch_size >= 0, f"--max-batch-size {self.max_batch_size} must not be negative",
                "pass e.g. 32, or 0 for the repository's own (else 32)")
