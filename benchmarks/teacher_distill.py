"""DeiT-style training with a teacher (``finetune --teacher``) on CIFAR-10, in one run: a CNN teacher, the student
alone, and the same student (same epochs, seed and data) taught by the teacher.

Teacher: a timm CNN trained here by ``vitcompress finetune`` (default resnet18 at 32 px). Student: a
deit_tiny_distilled-shaped ViT at 32 px (4 px patches, 192 wide, 3 heads, ``--depth`` blocks), whose distillation
token learns from the teacher (``--distill``, hard by default, as DeiT) and class token from the labels.

Usage:  python benchmarks/teacher_distill.py [--data PATH] [--teacher-epochs 8] [--student-epochs 6]
Writes: benchmarks/results/teacher_distill_cpu.json (top-1 of all three, wall times, hardware, every command).
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


def run(args: list[str]) -> float:
    """Run ``vitcompress ARGS``; its wall seconds."""
    print("$ vitcompress " + " ".join(args), flush=True)
    started = time.time()
    if vitcompress(args) != 0:
        raise SystemExit(f"vitcompress {args[0]} failed")
    return round(time.time() - started, 1)


def top1(artifact: Path) -> float:
    return json.loads((artifact / "vitcompress.json").read_text())["metrics"]["top1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--work", default="runs/teacher-bench")
    parser.add_argument("--teacher-model", default="resnet18")
    parser.add_argument("--teacher-epochs", type=int, default=8)
    parser.add_argument("--student-epochs", type=int, default=6)
    parser.add_argument("--depth", type=int, default=6, help="student blocks (deit_tiny has 12)")
    parser.add_argument("--train-subset", type=int, default=0, help="training images (0: all 45,000)")
    parser.add_argument("--distill", default="hard", choices=("hard", "soft"))
    args = parser.parse_args()
    work, data = Path(args.work), ["--data", f"folder:{args.data}", "--train-subset", str(args.train_subset)]
    teacher = work / "teacher"
    runs = {}
    teacher_cmd = ["finetune", "--model", args.teacher_model, *COMMON, *data, "--lr", "2e-3", "--drop-path", "0",
                   "--epochs", str(args.teacher_epochs), "--out", str(teacher), "--force"]
    if not (teacher / "vitcompress.json").is_file():  # made by an earlier run: reuse
        runs["teacher"] = {"command": "vitcompress " + " ".join(teacher_cmd), "seconds": run(teacher_cmd)}
    student = ["finetune", "--model", "deit_tiny_distilled_patch16_224", "--patch-size", "4", "--model-kwargs",
               f"depth={args.depth}", *COMMON, *data, "--lr", "1e-3", "--epochs", str(args.student_epochs), "--force"]
    for name, extra in (("student_alone", []), ("student_with_teacher", ["--teacher", str(teacher),
                                                                         "--distill", args.distill])):
        cmd = [*student, *extra, "--out", str(work / name)]
        runs[name] = {"command": "vitcompress " + " ".join(cmd), "seconds": run(cmd)}
    scores = {name: top1(work / name) for name in ("teacher", "student_alone", "student_with_teacher")}
    gain = scores["student_with_teacher"] - scores["student_alone"]
    print(tabulate([(name, f"{100 * value:.2f}") for name, value in scores.items()], headers=("model", "top-1 %")))
    print(f"teacher's gain: {100 * gain:+.2f} points")
    record = {"benchmark": "teacher_distill", "date": time.strftime("%Y-%m-%d"),
              "command": "python " + " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
              "hardware": {"platform": platform.platform(), "processor": cpu_name(), "cpu_flags": cpu_flags(),
                           "cpu_count": os.cpu_count()},
              "top1": scores, "gain_points": round(100 * gain, 2), "runs": runs, "args": vars(args)}
    out = HERE / "results" / "teacher_distill_cpu.json"
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
