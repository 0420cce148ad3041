"""pipeline: a shrunken recipe end to end, skipping complete stages and resuming after a kill;
recipes with mistakes refused before anything runs; predict agreeing with eval, for an artifact and its export."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import REPO, TINY, huge_image, run_cli, write_image_folder
from vitcompress.artifact import read_meta
from vitcompress.config import ExportConfig
from vitcompress.datasets.shapes import CLASSES
from vitcompress.export.exporter import export
from vitcompress.pipeline import check_options, default_recipe, pipeline, plan
from vitcompress.predict import Classifier
from vitcompress.recipe import load_recipe

SMALL = {
    "finetune": {"model": "vit_tiny_patch16_224", "data": "shapes", "img_size": 32, "patch_size": 8,
                 "model_kwargs": "depth=1,embed_dim=32,num_heads=2", "epochs": 2, "lr": "3e-3", "batch_size": 128,
                 "drop_path": 0.0, "quiet": True},
    "prune": {"heads": 0.5, "criterion": "l1", "finetune_epochs": 0},
    "qat": {"epochs": 0, "calib_size": 64},
    "export": {"verify_size": 16},
    "bench": {"data": "shapes", "eval_size": 64, "backends": "ort-cpu", "batch": "1", "warmup": 1, "min_iters": 2,
              "max_seconds": 0.05},
}
STEPS = ["fp32", "pruned", "int8", "pruned-int8", "onnx-fp32", "onnx-pruned", "onnx-int8", "onnx-pruned-int8", "bench"]


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def test_pipeline_runs_every_stage_then_skips_them(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", SMALL)
    first = pipeline(str(recipe), str(tmp_path / "out"), quiet=True, log=lambda _: None)
    assert first.ran == STEPS and all((tmp_path / "out" / s).is_dir() for s in STEPS)
    variants = {r["variant"] for r in first.bench.results["records"]}
    assert variants == {"onnx-fp32", "onnx-pruned", "onnx-int8", "onnx-pruned-int8"}  # FP32, pruned, INT8, both
    state = json.loads((tmp_path / "out" / "pipeline.json").read_text())
    assert all(step["status"] == "done" for step in state["steps"].values())
    again = pipeline(str(recipe), str(tmp_path / "out"), quiet=True, log=lambda _: None)
    assert again.ran == [] and again.skipped == STEPS and again.bench is not None
    changed = write_recipe(tmp_path / "r.yaml", {**SMALL, "export": {"verify_size": 8}})  # only export and bench change
    third = pipeline(str(changed), str(tmp_path / "out"), quiet=True, log=lambda _: None)
    assert third.ran == STEPS[4:]


def test_from_and_until(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", SMALL)
    until = pipeline(str(recipe), str(tmp_path / "out"), until_stage="prune", quiet=True, log=lambda _: None)
    assert until.ran == ["fp32", "pruned"]
    rest = pipeline(str(recipe), str(tmp_path / "out"), from_stage="qat", until_stage="qat", quiet=True, log=lambda _: None)
    assert rest.ran == ["int8", "pruned-int8"]


def test_info_describes_a_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`vitcompress info OUT` on a pipeline's output: every step that ran, its score, and what was not made yet."""
    recipe = write_recipe(tmp_path / "r.yaml", SMALL)
    out = tmp_path / "out"
    pipeline(str(recipe), str(out), until_stage="export", quiet=True, log=lambda _: None)
    capsys.readouterr()
    assert run_cli("info", out) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    top1 = read_meta(out / "pruned").metrics["top1"]
    assert "prune" in lines["pruned"] and "done" in lines["pruned"] and f"{100 * top1:.2f}%" in lines["pruned"]
    assert "int8 export, agrees with PyTorch" in lines["onnx-pruned-int8"]
    assert "bench" not in lines and "bench report:" not in "\n".join(lines.values())  # --until export: no bench yet
    assert run_cli("info", out, "--json") == 0
    state = json.loads(capsys.readouterr().out)
    assert list(state["steps"]) == STEPS[:-1] and state["recipe"]["prune"]["heads"] == 0.5
    for command in (["eval", out, "--data", "shapes"], ["export", out, "--out", tmp_path / "x"],
                    ["prune", out, "--heads", "0.5", "--out", tmp_path / "y"]):
        assert run_cli(*command) == 2  # a run is not one model: the error names its steps
        err = capsys.readouterr().err
        assert "a pipeline's output" in err and str(out / "onnx-int8") in err and err.count("\n") == 1


def _run_until(recipe: Path, out: Path, ready) -> None:
    """Start the pipeline in a subprocess and kill it (SIGKILL) once ``ready()`` holds."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "vitcompress", "pipeline", str(recipe), "--out", str(out), "--quiet"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_resumes_after_a_kill_without_redoing_finished_stages(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", {**SMALL, "prune": {**SMALL["prune"], "finetune_epochs": 2}})
    out = tmp_path / "out"
    _run_until(recipe, out, lambda: (out / "pruned.tmp-run" / "last.ckpt").exists())  # killed while prune recovers
    assert (out / "fp32").is_dir() and not (out / "pruned").exists()
    finished = (out / "fp32" / "model.safetensors").stat().st_mtime_ns
    messages: list[str] = []
    result = pipeline(str(recipe), str(out), quiet=True, log=messages.append)
    assert "fp32" in result.skipped and result.ran == STEPS[1:]
    assert (out / "fp32" / "model.safetensors").stat().st_mtime_ns == finished
    assert any("pruned: prune (resuming)" in m for m in messages)
    assert len((out / "pruned" / "train_log.csv").read_text().splitlines()) == 1 + 2  # each recovery epoch once
    pruning = json.loads((out / "pruned" / "vitcompress.json").read_text())["metrics"]["pruning"]
    assert pruning["heads_after"] == [1] and pruning["top1_before"] is not None  # the report survived the stop


def test_an_interrupted_qat_step_resumes(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", {"finetune": SMALL["finetune"], "qat": {"epochs": 3, "calib_size": 64}})
    out = tmp_path / "out"
    _run_until(recipe, out, lambda: (out / "int8.tmp-run" / "last.ckpt").exists())
    messages: list[str] = []
    result = pipeline(str(recipe), str(out), quiet=True, log=messages.append)
    assert result.skipped == ["fp32"] and result.ran == ["int8"] and any("int8: qat (resuming)" in m for m in messages)


def test_an_interrupted_finetune_resumes(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", {"finetune": {**SMALL["finetune"], "epochs": 4}})
    out = tmp_path / "out"
    _run_until(recipe, out, lambda: (out / "fp32.tmp-run" / "last.ckpt").exists())
    messages: list[str] = []
    result = pipeline(str(recipe), str(out), quiet=True, log=messages.append)
    assert result.ran == ["fp32"] and any("resuming" in m for m in messages)
    log = (out / "fp32" / "train_log.csv").read_text().splitlines()
    assert len(log) == 1 + 4  # a header and each epoch once


@pytest.mark.parametrize("mistake, expected", [
    ({"finetune": {**SMALL["finetune"], "epoch": 3}}, "did you mean 'epochs'"),
    ({"finetune": {**SMALL["finetune"], "epochs": "ten"}}, "finetune.epochs should be an integer"),
    ({"qat": SMALL["qat"], "finetune": SMALL["finetune"]}, "cannot run in that order"),
    ({"finetune": SMALL["finetune"], "quantize": {}}, "unknown stage 'quantize'"),
    ({"prune": SMALL["prune"]}, "no finetune section comes before it"),
    ({**SMALL, "qat": {**SMALL["qat"], "calib_method": "minmax"}}, "recipe section 'qat': --calib-method 'minmax'"),
    ({**SMALL, "bench": {**SMALL["bench"], "backends": "ort-gpu"}}, "recipe section 'bench': --backends 'ort-gpu'"),
    ({**SMALL, "bench": {**SMALL["bench"], "data": "imagenet"}}, "recipe section 'bench': unknown data spec 'imagenet'"),
    ({**SMALL, "prune": {**SMALL["prune"], "data": "folder:/no/such/dir"}}, "recipe section 'prune': --data folder:/no/such"),
    ({**SMALL, "finetune": {**SMALL["finetune"], "model": "cait_xxs24_224"}},
     "recipe section 'prune': block 0 of cait_xxs24_224 uses timm.models.cait.TalkingHeadAttn"),
    ({"finetune": {**SMALL["finetune"], "model": "cait_xxs24_224"}, "qat": {**SMALL["qat"], "quantize_attention": True}},
     "recipe section 'qat': --quantize-attention: modelopt cannot quantize the attention of Cait"),
    ({**SMALL, "finetune": {**SMALL["finetune"], "model": "vit_giant_patch14_dinov2",
                            "model_kwargs": "depth=1,embed_dim=32,num_heads=2,mlp_ratio=4"},
      "prune": {**SMALL["prune"], "mlp": 0.25}}, "recipe section 'prune': block 0 of vit_giant_patch14_dinov2 has a GluMlp"),
])
def test_bad_recipes_are_refused_before_anything_runs(tmp_path: Path, mistake: dict, expected: str,
                                                      capsys: pytest.CaptureFixture) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", mistake)
    assert run_cli("pipeline", recipe, "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and err.count("\n") == 0
    assert not (tmp_path / "out").exists()


def test_shipped_recipes_are_valid(tmp_path: Path) -> None:
    for path in [default_recipe(), *sorted((REPO / "recipes").glob("*.yaml"))]:
        recipe = load_recipe(path)
        check_options(plan(recipe), recipe, tmp_path)  # every option's value too, as a run checks them first


def test_predict_agrees_with_eval_for_an_artifact_and_its_export(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = write_image_folder(tmp_path / "imgs", per_class=8, classes=10, splits=("train", "test"), seed=3)
    artifact = tmp_path / "model"
    assert run_cli("finetune", *TINY, "--data", f"folder:{root}", "--epochs", "2", "--val-split", "0", "--out", artifact) == 0
    capsys.readouterr()
    assert run_cli("eval", artifact, "--data", f"folder:{root}", "--json", "--quiet") == 0
    eval_top1 = json.loads(capsys.readouterr().out)["top1"]
    files = sorted((root / "test").rglob("*.png"))
    truth = [f.parent.name for f in files]
    onnx = export(ExportConfig(src=str(artifact), out=str(tmp_path / "onnx"), input="uint8", verify_size=8,
                               quiet=True)).path
    for src in (artifact, onnx):
        top1 = [answer[0][0] for answer in Classifier(src)(list(files), top_k=1)]
        assert sum(p == t for p, t in zip(top1, truth, strict=True)) / len(files) == pytest.approx(eval_top1)
    assert run_cli("predict", onnx, files[0], "--json", "--top-k", "3") == 0
    answer = json.loads(capsys.readouterr().out)["predictions"][0]
    assert len(answer["top"]) == 3 and answer["top"][0]["probability"] >= answer["top"][1]["probability"]
    assert run_cli("eval", onnx, "--data", f"folder:{root}", "--json", "--quiet") == 0  # the export, in ONNX Runtime
    exported = json.loads(capsys.readouterr().out)
    assert exported["runtime"] == "ort-cpu" and exported["samples"] == len(files)
    assert exported["top1"] == pytest.approx(eval_top1)


def test_predict_takes_folders_and_runs_in_batches(tmp_path: Path, shapes_artifact: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    root = write_image_folder(tmp_path / "imgs", per_class=3, classes=3, splits=("test",), seed=4)
    files = sorted(str(f) for f in (root / "test").rglob("*.png"))
    (root / "test" / "notes.txt").write_text("not an image, and not named: skipped like ImageFolder skips it")
    assert run_cli("predict", shapes_artifact, root, "--json", "--batch-size", "4", "--top-k", "10") == 0
    records = json.loads(capsys.readouterr().out)["predictions"]
    assert [r["image"] for r in records] == files  # every image under the folder, sorted, once
    one_batch = Classifier(shapes_artifact, batch_size=len(files)).probabilities(files)
    in_batches = np.array([[t["probability"] for t in sorted(r["top"], key=lambda t: CLASSES.index(t["class"]))]
                           for r in records])
    np.testing.assert_allclose(in_batches, one_batch, atol=1e-5)
    (tmp_path / "empty").mkdir()
    assert run_cli("predict", shapes_artifact, tmp_path / "empty") == 2
    assert "has no image files" in capsys.readouterr().err


def test_predict_names_an_unreadable_image(tmp_path: Path, shapes_artifact: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    assert run_cli("predict", shapes_artifact, bad) == 2
    err = capsys.readouterr().err.strip()
    assert str(bad) in err and err.count("\n") == 0


def test_predict_skips_an_unreadable_image_among_readable_ones(tmp_path: Path, shapes_artifact: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    """One corrupt file in a folder of photos gets an error record and a warning; the others are still classified."""
    root = write_image_folder(tmp_path / "imgs", per_class=2, classes=2, splits=("test",), seed=5)
    good = sorted(str(f) for f in (root / "test").rglob("*.png"))
    bad, huge = root / "test" / "broken.png", root / "test" / "huge.png"
    bad.write_bytes(b"\x89PNG truncated")
    huge_image(huge)  # too large for PIL to open safely: a traceback before
    assert run_cli("predict", shapes_artifact, root / "test", "--json", "--top-k", "1") == 0
    captured = capsys.readouterr()
    records = {r["image"]: r for r in json.loads(captured.out)["predictions"]}
    assert set(records) == {*good, str(bad), str(huge)} and "error" in records[str(bad)]
    assert "DecompressionBombError" in records[str(huge)]["error"]
    assert all(len(records[file]["top"]) == 1 for file in good)
    alone = Classifier(shapes_artifact).probabilities(good)
    assert [records[file]["top"][0]["class"] for file in good] == [CLASSES[i] for i in alone.argmax(axis=1)]
    assert "skipped 2 unreadable image" in captured.err and str(bad) in captured.err


def test_bench_finds_finetunes_torchvision_set_where_finetune_did(tmp_path: Path) -> None:
    from vitcompress.pipeline import _step_config

    recipe = {"finetune": {**SMALL["finetune"], "data": "dtd", "data_dir": "/data/tv"}, "export": {},
              "bench": {"data": "dtd"}}
    bench = next(s for s in plan(recipe) if s.stage == "bench")
    assert _step_config(bench, recipe, tmp_path, resume=False).data_dir == "/data/tv"
    for section, expected in (({"data": "shapes"}, None), ({"data": "dtd", "data_dir": "/elsewhere"}, "/elsewhere"), ({}, None)):
        assert _step_config(bench, {**recipe, "bench": section}, tmp_path, resume=False).data_dir == expected


def test_bench_streams_finetunes_data_when_finetune_streamed(tmp_path: Path) -> None:
    from vitcompress.pipeline import _step_config

    recipe = {"finetune": {**SMALL["finetune"], "data": "dtd", "stream": True}, "export": {}, "bench": {"data": "dtd"}}
    bench = next(s for s in plan(recipe) if s.stage == "bench")
    assert _step_config(bench, recipe, tmp_path, resume=False).stream is True
    for section, expected in (({"data": "shapes"}, False), ({"data": "shapes", "stream": True}, True), ({}, False)):
        assert _step_config(bench, {**recipe, "bench": section}, tmp_path, resume=False).stream is expected
    unstreamed = {**recipe, "finetune": {**recipe["finetune"], "stream": False}}
    assert _step_config(bench, unstreamed, tmp_path, resume=False).stream is False


def test_an_export_section_with_several_formats_exports_each_model_in_each() -> None:
    """The default recipe's `format: onnx,openvino`: an ONNX file for ONNX Runtime and an IR for OpenVINO of every
    model, all benched."""
    steps = plan({"finetune": {}, "qat": {}, "export": {"format": "onnx,openvino"}, "bench": {}})
    exports = [(s.name, s.overrides["format"]) for s in steps if s.stage == "export"]
    assert exports == [("onnx-fp32", "onnx"), ("onnx-int8", "onnx"), ("ir-fp32", "openvino"), ("ir-int8", "openvino")]
    assert steps[-1].inputs == [name for name, _ in exports]
