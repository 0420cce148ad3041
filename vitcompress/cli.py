"""The ``vitcompress`` command: parse, call the library function, print. No logic lives here."""

from __future__ import annotations

import argparse
import json
import sys
import traceback

from vitcompress import __version__
from vitcompress.config import BENCH_BACKENDS
from vitcompress.datasets.torchvision_catalog import TORCHVISION_SETS
from vitcompress.errors import UserError, is_out_of_memory, storage_error

HELP = {
    "model": "timm model name, e.g. vit_tiny_patch16_224, deit_small_patch16_224, beitv2_base_patch16_224",
    "data": f"dataset: a torchvision one ({', '.join(TORCHVISION_SETS)}) | folder:PATH (ImageFolder tree or "
            ".zip/.tar/.tar.gz/.tar.xz of one) | shapes[:N] (generated, no network; N training images per class, default 500)",
    "out": "output artifact directory",
    "img_size": "input resolution (default: the model's own, e.g. 224)",
    "patch_size": "patch size passed to timm (default: the model's own)",
    "model_kwargs": "extra timm kwargs, e.g. depth=2,embed_dim=64,num_heads=2 (default: none, the model's own)",
    "drop_path": "stochastic depth rate",
    "pretrained": "start from the model's pretrained weights on the Hugging Face hub (needs internet or a cache)",
    "init_checkpoint": "start from local weights (.safetensors, .pth, or an artifact directory; never unpickles code); "
                       "the classifier is resized to the dataset's classes (default: none: random init, or --pretrained)",
    "data_dir": "where a torchvision dataset lives or is downloaded to (default: CACHE_DIR/NAME)",
    "download": "allow torchvision to download the dataset",
    "val_split": "share of train held out for validation when the data has no val/ split (0: none)",
    "train_subset": "train on a class-balanced, seeded sample of N training images (0: all of them), for quick runs; a folder "
                    "with its own val/ decodes only the sample",
    "cache_dir": "cache for extracted archives and decoded images (default: $VITCOMPRESS_CACHE or ~/.cache/vitcompress)",
    "stream": "decode image files in worker processes as batches are drawn, every epoch, instead of once into the "
              "cache: for data too large to cache (ImageNet-scale); prune, qat and export verification stream too "
              "when the source artifact's data was streamed",
    "workers": "decoding processes with --stream (0: one per CPU core, shared by the processes on this machine)",
    "device": "auto | cpu | cuda | cuda:N (under torchrun each rank uses cuda:LOCAL_RANK)",
    "backend": "runtime (default: torch for artifacts, ort-cpu for ONNX, openvino for OpenVINO IR, tensorrt for engines)",
    "force": "replace an existing output directory",
    "resume": "continue an interrupted run from OUT.tmp-run/last.ckpt",
    "epochs": "training epochs (with --time-budget: the most it may run)",
    "time_budget": "train for this many seconds of wall time (steps, validation, checkpoints) instead of exactly "
                   "--epochs: whole epochs, re-planned after each from their measured time, the cosine schedule "
                   "ending with the last (0: off)",
    "checkpoint_interval": "write the resumable last.ckpt (weights + optimizer state) at most every this many seconds, "
                           "and after the last epoch; 0: after every epoch. For many short epochs on a GPU, where "
                           "each checkpoint costs a noticeable share of an epoch",
    "batch_size": "images per step on each process",
    "lr": "peak learning rate (AdamW)",
    "min_lr": "learning rate at the end of the cosine decay",
    "weight_decay": "AdamW weight decay (not applied to norms, biases, tokens)",
    "warmup_epochs": "linear warmup length in epochs",
    "layer_decay": "layer-wise LR decay factor (1: off; 0.65-0.75 is usual for fine-tuning)",
    "freeze_blocks": "freeze the patch embedding and the first N transformer blocks (0: train every block)",
    "head_only": "train only the classifier (linear probe)",
    "accum_steps": "gradient accumulation steps per optimizer step",
    "amp": "mixed precision: auto (bf16 on GPUs that have it, off on CPU) | none | bf16 | fp16 (CUDA only)",
    "compile": "torch.compile the training step's model (faster GPU steps after a one-off compile of a minute or so)",
    "compile_mode": "torch.compile mode with --compile: default | reduce-overhead (CUDA graphs: for small, launch-bound "
                    "GPU steps) | max-autotune (also tunes kernels: a longer compile) | max-autotune-no-cudagraphs",
    "clip_grad": "clip the gradient norm to this value (0: off)",
    "ema": "keep an exponential moving average of the weights and evaluate/save it",
    "ema_decay": "EMA decay per optimizer step",
    "label_smoothing": "label smoothing",
    "mixup": "MixUp alpha (0: off)",
    "cutmix": "CutMix alpha (0: off)",
    "mixup_prob": "share of batches mixed when --mixup or --cutmix is on (with both on, half of those each)",
    "patience": "stop after this many epochs without validation improvement (0: off)",
    "crop": "random crop: pad (pad-and-crop, CIFAR style) | rrc (random-resized crop) | none",
    "crop_padding": "padding for --crop pad, as a share of the image side (0.125 = 4px at 32px)",
    "rrc_min_scale": "smallest area share for --crop rrc",
    "hflip": "random horizontal flips",
    "color_jitter": "brightness/contrast/saturation jitter strength (0: off)",
    "auto_augment": "none | randaugment | autoaugment (ImageNet policy) | autoaugment-cifar10 | autoaugment-svhn "
                    "(the policies searched on those datasets) | trivialaugment",
    "auto_augment_group": "images that share one --auto-augment draw (smaller: more varied batches, "
                          "more per-call overhead on GPUs)",
    "random_erase": "share of images in which one random box is erased (timm's --reprob; 0: off)",
    "random_erase_mode": "what fills an erased box: pixel (per-pixel Gaussian noise, timm's --remode default) | "
                         "const (zero after normalisation: the dataset's mean colour)",
    "seed": "random seed (data order, augmentation, init, the validation split)",
    "quiet": "no progress bars or per-epoch lines (for logs and CI; bars are drawn only on a terminal anyway)",
    "quiet_no_training": "no progress bars (for logs and CI; they are drawn only on a terminal anyway)",
    "src": "source artifact directory",
    "heads": "share of attention heads to remove, in [0, 1) (0: keep every head; pass --heads, --mlp or both)",
    "mlp": "share of MLP hidden channels to remove, in [0, 1) (0: keep every channel)",
    "criterion": "importance: l1 | l2 (weight magnitude) | taylor (first order, from data) | "
                 "fisher (per-sample squared gate gradients, from data) | "
                 "attention (per-head output norm on data) | random (control)",
    "ranking": "uniform: the same share from every block; global: rank across blocks (see --global/--uniform)",
    "iterative": "prune in K steps towards the ratio, recovering after each",
    "finetune_epochs": "recovery fine-tuning epochs in total (0: none; with --recover-until: the most it may take; "
                       "default: a tenth of the source's training epochs, or 5 when its training is not recorded)",
    "recover_until": "stop the recovery once validation top-1 is within this many points of the unpruned model's "
                     "(0: run every --finetune-epochs)",
    "distill": "recovery distillation from the unpruned model: soft (KL, temperature) | hard (teacher top-1) | none",
    "kd_temperature": "softmax temperature of soft distillation",
    "kd_alpha": "weight of the distillation loss ((1 - alpha) for the labels)",
    "kd_layers": "weight of hidden-state distillation: each block's output against the teacher's same block "
                 "(MSE over the teacher's mean square; 0: logits only)",
    "reconstruct": "after the cut, refit each block's output projections (attention proj and MLP fc2) by least "
                   "squares to the unpruned model's residual stream on --score-batches batches: no training",
    "score_batches": "batches of training data for the data-driven criteria (taylor, fisher, attention) and "
                     "--reconstruct",
    "dry_run": "print which heads would go and the params/MACs left; write nothing",
    "r": "tokens merged in each block (ToMe's r; pass --r or --keep)",
    "keep": "share of patch tokens left after the last block, in (0, 1), turned into an r per block (0: use --r)",
    "schedule": "constant (the same r in every block) | decreasing (ToMe's: 1.5 r down to 0.5 r, merging more "
                "while tokens are many)",
    "prop_attn": "proportional attention: a merged token's key counts as the patches it holds (log-size bias)",
    "calib_method": "activation range calibration: max | entropy | percentile | mse (modelopt calibrators)",
    "calib_size": "training images used for calibration",
    "percentile": "percentile kept by --calib-method percentile",
    "skip": "comma-separated module-name patterns left in full precision (e.g. patch_embed*,head*,blocks.0.mlp*)",
    "quantize_attention": "also quantize Q, K and V where they enter the attention matmuls (Q·Kᵀ, softmax·V) to INT8 per tensor",
    "sensitivity": "score each layer group quantized alone, print the ranking and a --skip suggestion; write nothing",
    "format": "onnx (a verified .onnx file) | openvino (OpenVINO IR: model.xml + model.bin, for Intel CPUs) | tensorrt "
              "(a serialized engine; needs TensorRT and a GPU) | triton (a Triton Inference Server model repository)",
    "precision": "auto (int8 for a quantized artifact, else fp32) | fp32 | fp16 | int8",
    "target": "the graph's form: auto | ort (ONNX Runtime's fused kernels, contrib ops) | standard (standard ONNX, Q/DQ "
              "for INT8, FP16 elsewhere: what TensorRT and OpenVINO take; `tensorrt` is its old name); auto picks standard "
              "for TensorRT and OpenVINO, ort otherwise",
    "input": "float (normalised N x 3 x H x W) | uint8 (raw N x H x W x 3 pixels; the graph normalises)",
    "opset": "ONNX opset (17 or newer)",
    "simplify": "simplify the graph with onnxslim",
    "verify_data": "dataset whose test images verify the export (default: the artifact's own data when it is here, "
                   "else generated pixels)",
    "verify_size": "images used to verify the export",
    "batch": "TensorRT optimisation profile min,opt,max batch",
    "workspace_gb": "TensorRT builder workspace limit in GiB",
    "timing_cache": "TensorRT timing cache file, reused and updated across builds "
                    "(default: tensorrt-timing.cache in the cache dir)",
    "model_name": "Triton model name (default: the artifact directory's name)",
    "max_batch_size": "Triton max_batch_size",
    "dynamic_batching": "let Triton batch concurrent requests",
    "max_queue_delay_us": "Triton dynamic batching: longest wait for a fuller batch, in microseconds",
    "instances": "Triton model instances",
    "instance_kind": "Triton instance kind: auto | cpu | gpu",
    "triton_platform": "what the Triton repository serves: onnxruntime (model.onnx) | tensorrt (model.plan) | "
                       "openvino (model.xml + model.bin, Triton's OpenVINO backend)",
    "srcs": "models to measure: artifacts, ONNX exports, TensorRT exports, Triton repositories from `vitcompress export`",
    "backends": f"auto (every one that applies) or a comma list of {', '.join(BENCH_BACKENDS)}",
    "eval_size": "test images for accuracy, a seeded sample (0: the whole test split of --data)",
    "baseline": "the FP32 reference among the SRCs (default: the first FP32 one)",
    "threads": "intra-op threads for CPU runtimes (0: the runtime's default, usually one per core)",
    "warmup": "untimed calls before timing each variant's latency distribution (p50/p90/p99)",
    "min_iters": "timed calls at least, per batch size, for the latency distribution",
    "max_seconds": "no new timed calls after this many seconds, per batch size, for the latency distribution",
    "rounds": "interleaved timing rounds behind each speed-up against the baseline (docs/bench.md: the timing method)",
    "concurrency": "parallel clients for the triton backend",
    "requests": "requests per concurrency level for the triton backend (also bounded to 60 s)",
    "in_process": "measure every variant in this process instead of a fresh one each (for a debugger; peak memory "
                  "then includes what earlier variants left behind)",
    "http_port": "HTTP port (0: any free port)",
    "grpc_port": "gRPC port (0: any free port)",
    "metrics_port": "metrics port (0: any free port)",
    "sensitivity_threshold": "top-1 drop (as a fraction) above which --sensitivity suggests skipping a group",
}

TEACHER_HELP = {
    "teacher": "teacher to distil from (DeiT-style): an artifact directory (e.g. a CNN trained by finetune --model "
               "resnet18) or a timm model name with --teacher-checkpoint (default: none, train on the labels only)",
    "teacher_checkpoint": "weights of a --teacher given as a timm name (.safetensors or .pth, the data's classes; "
                          "default: none, for an artifact teacher)",
    "distill": "with --teacher: soft (KL at --kd-temperature; measured best here) | hard (the teacher's top-1, "
               "DeiT's choice); a deit_*_distilled_* student learns it through its distillation token",
    "kd_alpha": "weight of the teacher's loss ((1 - alpha) for the labels)",
}


class _OneLineErrors(argparse.ArgumentParser):
    """Usage mistakes end like every other user error: one line naming the problem and the fix, exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {message}; see `{self.prog} --help`", file=sys.stderr)
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    from vitcompress.cliargs import HelpFormatter, add_dataclass_args
    from vitcompress.config import (
        AMP_CHOICES,
        AUTO_AUGMENT_CHOICES,
        CALIBRATION_METHODS,
        COMPILE_MODES,
        CROP_CHOICES,
        EXPORT_FORMATS,
        EXPORT_INPUTS,
        EXPORT_PRECISIONS,
        EXPORT_TARGETS,
        KD_CHOICES,
        MERGE_SCHEDULES,
        PREDICT_BATCH_SIZE,
        PRUNE_CRITERIA,
        PRUNE_RANKINGS,
        RANDOM_ERASE_MODES,
        RENAMED_TARGETS,
        TRITON_INSTANCE_KINDS,
        TRITON_PLATFORMS,
        BenchConfig,
        ExportConfig,
        FinetuneConfig,
        MergeConfig,
        PruneConfig,
        QatConfig,
        ServeConfig,
    )
    from vitcompress.recipe import STAGES

    fmt = HelpFormatter
    parser = _OneLineErrors(prog="vitcompress", formatter_class=fmt,
                                     description="Fine-tune, compress, export and benchmark Vision Transformers.")
    parser.add_argument("--version", action="version", version=f"vitcompress {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    # --debug also after the command; SUPPRESS keeps a subcommand from resetting the top-level flag
    common = _OneLineErrors(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("finetune", formatter_class=fmt, parents=[common],
                       help="train a timm ViT on a dataset; write an artifact",
                       description="Fine-tune (or train from scratch) a timm Vision Transformer, optionally taught by "
                                   "a teacher as DeiT trains (--teacher). A timm CNN (e.g. resnet18) trains too, to "
                                   "serve as a teacher. Run under torchrun for several GPUs or machines.")
    choices = {"amp": AMP_CHOICES, "compile_mode": COMPILE_MODES, "crop": CROP_CHOICES, "auto_augment": AUTO_AUGMENT_CHOICES,
               "random_erase_mode": RANDOM_ERASE_MODES}
    add_dataclass_args(p, FinetuneConfig, {**HELP, **TEACHER_HELP}, {**choices, "distill": KD_CHOICES},
                       required=("epochs",))

    p = sub.add_parser("prune", formatter_class=fmt, parents=[common],
                       help="remove attention heads (and MLP channels); recover by distillation; write an artifact",
                       description="Structured pruning of a ViT/DeiT/BEiT artifact: whole heads go, the model gets "
                                   "physically smaller, and fine-tuning with the unpruned model as teacher recovers "
                                   "accuracy. Data defaults to the artifact's own.")
    prune_choices = {**choices, "criterion": PRUNE_CRITERIA, "ranking": PRUNE_RANKINGS, "distill": KD_CHOICES}
    source_help = {**HELP, "data": HELP["data"] + " (default: the artifact's own)"}
    derived_help = {"lr": HELP["lr"] + " (default: the source's, halved if it trained from scratch, scaled by the "
                          "batch-size ratio)",
                    "batch_size": HELP["batch_size"] + " (default: the source's)"}
    add_dataclass_args(p, PruneConfig, {**source_help, **derived_help,
                                        "out": "output artifact directory (required unless --dry-run)"},
                       prune_choices, positional=("src",),
                       skip=("epochs", "time_budget"))
    p.add_argument("--global", dest="ranking", action="store_const", const="global", default=argparse.SUPPRESS,
                   help="same as --ranking global")
    p.add_argument("--uniform", dest="ranking", action="store_const", const="uniform", default=argparse.SUPPRESS,
                   help="same as --ranking uniform (the default)")

    p = sub.add_parser("merge", formatter_class=fmt, parents=[common],
                       help="token merging (ToMe): fewer tokens in every block, no training needed; write an artifact",
                       description="Merge similar tokens inside every block of a ViT/DeiT artifact (finetuned, pruned "
                                   "or INT8): bipartite soft matching on the attention keys, size-weighted averages, "
                                   "proportional attention. Training-free; --finetune-epochs recovers with the unmerged "
                                   "model as teacher. Exports to ONNX and OpenVINO like any artifact.")
    add_dataclass_args(p, MergeConfig, {**source_help, "out": "output artifact directory",
                                        "finetune_epochs": "recovery fine-tuning epochs (0: none; merging needs no training)",
                                        "distill": "recovery distillation from the unmerged model: soft (KL, temperature) "
                                                   "| hard (teacher top-1) | none"},
                       {**choices, "schedule": MERGE_SCHEDULES, "distill": KD_CHOICES}, positional=("src",),
                       required=("out",), skip=("epochs", "time_budget"))

    p = sub.add_parser("qat", formatter_class=fmt, parents=[common],
                       help="INT8 quantization: calibrate (PTQ), then quantization-aware training; write an artifact",
                       description="Quantize an artifact (finetuned or pruned) to INT8 with nvidia-modelopt: "
                                   "per-channel INT8 weights, per-tensor INT8 activations on the Linear layers. "
                                   "--epochs 0 is post-training quantization alone. Data defaults to the artifact's own.")
    add_dataclass_args(p, QatConfig, {**source_help, "epochs": "quantization-aware training epochs (0: PTQ only)",
                                      "out": "output artifact directory (required unless --sensitivity)"},
                       {**choices, "distill": KD_CHOICES, "calib_method": CALIBRATION_METHODS}, positional=("src",))

    p = sub.add_parser("export", formatter_class=fmt, parents=[common],
                       help="ONNX (FP32/FP16/INT8), TensorRT engine or Triton model repository; verified before it is written",
                       description="Export any artifact (finetuned, pruned or quantized). Every export is checked "
                                   "with ONNX Runtime against PyTorch on real images before it is published.")
    export_choices = {"format": EXPORT_FORMATS, "precision": EXPORT_PRECISIONS,
                      "target": ("auto", *EXPORT_TARGETS, *RENAMED_TARGETS), "input": EXPORT_INPUTS,
                      "instance_kind": TRITON_INSTANCE_KINDS, "triton_platform": TRITON_PLATFORMS}
    add_dataclass_args(p, ExportConfig, {**HELP, "out": "output export directory (a Triton model repository for "
                                                       "--format triton)", "quiet": HELP["quiet_no_training"]},
                       export_choices, positional=("src",))

    p = sub.add_parser("bench", formatter_class=fmt, parents=[common],
                       help="latency, throughput, memory and accuracy of every variant, side by side against FP32",
                       description="Measure artifacts and exports on every runtime that can run them here, in one run "
                                   "on the same images. Writes results.json, results.csv, report.md and plots.")
    add_dataclass_args(p, BenchConfig, {**HELP, "data": HELP["data"] + " (for accuracy; none: speed only)",
                                        "batch": "batch sizes to time",
                                        "out": "directory for results.json, results.csv, report.md and the plots",
                                        "quiet": HELP["quiet_no_training"]},
                       positional=("srcs",))

    p = sub.add_parser("serve", formatter_class=fmt, parents=[common],
                       help="serve a model with a local Triton Inference Server (HTTP and gRPC)",
                       description="Start Triton Inference Server on 127.0.0.1 with the model (ONNX through ONNX "
                                   "Runtime, or a TensorRT engine), dynamic batching on, until Ctrl-C. An artifact is "
                                   "exported first (verified ONNX, into the cache; reused while the artifact is unchanged).")
    add_dataclass_args(p, ServeConfig, {**HELP, "src": "an artifact, an export directory (onnx or tensorrt format) or a "
                                                       "Triton repository",
                                        "cache_dir": "where an artifact's export goes (default: $VITCOMPRESS_CACHE or "
                                                     "~/.cache/vitcompress, under exports/)",
                                        "model_name": "the model's name on the server (default: a Triton repository's "
                                                      "own model name, else the directory's)",
                                        "max_batch_size": "largest batch the dynamic batcher forms (0: a Triton "
                                                          "repository export's own max_batch_size, else 32)",
                                        "triton_log": "print Triton's own log (startup tables; on a machine without "
                                                      "a GPU also its CUDA/NVML warnings, which are harmless)"},
                       positional=("src",))

    p = sub.add_parser("pipeline", formatter_class=fmt, parents=[common],
                       help="finetune -> prune -> merge -> qat -> export -> bench from one YAML recipe; re-run to resume",
                       description="Run every stage from a recipe (default: the built-in one: no network, about 8 "
                                   "minutes on a 2-core CPU). Complete stages made from the same recipe section are "
                                   "skipped on a re-run, and an interrupted finetune, prune or qat resumes.")
    p.add_argument("recipe", nargs="?", default=None, metavar="RECIPE",
                   help="YAML recipe (see recipes/; default: the built-in one, recipes/default.yaml)")
    p.add_argument("--out", required=True, help="directory for every artifact, export and the bench report")
    p.add_argument("--from", dest="from_stage", default=None, choices=STAGES,
                   help="first stage to run (default: the first, finetune)")
    p.add_argument("--until", dest="until_stage", default=None, choices=STAGES,
                   help="last stage to run (default: the last, bench)")
    p.add_argument("--quiet", action="store_true", help=HELP["quiet"])

    p = sub.add_parser("predict", formatter_class=fmt, parents=[common],
                       help="classify image files with an artifact, ONNX export or TensorRT engine",
                       description="Print the top-k classes of each image, with the preprocessing recorded with the model.")
    p.add_argument("src", metavar="SRC", help="artifact, export directory (ONNX, OpenVINO IR or TensorRT) or Triton repository")
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files (JPEG, PNG, any mode PIL opens), or folders: every image under them")
    p.add_argument("--top-k", type=int, default=5, help="classes to show per image (at least 1; all of them when the "
                                                         "model has fewer)")
    p.add_argument("--batch-size", type=int, default=PREDICT_BATCH_SIZE, help="images per call of the model")
    p.add_argument("--backend", default=None, choices=BENCH_BACKENDS, help=HELP["backend"])
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("eval", formatter_class=fmt, parents=[common],
                       help="score an artifact or an export on a dataset's test split",
                       description="Top-1/top-5 accuracy, macro precision/recall/F1 and per-class accuracy of a model "
                                   "on the test split of --data, with the preprocessing recorded with it: an artifact "
                                   "in PyTorch, an export in the runtime it is deployed with (or --backend).")
    p.add_argument("src", metavar="SRC", help="artifact, export directory (ONNX, OpenVINO IR or TensorRT) or Triton repository")
    p.add_argument("--data", required=True, help=HELP["data"])
    for name in ("data_dir", "cache_dir"):
        p.add_argument("--" + name.replace("_", "-"), dest=name, default=None, help=HELP[name])
    p.add_argument("--download", action="store_true", help=HELP["download"])
    p.add_argument("--stream", action="store_true", help=HELP["stream"])
    p.add_argument("--batch-size", type=int, default=256, help="images per batch")
    p.add_argument("--device", default="auto", help=HELP["device"] + " (artifacts)")
    p.add_argument("--backend", default=None, choices=BENCH_BACKENDS, help=HELP["backend"])
    p.add_argument("--json", action="store_true", help="print one JSON object to stdout")
    p.add_argument("--quiet", action="store_true", help=HELP["quiet_no_training"])

    p = sub.add_parser("info", formatter_class=fmt, parents=[common],
                       help="describe an artifact, an export or a pipeline's output directory",
                       description="What a directory holds: an artifact's model, classes, heads per block, params, "
                                   "MACs, metrics and lineage; an export's format, precision, input contract, source "
                                   "and verification; a pipeline's steps, their status and top-1.")
    p.add_argument("src", metavar="SRC", help="artifact, export or pipeline output directory")
    p.add_argument("--json", action="store_true", help="print the artifact's metadata (an export's manifest) as JSON")
    return parser


def _run(args: argparse.Namespace) -> None:
    say = print if _is_rank0() else _silent  # under torchrun every process runs the command; rank 0 reports
    if args.command == "finetune":
        from vitcompress.cliargs import dataclass_from_args
        from vitcompress.compress.finetune import finetune
        from vitcompress.config import FinetuneConfig
        from vitcompress.report import stage_summary

        result = finetune(dataclass_from_args(FinetuneConfig, args))
        say(stage_summary(result.path, result.meta))
    elif args.command == "prune":
        from vitcompress.cliargs import dataclass_from_args
        from vitcompress.compress.prune import PrunePreview, prune
        from vitcompress.config import PruneConfig
        from vitcompress.report import prune_preview, prune_summary

        result = prune(dataclass_from_args(PruneConfig, args))
        say(prune_preview(result) if isinstance(result, PrunePreview) else prune_summary(result.path, result.meta))
    elif args.command == "merge":
        from vitcompress.cliargs import dataclass_from_args
        from vitcompress.compress.merge import merge
        from vitcompress.config import MergeConfig
        from vitcompress.report import merge_summary

        result = merge(dataclass_from_args(MergeConfig, args))
        say(merge_summary(result.path, result.meta))
    elif args.command == "qat":
        from vitcompress.cliargs import dataclass_from_args
        from vitcompress.compress.qat import qat
        from vitcompress.config import QatConfig
        from vitcompress.report import qat_summary, sensitivity_table

        result = qat(dataclass_from_args(QatConfig, args))
        say(sensitivity_table(result) if isinstance(result, dict) else qat_summary(result.path, result.meta))
    elif args.command == "export":
        from vitcompress.cliargs import dataclass_from_args
        from vitcompress.config import ExportConfig
        from vitcompress.export.exporter import export
        from vitcompress.report import export_summary

        result = export(dataclass_from_args(ExportConfig, args))
        say(export_summary(result.path, result.manifest))
    elif args.command == "bench":
        from vitcompress.bench import bench
        from vitcompress.bench_report import console_summary
        from vitcompress.cliargs import dataclass_from_args
        from vitcompress.config import BenchConfig

        result = bench(dataclass_from_args(BenchConfig, args))
        say(f"\n{console_summary(result.results)}\n\nreport: {result.path / 'report.md'}")
    elif args.command == "serve":
        from vitcompress.cliargs import dataclass_from_args
        from vitcompress.config import ServeConfig
        from vitcompress.serving import serve

        serve(dataclass_from_args(ServeConfig, args))
    elif args.command == "pipeline":
        from vitcompress.bench_report import console_summary
        from vitcompress.pipeline import pipeline

        result = pipeline(args.recipe, args.out, args.from_stage, args.until_stage, quiet=args.quiet)
        table = f"\n{console_summary(result.bench.results)}\n\nreport: {result.bench.path / 'report.md'}" if result.bench else ""
        say(f"{table}\n\npipeline: {result.path} (ran: {', '.join(result.ran) or 'nothing'})")
    elif args.command == "predict":
        from vitcompress.predict import predict
        from vitcompress.report import predictions_table

        records = predict(args.src, args.images, args.top_k, args.backend, args.batch_size)
        say(json.dumps({"model": args.src, "predictions": records}) if args.json else predictions_table(records))
    elif args.command == "eval":
        from vitcompress.evaluate import evaluate_artifact
        from vitcompress.report import metrics_table, per_class_table

        report = evaluate_artifact(args.src, args.data, args.data_dir, args.download, args.cache_dir,
                                   args.batch_size, args.device, quiet=args.quiet or args.json, backend=args.backend,
                                   stream=args.stream)
        say(json.dumps(report) if args.json else f"{metrics_table(report)}\n\n{per_class_table(report)}")
    elif args.command == "info":
        from vitcompress.report import describe, info_json

        say(json.dumps(info_json(args.src), indent=2) if args.json else describe(args.src))


def _after_interrupt(command: str) -> str:
    """What a user can do after Ctrl-C (the commands that do not train publish their output by one rename)."""
    if command in ("finetune", "prune", "merge", "qat"):
        return "continue with the same command and --resume"
    if command == "pipeline":
        return "run the same command again: finished stages are skipped, an interrupted training stage resumes"
    return "nothing was written (outputs appear whole or not at all)"


def _silent(*_: object) -> None:
    pass


def _is_rank0() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vitcompress`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        _run(args)
    except UserError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    except OSError as exc:
        error = storage_error(exc)
        if error is None or args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted; {_after_interrupt(args.command)}", file=sys.stderr)
        return 130
    except Exception as exc:  # out of memory is the one runtime failure a user fixes by changing flags
        if not is_out_of_memory(exc) or args.debug:
            raise
        print("error: out of memory; lower --batch-size (keep the effective batch with --accum-steps) "
              "or use --amp bf16", file=sys.stderr)
        return 2
    return 0
