"""INT8 fake quantization with nvidia-modelopt: insert quantizers, calibrate, and rebuild from plain data.

The quantization config is plain JSON (modelopt's wildcard patterns over module names), stored in
``vitcompress.json``; the calibrated ranges (``*_quantizer._amax``) are ordinary tensors in the
safetensors file. Rebuilding is: create the model, insert quantizers from the config, set each
amax, load the weights strictly. No pickle, no modelopt state blob.

modelopt is imported here only, and only by the stages that need it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from vitcompress.compress.calibration import CALIBRATIONS

from vitcompress.errors import UserError

AMAX_SUFFIX = "._amax"
DEFAULT_SKIP = "patch_embed*,head*"


def modelopt() -> Any:
    """``modelopt.torch.quantization``, or a one-line error saying how to install it."""
    import logging
    import warnings

    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "No CUDA runtime is found" on CPUs
    try:
        with warnings.catch_warnings():  # import-time notices about optional plugins and torch.jit
            warnings.simplefilter("ignore")
            import modelopt.torch.quantization as mtq
    except ImportError as exc:
        raise UserError(f"nvidia-modelopt is not importable ({exc})",
                        "pip install 'nvidia-modelopt>=0.20' (and requests), or reinstall vitcompress") from None
    return mtq


def quant_config(method: str, skip: list[str]) -> dict[str, Any]:
    """The modelopt config: INT8 weights per output channel, INT8 activations per tensor, ``skip`` off."""
    calibrator = CALIBRATIONS[method].calibrator
    entries: list[dict[str, Any]] = [
        {"quantizer_name": "*", "enable": False},
        {"quantizer_name": "*weight_quantizer", "cfg": {"num_bits": 8, "axis": 0}},
        {"quantizer_name": "*input_quantizer", "cfg": {"num_bits": 8, "axis": None, "calibrator": calibrator}},
    ]
    entries += [{"quantizer_name": pattern if pattern.endswith("*") else f"{pattern}.*", "enable": False}
                for pattern in skip]
    return {"quant_cfg": entries, "algorithm": None}


def parse_skip(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def insert_quantizers(model: nn.Module, config: dict[str, Any]) -> None:
    """Wrap the model's Linear/Conv layers with modelopt quantizers (not calibrated yet)."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # modelopt prints "Inserted N quantizers"
        modelopt().quantize(model, config, forward_loop=None)


def active_quantizers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    from modelopt.torch.quantization.nn import TensorQuantizer

    for name, module in model.named_modules():
        if isinstance(module, TensorQuantizer) and not module._disabled:
            yield name, module


@torch.no_grad()
def calibrate(model: nn.Module, forward_loop: Callable[[nn.Module], None], method: str, percentile: float) -> None:
    """Collect statistics over ``forward_loop`` with quantization off, then set every amax."""
    quantizers = list(active_quantizers(model))
    for _, q in quantizers:
        q.disable_quant()
        q.enable_calib()
    model.eval()
    forward_loop(model)
    calibration = CALIBRATIONS[method]()
    for _, q in quantizers:
        calibration.load_amax(q, percentile)
        q.enable_quant()
        q.disable_calib()


def restore_quantizers(model: nn.Module, config: dict[str, Any], state: dict[str, torch.Tensor]) -> None:
    """Insert quantizers from ``config`` and set each calibrated amax from ``state`` (the artifact's weights)."""
    insert_quantizers(model, config)
    for key, value in state.items():
        if key.endswith(AMAX_SUFFIX):
            model.get_submodule(key[: -len(AMAX_SUFFIX)]).amax = value


def quantized_layers(model: nn.Module) -> tuple[list[str], list[str]]:
    """Names of layers with quantized weights, and of quantizable layers left in full precision."""
    quantized, skipped = [], []
    for name, module in model.named_modules():
        quantizer = getattr(module, "weight_quantizer", None)
        if quantizer is not None:
            (skipped if quantizer._disabled else quantized).append(name)
    return quantized, skipped
