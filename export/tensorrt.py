"""TensorRT engines from the ONNX export, and a small runner for them.

Written against the TensorRT 10 Python API. TensorRT is imported lazily: it comes from NVIDIA's
index or an NGC container, never from this package's own dependencies, and it needs an NVIDIA GPU.
Everything that does not need it (the build spec, profiles, the ``trtexec`` line, the metadata)
is plain Python and tested on CPUs; the build and the runner have never run in this project's CI.

Networks are *strongly typed*: the ONNX graph's types decide each layer's precision, so an INT8
graph (Q/DQ pairs, FP16 everywhere else) builds exactly the INT8/FP16 mix it describes.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vitcompress.errors import UserError
from vitcompress.fsutil import atomic_file

INSTALL_HINT = ("on a machine with an NVIDIA GPU, pip install 'vitcompress[tensorrt]' "
                "(TensorRT's wheels come from https://pypi.nvidia.com), or run in an NGC TensorRT container")
GIB = 1 << 30


def tensorrt() -> Any:
    """The ``tensorrt`` module, or a one-line error saying how to install it."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise UserError(f"TensorRT is not installed ({exc})", INSTALL_HINT) from None
    return trt


def require_cuda_device() -> None:
    """One line where TensorRT is installed but no CUDA device is visible: an engine is built on the GPU it runs on."""
    import torch

    if not torch.cuda.is_available():
        raise UserError("TensorRT is installed, but no CUDA device is visible here (torch.cuda.is_available() is "
                        "False), and an engine is built on the GPU it will run on",
                        "run this export on the machine with the NVIDIA GPU and its driver, or export --format onnx "
                        "--target standard here and build the engine there (trtexec --onnx=model.onnx)")


@dataclass(frozen=True)
class EngineSpec:
    """How to build one engine: the ONNX file, its input, the batch profile and the builder's limits."""

    onnx_path: Path
    engine_path: Path
    input_name: str
    sample_shape: tuple[int, ...]  # one sample, without the batch axis (3 x H x W, or H x W x 3 for pixels)
    batch: tuple[int, int, int]  # min, opt, max
    workspace_gb: float = 4.0
    timing_cache: Path | None = None

    def profile(self) -> dict[str, tuple[int, ...]]:
        """Full input shapes for the optimisation profile's min, opt and max."""
        return {name: (b, *self.sample_shape) for name, b in zip(("min", "opt", "max"), self.batch, strict=True)}

    @property
    def workspace_bytes(self) -> int:
        return int(self.workspace_gb * GIB)


def trtexec_command(spec: EngineSpec) -> str:
    """The ``trtexec`` line that builds the same engine (for users who script TensorRT themselves)."""
    shapes = {k: "x".join(str(d) for d in v) for k, v in spec.profile().items()}
    args = ["trtexec", f"--onnx={spec.onnx_path}", f"--saveEngine={spec.engine_path}", "--stronglyTyped",
            f"--minShapes={spec.input_name}:{shapes['min']}", f"--optShapes={spec.input_name}:{shapes['opt']}",
            f"--maxShapes={spec.input_name}:{shapes['max']}",
            f"--memPoolSize=workspace:{spec.workspace_bytes // (1 << 20)}M"]
    if spec.timing_cache:
        args.append(f"--timingCacheFile={spec.timing_cache}")
    return shlex.join(args)


def build_engine(spec: EngineSpec) -> dict[str, Any]:
    """Build and write ``spec.engine_path``; reuse and update the timing cache; return the engine's metadata."""
    trt = tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(spec.onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"TensorRT cannot parse {spec.onnx_path}: {errors}", "export with --target standard")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, spec.workspace_bytes)
    profile = builder.create_optimization_profile()
    shapes = spec.profile()
    profile.set_shape(spec.input_name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    cached = spec.timing_cache.read_bytes() if spec.timing_cache and spec.timing_cache.is_file() else b""
    config.set_timing_cache(config.create_timing_cache(cached), ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UserError(f"TensorRT could not build an engine from {spec.onnx_path} (see its log above)",
                        "raise --workspace-gb or lower the --batch maximum")
    with atomic_file(spec.engine_path) as tmp:
        tmp.write_bytes(bytes(serialized))
    if spec.timing_cache:
        with atomic_file(spec.timing_cache) as tmp:
            tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    return engine_metadata(trt.__version__, *_gpu(), spec)


def _gpu() -> tuple[str, str, str]:
    import torch

    major, minor = torch.cuda.get_device_capability()
    return torch.version.cuda or "unknown", torch.cuda.get_device_name(), f"{major}.{minor}"


def engine_metadata(tensorrt_version: str, cuda_version: str, gpu_name: str, compute_capability: str,
                    spec: EngineSpec) -> dict[str, Any]:
    """What an engine is tied to (it runs only with this TensorRT on this GPU generation) and how it was built."""
    return {"tensorrt": tensorrt_version, "cuda": cuda_version, "gpu": gpu_name,
            "compute_capability": compute_capability, "strongly_typed": True,
            "input": spec.input_name, "profile": {k: list(v) for k, v in spec.profile().items()},
            "workspace_bytes": spec.workspace_bytes,
            "timing_cache": str(spec.timing_cache) if spec.timing_cache else None,
            "trtexec": trtexec_command(spec)}


class TensorRTRunner:
    """Runs batches through a serialized engine on the current CUDA device (buffers are torch tensors)."""

    def __init__(self, engine_path: str | Path) -> None:
        import torch

        trt = tensorrt()
        self._torch = torch
        self._logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self._logger).deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise UserError(f"{engine_path} is not an engine this TensorRT and GPU can load",
                            "rebuild it here with `vitcompress export --format tensorrt`")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = [self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names]
        self.input_name = next(n for n, inp in zip(names, is_input, strict=True) if inp)
        self.output_name = next(n for n, inp in zip(names, is_input, strict=True) if not inp)
        self._dtypes = {n: trt.nptype(self.engine.get_tensor_dtype(n)) for n in names}

    def run(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        device = torch.device("cuda")
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=self._dtypes[self.input_name])).to(device)
        self.context.set_input_shape(self.input_name, tuple(x.shape))
        out_shape = tuple(self.context.get_tensor_shape(self.output_name))
        out = torch.empty(out_shape, dtype=torch.from_numpy(np.zeros(0, self._dtypes[self.output_name])).dtype,
                          device=device)
        self.context.set_tensor_address(self.input_name, x.data_ptr())
        self.context.set_tensor_address(self.output_name, out.data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT failed to run the batch")
        stream.synchronize()
        return out.float().cpu().numpy()
