"""Trace a model to an ONNX file: dynamic batch, the chosen opset, checked, optionally FP16 or simplified.

torch's TorchScript exporter (``dynamo=False``) is used: modelopt's quantizers export to
``QuantizeLinear``/``DequantizeLinear`` through it (the dynamo exporter fails on a data-dependent
branch in them), and ``ort_ops.py`` writes ONNX Runtime's fused kernels through its ``symbolic``
hook. Scaled-dot-product attention needs opset 14, ``LayerNormalization`` 17; 17 is the default.

Protobuf cannot hold a message over 2 GiB, so a model whose weights pass that (ViT-H/14 and larger in
FP32) is written as ONNX external data: the graph in ``model.onnx``, every weight in ``model.onnx.data``
beside it. ONNX Runtime, TensorRT's parser and Triton's ONNX Runtime backend all load it from the path.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from vitcompress.artifact import ArtifactMeta
from vitcompress.errors import UserError
from vitcompress.export.graph import exportable
from vitcompress.export.ort_ops import EMPTY_INPUTS
from vitcompress.fsutil import atomic_file, give_default_mode

FLOAT_INPUT = "input"
PIXEL_INPUT = "pixels"
OUTPUT = "logits"
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
EXTERNAL_DATA_SUFFIX = ".data"
# Weights past this many bytes go to the external data file: protobuf's 2 GiB, less room for the graph itself.
SINGLE_FILE_LIMIT = 2**31 - 2**26


def input_name(pixels: bool) -> str:
    return PIXEL_INPUT if pixels else FLOAT_INPUT


def example_input(meta: ArtifactMeta, pixels: bool, batch: int = 2) -> torch.Tensor:
    size = meta.img_size
    if pixels:
        return torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8)
    return torch.randn(batch, 3, size, size)


def export_onnx(model: nn.Module, meta: ArtifactMeta, path: Path, *, precision: str, target: str, pixels: bool,
                opset: int = 17, simplify: bool = False, int8_fp16_elsewhere: bool = True) -> dict[str, Any]:
    """Write ``model`` to ``path`` as ONNX for ``target``; return a description of the graph.

    ``precision`` is ``fp32``, ``fp16`` (weights and activations; inputs and outputs stay as they
    are) or ``int8`` (the quantized layers of a QAT/PTQ artifact; in the standard graph everything else is FP16
    for TensorRT, unless ``int8_fp16_elsewhere`` is off: OpenVINO picks its own arithmetic for those layers).
    """
    module = exportable(model, target, pixels, meta.mean, meta.std)
    proto = _trace(module, meta, pixels, opset, scratch=path.parent)
    _blank_placeholders(proto)
    if precision == "fp16" or (precision == "int8" and target == "standard" and int8_fp16_elsewhere):
        proto = to_fp16(proto)
    if simplify:
        proto = _simplify(proto)
    _remove_unused(proto)
    description = describe_graph(proto)
    description["external_data"] = save_onnx(proto, path)
    return description


def _trace(module: nn.Module, meta: ArtifactMeta, pixels: bool, opset: int, scratch: Path) -> onnx.ModelProto:
    """The traced graph with every weight in memory. torch writes a model past 2 GiB as external data, which
    needs a file path, so the trace goes to a temporary directory in ``scratch`` (beside the output, not in a
    possibly small /tmp) and is read back from there."""
    name = input_name(pixels)
    with tempfile.TemporaryDirectory(prefix=".trace-", dir=scratch) as trace_dir:
        traced = Path(trace_dir) / "traced.onnx"
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # TracerWarnings about shape branches that hold for every batch size
            torch.onnx.export(module, (example_input(meta, pixels),), str(traced), input_names=[name],
                              output_names=[OUTPUT], dynamic_axes={name: {0: "batch"}, OUTPUT: {0: "batch"}},
                              opset_version=opset, do_constant_folding=True, dynamo=False)
        return onnx.load(str(traced))


def external_data_path(onnx_path: Path) -> Path:
    """Where the weights of an ONNX file too large for one protobuf message live: ``model.onnx.data``."""
    return onnx_path.with_name(onnx_path.name + EXTERNAL_DATA_SUFFIX)


def model_files(model_path: Path) -> list[Path]:
    """A model file and, for an ONNX file with external data or an OpenVINO IR, its weights file: together, the
    model's size on disk."""
    if model_path.suffix == ".xml":
        return [model_path, model_path.with_suffix(".bin")]
    data = external_data_path(model_path)
    return [model_path, data] if data.is_file() else [model_path]


def save_onnx(proto: onnx.ModelProto, path: Path) -> bool:
    """Check ``proto`` and write it to ``path``: one file, or, past protobuf's limit, the graph in ``path`` and its
    weights in ``path.data`` (returns whether it did that)."""
    data = external_data_path(path)
    data.unlink(missing_ok=True)  # onnx appends to an existing data file
    external = sum(t.ByteSize() for t in proto.graph.initializer) > SINGLE_FILE_LIMIT
    with atomic_file(path) as tmp:
        if external:
            onnx.save_model(proto, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data.name)
            give_default_mode(data)
        else:
            onnx.save(proto, str(tmp))
        try:
            onnx.checker.check_model(str(tmp))  # from the path: the in-memory check stops at 2 GiB
        except onnx.checker.ValidationError as exc:
            data.unlink(missing_ok=True)
            raise RuntimeError(f"the exported graph fails onnx.checker: {exc}") from exc
    return external


def describe_graph(proto: onnx.ModelProto) -> dict[str, Any]:
    ops = Counter(node.op_type for node in proto.graph.node)
    int8_initializers = sum(1 for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8)
    return {"opset": next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
            "domains": sorted({o.domain or "ai.onnx" for o in proto.opset_import}),
            "nodes": len(proto.graph.node), "ops": dict(ops.most_common()), "int8_initializers": int8_initializers}


FP32_OPS = QDQ_OPS  # kept in FP32 by the FP16 conversion


def to_fp16(proto: onnx.ModelProto) -> onnx.ModelProto:
    """FP16 weights and activations; inputs, outputs and the ``FP32_OPS`` stay as they are (Casts around them)."""
    from onnxruntime.transformers.onnx_model import OnnxModel

    wrapped = OnnxModel(proto)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        wrapped.convert_float_to_float16(keep_io_types=True, op_block_list=list(FP32_OPS))
    wrapped.topological_sort()  # the converter appends the casts of graph inputs at the end
    return wrapped.model


def _simplify(proto: onnx.ModelProto) -> onnx.ModelProto:
    try:
        import onnxslim
    except ImportError:
        raise UserError("--simplify needs onnxslim, which is not installed", "pip install onnxslim") from None
    with contextlib.redirect_stdout(io.StringIO()):
        return onnxslim.slim(proto)


def _blank_placeholders(proto: onnx.ModelProto) -> None:
    """Leave empty the optional inputs of ONNX Runtime's kernels that the exporter had to fill (``EMPTY_INPUTS``)."""
    for node in proto.graph.node:
        for index in EMPTY_INPUTS.get(node.op_type, ()):
            if index < len(node.input):
                node.input[index] = ""


def _remove_unused(proto: onnx.ModelProto) -> None:
    """Drop nodes and initializers nothing reads (the placeholders above), so runtimes don't warn."""
    graph = proto.graph
    while True:
        used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        dead = [node for node in graph.node if not any(out in used for out in node.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    for init in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(init)
