"""Exported models (ONNX Runtime or OpenVINO) timed by vitcompress's one timing method (vitcompress/timing.py):
warm-up until stable, equal calls per timing, interleaved rounds with every variant bracketed by its baseline,
ratios of medians with the per-round interquartile range beside them."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from vitcompress.export.onnx import model_files
from vitcompress.export.onnx_runtime import ort_runner, ort_session
from vitcompress.timing import TimingMethod, compare, local_timer

BATCHES = (1, 32)


def runner(path: Path, threads: int, precision: str | None = None) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    """A call of the model file in the runtime its suffix names (``.xml``: OpenVINO, in the arithmetic ``precision``
    asks for or, by default, OpenVINO's own choice), and the arithmetic it runs in."""
    if path.suffix == ".xml":
        from vitcompress.runtimes.openvino_backend import OpenVINOModel, openvino_core

        model = OpenVINOModel(str(path), threads, precision)
        ops = {op.get_type_name() for op in openvino_core().read_model(str(path)).get_ops()}
        return model.run, ("int8 + " if "FakeQuantize" in ops else "") + model.arithmetic
    return ort_runner(ort_session(path, threads=threads)), onnx_arithmetic(path)


def onnx_arithmetic(path: Path) -> str:
    """What ONNX Runtime computes a graph in: ``int8 + fp32`` where it has integer kernels (ours, or what
    ``quantize_dynamic`` makes), else ``fp32`` (ONNX Runtime's CPU provider runs float32 as written)."""
    import onnx

    ops = {node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node}
    return "int8 + fp32" if ops & INTEGER_OPS else "fp32"


INTEGER_OPS = {"QAttention", "MatMulIntegerToFloat", "MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul",
               "QLinearMatMul", "QLinearConv", "ConvInteger", "QuantizeLinear"}


def time_variants(paths: Mapping[str, Path], threads: int, baselines: Sequence[str], rounds: int, size: int = 224,
                  precisions: Mapping[str, str] | None = None, bracket_of: Mapping[str, str] | None = None
                  ) -> dict[str, Any]:
    """Every variant against every baseline at batch 1 and 32, each bracketed by the first baseline unless
    ``bracket_of`` names another (:func:`vitcompress.timing.compare`'s record), with each variant's arithmetic and
    file size added."""
    runners = {name: runner(path, threads, (precisions or {}).get(name)) for name, path in paths.items()}
    inputs = {b: np.random.default_rng(0).standard_normal((b, 3, size, size)).astype(np.float32) for b in BATCHES}
    timers = {name: local_timer({b: partial(run, inputs[b]) for b in BATCHES}) for name, (run, _) in runners.items()}
    record = compare(timers, baselines, BATCHES, TimingMethod(rounds=rounds), lambda s: print(s, flush=True), bracket_of)
    for name, (_, arithmetic) in runners.items():
        record["variants"][name].update(arithmetic=arithmetic,
                                        size_bytes=sum(f.stat().st_size for f in model_files(paths[name])))
    return record
