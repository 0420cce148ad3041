"""OpenVINO IR (``model.xml`` + ``model.bin``) from the verified standard ONNX graph, and its check against PyTorch.

The conversion keeps what the graph holds: an INT8 export's Q/DQ pairs carry the scales QAT learned, which
OpenVINO turns into its own INT8 layers (no re-calibration), with those weights stored as int8. The other layers are
traced in FP32 (not FP16, as for TensorRT: OpenVINO picks their arithmetic itself, bf16 on AMX CPUs) and their
weights stored as FP16. An FP32 export keeps FP32 weights, so that it verifies against PyTorch at FP32's tolerance.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vitcompress.errors import UserError

IR_FILE = "model.xml"  # and model.bin beside it


def openvino() -> Any:
    """The ``openvino`` module, or one line saying how to get it."""
    try:
        return importlib.import_module("openvino")
    except ImportError:
        raise UserError("OpenVINO is not installed", "pip install openvino (it comes with vitcompress; "
                        "reinstall with `pip install -e .`), or export --format onnx for ONNX Runtime") from None


def save_ir(onnx_path: Path, xml_path: Path, precision: str) -> dict[str, Any]:
    """Convert ``onnx_path`` to IR at ``xml_path``; describe what was written."""
    ov = openvino()
    model = ov.convert_model(str(onnx_path))
    compress = precision != "fp32"  # FP16 and INT8 exports: FP16 weights (stored; OpenVINO computes in f32 or bf16)
    ov.save_model(model, str(xml_path), compress_to_fp16=compress)
    ops = model.get_ordered_ops()
    int8 = [op for op in ops if op.get_type_name() == "Constant" and op.get_element_type().get_type_name() in ("i8", "u8")]
    return {"openvino": ov.__version__, "weights": ("int8 for the quantized layers, fp16 elsewhere" if precision == "int8"
                                                     else "fp16" if compress else "fp32"),
            "fake_quantize_layers": sum(op.get_type_name() == "FakeQuantize" for op in ops),
            "int8_weight_tensors": len(int8), "ops": len(ops)}


def ir_runner(xml_path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """The IR run by OpenVINO in FP32 arithmetic: the file's own numbers, not a faster CPU mode's (bf16 on AMX)."""
    from vitcompress.runtimes.openvino_backend import OpenVINOModel

    return OpenVINOModel(str(xml_path), precision="f32").run
