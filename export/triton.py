"""A Triton Inference Server model repository: ``NAME/config.pbtxt``, ``NAME/1/model.onnx|model.plan|model.xml``
and ``NAME/labels.txt`` (so Triton's classification extension can answer with class names)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

# config.pbtxt's field and value for each (Triton's `platform`; OpenVINO has none, only a `backend`), and the model file
PLATFORMS = {"onnxruntime": ("platform", "onnxruntime_onnx", "model.onnx"),
             "tensorrt": ("platform", "tensorrt_plan", "model.plan"),
             "openvino": ("backend", "openvino", "model.xml")}
TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "uint8": "TYPE_UINT8"}
INSTANCE_KINDS = {"auto": "KIND_AUTO", "cpu": "KIND_CPU", "gpu": "KIND_GPU"}
LABELS_FILE = "labels.txt"


@dataclass(frozen=True)
class TritonModel:
    """One model's serving settings; tensor shapes are per sample (Triton adds the batch axis)."""

    name: str
    platform: str  # a key of PLATFORMS
    input_name: str
    input_dtype: str
    input_dims: tuple[int, ...]
    output_name: str
    num_classes: int
    max_batch_size: int = 32
    dynamic_batching: bool = True
    max_queue_delay_us: int = 100
    instances: int = 1
    instance_kind: str = "auto"

    @property
    def model_file(self) -> str:
        return PLATFORMS[self.platform][2]


def config_pbtxt(model: TritonModel) -> str:
    """``config.pbtxt`` in protobuf text format (parsed in the tests with Triton's own ``model_config.proto``)."""
    dims = ", ".join(str(d) for d in model.input_dims)
    lines = [
        f'name: "{model.name}"',
        '{}: "{}"'.format(*PLATFORMS[model.platform][:2]),
        f"max_batch_size: {model.max_batch_size}",
        "input [",
        "  {",
        f'    name: "{model.input_name}"',
        f"    data_type: {TRITON_TYPES[model.input_dtype]}",
        f"    dims: [ {dims} ]",
        "  }",
        "]",
        "output [",
        "  {",
        f'    name: "{model.output_name}"',
        "    data_type: TYPE_FP32",
        f"    dims: [ {model.num_classes} ]",
        f'    label_filename: "{LABELS_FILE}"',
        "  }",
        "]",
        "instance_group [",
        "  {",
        f"    count: {model.instances}",
        f"    kind: {INSTANCE_KINDS[model.instance_kind]}",
        "  }",
        "]",
    ]
    if model.dynamic_batching:
        preferred = sorted({b for b in (4, 8, 16, 32, 64) if b <= model.max_batch_size} | {model.max_batch_size})
        lines += ["dynamic_batching {",
                  f"  preferred_batch_size: [ {', '.join(str(b) for b in preferred)} ]",
                  f"  max_queue_delay_microseconds: {model.max_queue_delay_us}",
                  "}"]
    return "\n".join(lines) + "\n"


def write_model_repository(root: Path, model: TritonModel, model_bytes_path: Path, classes: list[str]) -> Path:
    """Lay out ``root/NAME/`` around an exported model file (moved into version ``1`` with the file that holds its
    weights, if any: an ONNX file's external data, an IR's ``.bin``); return the model dir."""
    from vitcompress.export.onnx import model_files

    model_dir = root / model.name
    version = model_dir / "1"
    version.mkdir(parents=True, exist_ok=True)
    main, *weights = model_files(model_bytes_path)
    main.replace(version / model.model_file)
    for data in weights:  # it keeps its name: the ONNX graph names it, and an IR's .bin is its .xml's stem
        data.replace(version / data.name)
    (model_dir / "config.pbtxt").write_text(config_pbtxt(model))
    (model_dir / LABELS_FILE).write_text("".join(f"{c}\n" for c in classes))
    return model_dir


def model_name_for(path: Path) -> str:
    """Triton model names are directory names: ``path``'s name, with anything unusual replaced."""
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in path.name) or "model"


def describe(model: TritonModel) -> dict[str, Any]:
    return {"name": model.name, "platform": PLATFORMS[model.platform][1], "max_batch_size": model.max_batch_size,
            "dynamic_batching": model.dynamic_batching, "instances": model.instances,
            "instance_kind": INSTANCE_KINDS[model.instance_kind]}
