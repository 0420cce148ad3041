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


ATTENTION_QUANTIZERS = "*[qkv]_bmm_quantizer"
WEIGHTED_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)  # whose inputs INT8 quantizes


def quant_config(method: str, skip: list[str], attention: bool = False) -> dict[str, Any]:
    """The modelopt config: INT8 weights per output channel, INT8 activations per tensor, ``skip`` off.

    Inputs are quantized only where they enter a layer with weights (Linear, Conv): modelopt also wraps
    ``nn.LayerNorm`` and pooling layers, and quantizing a LayerNorm's input fake-quantizes the residual stream
    (Swin's norms are ``nn.LayerNorm``: 28 quantize/dequantize pairs in its INT8 graph, a tenth of its time).
    ``attention`` also quantizes Q, K and V where they enter the attention matmuls (Q·Kᵀ and
    softmax·V), per tensor.
    """
    from modelopt.torch.quantization.nn import QuantModuleRegistry

    calibrator = CALIBRATIONS[method].calibrator
    per_tensor = {"num_bits": 8, "axis": None, "calibrator": calibrator}
    entries: list[dict[str, Any]] = [
        {"quantizer_name": "*", "enable": False},
        {"quantizer_name": "*weight_quantizer", "cfg": {"num_bits": 8, "axis": 0}},
        *({"quantizer_name": "*input_quantizer", "parent_class": QuantModuleRegistry.get_key(layer), "cfg": per_tensor}
          for layer in WEIGHTED_LAYERS),
    ]
    if attention:
        entries.append({"quantizer_name": ATTENTION_QUANTIZERS, "cfg": per_tensor})
    entries += [{"quantizer_name": pattern if pattern.endswith("*") else f"{pattern}.*", "enable": False}
                for pattern in skip]
    return {"quant_cfg": entries, "algorithm": None}


def parse_skip(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def insert_quantizers(model: nn.Module, config: dict[str, Any]) -> None:
    """Wrap the model's Linear/Conv layers with modelopt quantizers (not calibrated yet)."""
    import contextlib
    import io
    import warnings

    mtq = modelopt()
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():  # modelopt prints what it patches
        # under torchrun modelopt warns, per layer class, that it takes the whole process group as the
        # data-parallel group: what DDP uses here too
        warnings.filterwarnings("ignore", message="Distributed training is initialized but no parallel_state")
        attention = any(e["quantizer_name"] == ATTENTION_QUANTIZERS for e in config["quant_cfg"])
        if attention:
            _register_attention_classes()
        mtq.quantize(model, config, forward_loop=None)
    if attention and not any(name.endswith("_bmm_quantizer") for name, _ in model.named_modules()):
        raise _attention_not_quantizable(model)
    if attention:  # modelopt's patch of the explicit (non-fused) path pairs quantizers with the wrong matmuls
        for module in model.modules():
            if hasattr(module, "fused_attn"):
                module.fused_attn = True


ATTENTION_FAMILIES = "timm's ViT, BEiT, vit_relpos and EVA attention"


def quantizable_attention_classes() -> tuple[type[nn.Module], ...]:
    """The attention classes modelopt's attention plugin is given: the ones prune cuts, and our pruned
    subclasses of them. The subclasses come first: once its parent is registered, modelopt would wrap a
    subclass with the parent's quantizers but keep the subclass's own, unpatched forward."""
    from vitcompress.compress.pruned_attention import WIDTH_SAFE
    from vitcompress.compress.surgery import prunable_attention_classes

    return (*WIDTH_SAFE.values(), *prunable_attention_classes())


def check_attention_quantizable(model: nn.Module) -> None:
    """Refuse ``--quantize-attention`` for a model with no attention the plugin can patch (CaiT, XCiT)."""
    if not any(isinstance(module, quantizable_attention_classes()) for module in model.modules()):
        raise _attention_not_quantizable(model)


def _attention_not_quantizable(model: nn.Module) -> UserError:
    return UserError(f"--quantize-attention: modelopt cannot quantize the attention of {type(model).__name__} "
                     f"(only {ATTENTION_FAMILIES})", "drop --quantize-attention")


def _register_attention_classes() -> None:
    """Let modelopt's attention plugin give timm's attention classes Q/K/V quantizers at their matmuls
    (it patches both the fused ``scaled_dot_product_attention`` call and the explicit ``@`` path)."""
    from modelopt.torch.quantization.plugins.attention import register_attention_for_kv_quant

    for cls in quantizable_attention_classes():
        if cls not in _ATTENTION_REGISTERED:
            register_attention_for_kv_quant(cls)
            _ATTENTION_REGISTERED.add(cls)


_ATTENTION_REGISTERED: set[type] = set()


def active_quantizers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    from modelopt.torch.quantization.nn import TensorQuantizer

    for name, module in model.named_modules():
        if isinstance(module, TensorQuantizer) and not module._disabled:
            yield name, module


@torch.no_grad()
def calibrate(model: nn.Module, forward_loop: Callable[[nn.Module], None], method: str, percentile: float) -> list[str]:
    """Collect statistics over ``forward_loop`` with quantization off, then set every amax.

    Returns the quantizers that saw no data and were switched off: a layer whose weight the model
    uses without calling the layer (timm's BEiT computes qkv with ``F.linear(x, qkv.weight, ...)``).
    """
    quantizers = list(active_quantizers(model))
    for _, q in quantizers:
        q.disable_quant()
        q.enable_calib()
    model.eval()
    forward_loop(model)
    calibration = CALIBRATIONS[method]()
    unreached = []
    for name, q in quantizers:
        q.disable_calib()
        if _saw_nothing(q):
            q.disable()
            unreached.append(name)
            continue
        calibration.load_amax(q, percentile)
        q.enable_quant()
    return unreached


def _saw_nothing(quantizer: nn.Module) -> bool:
    calibrator = quantizer._calibrator
    seen = calibrator._calib_amax if hasattr(calibrator, "_calib_amax") else calibrator._calib_hist
    return seen is None


def restore_quantizers(model: nn.Module, config: dict[str, Any], state: dict[str, torch.Tensor],
                       unreached: list[str] = ()) -> None:
    """Insert quantizers from ``config``, switch off those calibration never reached, and set each
    calibrated amax from ``state`` (the artifact's weights)."""
    insert_quantizers(model, config)
    for name in unreached:
        model.get_submodule(name).disable()
    for key, value in state.items():
        if key.endswith(AMAX_SUFFIX):
            model.get_submodule(key[: -len(AMAX_SUFFIX)]).amax = value


def quantized_layers(model: nn.Module) -> tuple[list[str], list[str]]:
    """Names of layers whose weights and inputs are INT8, and of quantizable layers left in full precision."""
    quantized, skipped = [], []
    for name, module in model.named_modules():
        quantizers = [getattr(module, q, None) for q in ("weight_quantizer", "input_quantizer")]
        if quantizers[0] is not None:
            (quantized if not any(q._disabled for q in quantizers if q is not None) else skipped).append(name)
    return quantized, skipped


def int8_ranges(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(weight amax per output channel, input amax)`` of a layer whose weights and input are both INT8.

    ``None`` for a layer without quantizers, with one switched off (``--skip``), or not calibrated.
    """
    weight_q, input_q = getattr(module, "weight_quantizer", None), getattr(module, "input_quantizer", None)
    if weight_q is None or input_q is None or weight_q._disabled or input_q._disabled:
        return None
    if weight_q.amax is None or input_q.amax is None or input_q.amax.numel() != 1:
        return None
    return weight_q.amax.detach().cpu(), input_q.amax.detach().cpu()
