"""DeiT-style training with a teacher (``finetune --teacher``) on CIFAR-10, in one run: a CNN teacher, the student
alone, and the same student (same epochs, seed and data) taught by the teacher.

Teacher: a timm CNN trained here by ``vitcompress finetune`` (default resnet18 at 32 px). Student: a
deit_tiny_distilled-shaped ViT at 32 px (4 px patches, 192 wide, 3 heads, ``--depth`` blocks), whose distillation
token learns from the teacher (``--distill``, hard by default, as DeiT) and class token from the labels.

Artifacts already in ``--work`` (from an earlier run) are reused; each one's record (its recipe, training time and
score) goes into the results. Delete ``--work`` to train them again.

Usage:  python benchmarks/teacher_distill.py [--data PATH] [--teacher-epochs 8] [--student-epochs 5] [--train-subset N]
Writes: benchmarks/results/teacher_distill_cpu[_soft].json (top-1 of all three, training times, hardware, commands).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from tabulate import tabulate

from vitcompress.bench import cpu_flags, cpu_name
from vitcompress.cli import main as vitcompress

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "cifar10-jpeg.tar.xz"
COMMON = ["--img-size", "32", "--batch-size", "128", "--amp", "bf16", "--quiet", "--seed", "0"]


def run(args: list[str]) -> None:
    print("$ vitcompress " + " ".join(args), flush=True)
    if vitcompress(args) != 0:
        raise SystemExit(f"vitcompress {args[0]} failed")


def recorded_run(artifact: Path) -> dict:
    """The command an artifact was made with and how long it trained, from its own record."""
    meta = json.loads((artifact / "vitcompress.json").read_text())
    recipe, metrics = meta["recipe"], meta["metrics"]
    return {"model": meta["model"]["name"], "teacher": recipe.get("teacher"), "distill": recipe.get("kd"),
            "epochs": recipe["train"]["epochs"], "train_subset": recipe["train_subset"], "lr": recipe["train"]["lr"],
            "train_seconds": metrics["train_seconds"], "train_images_per_s": metrics["train_images_per_s"],
            "top1": metrics["top1"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--work", default="runs/teacher-bench")
    parser.add_argument("--teacher-model", default="resnet18")
    parser.add_argument("--teacher-epochs", type=int, default=8)
    parser.add_argument("--student-epochs", type=int, default=5)
    parser.add_argument("--depth", type=int, default=6, help="student blocks (deit_tiny has 12)")
    parser.add_argument("--train-subset", type=int, default=0, help="training images (0: all 45,000)")
    parser.add_argument("--distill", default="hard", choices=("hard", "soft"))
    args = parser.parse_args()
    work, data = Path(args.work), ["--data", f"folder:{args.data}", "--train-subset", str(args.train_subset)]
    teacher = work / "teacher"
    teacher_cmd = ["finetune", "--model", args.teacher_model, *COMMON, *data, "--lr", "2e-3", "--drop-path", "0",
                   "--epochs", str(args.teacher_epochs), "--out", str(teacher), "--force"]
    student = ["finetune", "--model", "deit_tiny_distilled_patch16_224", "--patch-size", "4", "--model-kwargs",
               f"depth={args.depth}", *COMMON, *data, "--lr", "1e-3", "--epochs", str(args.student_epochs), "--force"]
    commands = {"teacher": teacher_cmd,
                "student_alone": [*student, "--out", str(work / "student_alone")],
                "student_with_teacher": [*student, "--teacher", str(teacher), "--distill", args.distill,
                                         "--out", str(work / "student_with_teacher")]}
    runs = {}
    for name, cmd in commands.items():
        reused = (work / name / "vitcompress.json").is_file()  # made by an earlier run (same --work)
        if not reused:
            run(cmd)
        runs[name] = {**recorded_run(work / name), "reused": reused,
                      "command": None if reused else "vitcompress " + " ".join(cmd)}
    scores = {name: run_record["top1"] for name, run_record in runs.items()}
    gain = scores["student_with_teacher"] - scores["student_alone"]
    print(tabulate([(name, f"{100 * value:.2f}") for name, value in scores.items()], headers=("model", "top-1 %")))
    print(f"teacher's gain: {100 * gain:+.2f} points")
    record = {"benchmark": "teacher_distill", "date": time.strftime("%Y-%m-%d"),
              "command": "python " + " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
              "hardware": {"platform": platform.platform(), "processor": cpu_name(), "cpu_flags": cpu_flags(),
                           "cpu_count": os.cpu_count()},
              "top1": scores, "gain_points": round(100 * gain, 2), "runs": runs, "args": vars(args)}
    out = HERE / "results" / f"teacher_distill_cpu{'' if args.distill == 'hard' else '_' + args.distill}.json"
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
