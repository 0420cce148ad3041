"""DeiT-style training with a teacher (``finetune --teacher``) on CIFAR-10, in one run: a CNN teacher, the student
alone, and the same student (same epochs, seed and data) taught by the teacher, for each of ``--seeds``. The teacher
and every student train on the same ``--train-subset`` images, so the gain is the teacher's, not more data's.

Teacher: a timm CNN trained here by ``vitcompress finetune`` (default resnet18 at 32 px). Student: a
deit_tiny_distilled-shaped ViT at 32 px (4 px patches, 192 wide, 3 heads, ``--depth`` blocks), whose distillation
token learns from the teacher (``--distill``, hard by default, as DeiT) and class token from the labels.

Artifacts already in ``--work`` (from an earlier run) are reused when they trained on the same subset; each one's
record (its recipe, training time and score) and the command that makes it go into the results. Delete ``--work`` to
train them again.

Usage:  python benchmarks/teacher_distill.py [--data PATH] [--teacher-epochs 8] [--student-epochs 5]
        [--train-subset 15000] [--seeds 0,1,2] [--distill soft]
Writes: benchmarks/results/teacher_distill_cpu[_soft].json (top-1 of all, the gain per seed with mean and sd,
training times, every command, the commit and the CPU).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from records import write_record
from tabulate import tabulate

from vitcompress.cli import main as vitcompress

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.xz"
COMMON = ["--img-size", "32", "--batch-size", "128", "--amp", "bf16", "--quiet"]


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
    parser.add_argument("--train-subset", type=int, default=15000,
                        help="training images of the teacher and of every student (0: all 45,000)")
    parser.add_argument("--distill", default="hard", choices=("hard", "soft"))
    parser.add_argument("--seeds", default="0,1,2", help="a student alone and a taught one per seed")
    args = parser.parse_args()
    work, data = Path(args.work), ["--data", f"folder:{args.data}", "--train-subset", str(args.train_subset)]
    teacher = work / "teacher"
    common = [*COMMON, *data]
    commands = {"teacher": ["finetune", "--model", args.teacher_model, *common, "--seed", "0", "--lr", "2e-3",
                            "--drop-path", "0", "--epochs", str(args.teacher_epochs), "--out", str(teacher), "--force"]}
    for seed in args.seeds.split(","):
        student = ["finetune", "--model", "deit_tiny_distilled_patch16_224", "--patch-size", "4", "--model-kwargs",
                   f"depth={args.depth}", *common, "--seed", seed, "--lr", "1e-3", "--epochs", str(args.student_epochs),
                   "--force"]
        commands[f"student_alone_seed{seed}"] = [*student, "--out", str(work / f"student_alone_seed{seed}")]
        commands[f"student_with_teacher_seed{seed}"] = [*student, "--teacher", str(teacher), "--distill", args.distill,
                                                        "--out", str(work / f"student_with_teacher_seed{seed}")]
    runs = {}
    for name, cmd in commands.items():
        reused = (work / name / "vitcompress.json").is_file()  # made by an earlier run (same --work): checked below
        if not reused:
            run(cmd)
        runs[name] = {**recorded_run(work / name), "reused": reused, "command": "vitcompress " + " ".join(cmd)}
        if runs[name]["train_subset"] != args.train_subset:
            raise SystemExit(f"{work / name} was trained on another subset: delete it or pass another --work")
    seeds = args.seeds.split(",")
    alone = [runs[f"student_alone_seed{s}"]["top1"] for s in seeds]
    taught = [runs[f"student_with_teacher_seed{s}"]["top1"] for s in seeds]
    gains = [100 * (t - a) for t, a in zip(taught, alone, strict=True)]

    def mean_sd(values: list[float]) -> str:
        return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.2f}"

    print(tabulate([("teacher", f"{100 * runs['teacher']['top1']:.2f}"),
                    ("student alone", mean_sd([100 * a for a in alone])),
                    ("student with teacher", mean_sd([100 * t for t in taught]))],
                   headers=("model", f"top-1 %, mean ± sd over seeds {args.seeds}")))
    print(f"teacher's gain: {mean_sd(gains)} points")
    out = write_record(f"teacher_distill_cpu{'' if args.distill == 'hard' else '_' + args.distill}",
                       {"seeds": seeds, "top1": {"teacher": runs["teacher"]["top1"], "student_alone": alone,
                                                 "student_with_teacher": taught},
                        "gain_points": {"per_seed": [round(g, 2) for g in gains], "mean": round(statistics.fmean(gains), 2),
                                        "sd": round(statistics.stdev(gains), 2) if len(gains) > 1 else 0.0},
                        "runs": runs, "args": vars(args)})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
