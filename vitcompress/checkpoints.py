"""Read weights files a user hands us without ever running code from them.

``.safetensors`` is read by the safetensors library; ``.pth``/``.pt``/``.bin`` only through
``torch.load(weights_only=True)``, which refuses pickled objects other than tensors and plain
containers. A pickle that tries to import or call anything is rejected, not executed.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from vitcompress.errors import UserError

_WRAPPER_KEYS = ("state_dict", "model", "module", "model_state", "state_dict_ema", "model_ema")
_PREFIXES = ("module.", "model.", "_orig_mod.")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a flat ``{name: tensor}`` dict from a weights file (or an artifact directory), safely.

    Raises:
        UserError: the file is missing, not a weights file, truncated, or holds pickled code.
    """
    path = Path(path)
    if path.is_dir() and (path / "model.safetensors").is_file():  # an artifact directory
        path = path / "model.safetensors"
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist", "pass the path of a .safetensors or .pth weights file")
    if path.suffix == ".safetensors":
        try:
            state = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise UserError(f"checkpoint {path} is not a readable safetensors file ({exc})",
                            "it may be truncated or corrupt: copy it again") from None
    else:
        state = _torch_load_weights_only(path)
    return _strip_prefixes(_unwrap(state, path))


def _torch_load_weights_only(path: Path) -> object:
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing; one line is enough
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsupported content"
        if "weights_only" in str(exc) or "Unsupported" in str(exc) or "global" in str(exc).lower():
            raise UserError(f"checkpoint {path} contains pickled Python objects, not just weights; refused to load it",
                            "convert it to .safetensors, or save only model.state_dict() with torch.save") from None
        raise UserError(f"checkpoint {path} is not a weights file ({first})",
                        "pass a .safetensors or a torch.save(state_dict) .pth file") from None
    except Exception as exc:  # noqa: BLE001 - parsing arbitrary bytes fails in arbitrary ways
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"checkpoint {path} is truncated or not a weights file ({reason})",
                        "pass a complete .safetensors or .pth weights file") from None


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """Accept the common training-checkpoint shapes: a bare state dict or one nested under a key."""
    if isinstance(obj, dict):
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), dict):
                return _unwrap(obj[key], path)
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    raise UserError(f"checkpoint {path} holds no tensors", "pass a file saved from a model's state_dict()")


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in _PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state
