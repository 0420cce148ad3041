"""Creating timm Vision Transformers, and rebuilding them from an artifact's metadata."""

from __future__ import annotations

import ast
import difflib
import functools
import re
import sys
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from vitcompress.checkpoints import read_state_dict
from vitcompress.errors import UserError, require


def parse_model_kwargs(text: str | dict | None) -> dict[str, Any]:
    """Parse ``"depth=2,embed_dim=64,qkv_bias=False,depths=(2,2,6,2)"`` into typed values (ints, floats,
    bools, tuples and lists, str); commas inside brackets belong to the value."""
    if not text:
        return {}
    if isinstance(text, dict):
        return dict(text)
    kwargs: dict[str, Any] = {}
    for item in _top_level_items(text):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--model-kwargs item {item!r} is not key=value", "write e.g. depth=2,embed_dim=64")
        try:
            kwargs[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            kwargs[key.strip()] = value.strip()
    return kwargs


def _top_level_items(text: str) -> list[str]:
    """Split at the commas that are not inside (), [] or {}."""
    items, depth, start = [], 0, 0
    for index, char in enumerate(text):
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth = max(depth - 1, 0)
        elif char == "," and depth == 0:
            items.append(text[start:index])
            start = index + 1
    items.append(text[start:])
    return items


HUB_PREFIXES = ("hf-hub:", "hf_hub:")


def check_model_name(name: str) -> None:
    """Fail with suggestions when ``name`` is not a timm model (or names a pretrained tag timm does not have)."""
    if name.startswith(HUB_PREFIXES):
        repo = name.split(":", 1)[1]
        if repo.startswith("timm/") and timm.is_model(repo.removeprefix("timm/")):
            raise UserError(f"model {name!r} is a timm hub name", f"pass its timm name: --model {repo.removeprefix('timm/')}"
                            " (with --pretrained for the weights; artifacts then rebuild without the hub)")
        raise UserError(f"hub model names ({name!r}) are not supported: an artifact must rebuild without the hub",
                        "pass the timm architecture as --model and the downloaded weights as --init-checkpoint FILE")
    arch, tag = timm.models.split_model_name_tag(name)
    if tag and timm.is_model(arch):
        tags = timm.list_pretrained(f"{arch}.*")
        if name not in tags:
            raise UserError(f"timm has no pretrained tag {tag!r} for {arch}",
                            f"use one of: {', '.join(tags)}" if tags else f"use --model {arch} (it has no pretrained weights)")
        return
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
    listing = "list names with: python -c \"import timm; print(timm.list_models('vit_*'))\""
    hint = f"did you mean {', '.join(close)}?" if close else listing
    raise UserError(f"unknown model {name!r}", hint)


def default_img_size(model_name: str) -> int:
    """The input size timm's config gives the model (224 for most ViTs)."""
    cfg = timm.models.get_pretrained_cfg(model_name)
    return int(cfg.input_size[-1]) if cfg is not None else 224


MAX_TOKENS = 16_384  # 2048px at 16px patches; attention memory grows with the square of this


def check_geometry(img_size: int, patch_size: int | None, model_name: str = "") -> None:
    """Image and patch sizes that give at least one whole patch, and not more tokens than fit in memory."""
    require(img_size >= 1, f"--img-size {img_size} must be positive", "pass e.g. --img-size 224 (or 32 for CIFAR)")
    if patch_size is not None:
        require(1 <= patch_size <= img_size, f"--patch-size {patch_size} does not fit --img-size {img_size}",
                "pass a patch size between 1 and the image size, e.g. 4 at 32px or 16 at 224px")
    patch = patch_size or _patch_size_from_name(model_name)
    tokens = (img_size // patch) ** 2
    require(tokens <= MAX_TOKENS, f"--img-size {img_size} with {patch}px patches makes {tokens:,} tokens per image, "
            f"more than the {MAX_TOKENS:,} a ViT's attention fits in memory",
            "pass a smaller --img-size or a larger --patch-size")


def _patch_size_from_name(model_name: str) -> int:
    match = re.search(r"patch(\d+)", model_name)
    return int(match.group(1)) if match else 16


@functools.lru_cache(maxsize=64)
def takes_image_size(name: str) -> bool:
    """Whether timm's ``name`` is built for an image size (its transformers) or adapts to any (its CNNs): tried on
    the meta device, which takes no memory and well under a second."""
    check_model_name(name)
    try:
        with torch.device("meta"):
            timm.create_model(name, img_size=224, num_classes=10)
    except TypeError as exc:
        if "img_size" in str(exc):
            return False
    except Exception:  # noqa: BLE001 - a model that fails at 224 px for another reason is still a transformer here
        pass
    return True


def build_kwargs(num_classes: int, img_size: int, patch_size: int | None, extra: dict[str, Any],
                 name: str | None = None) -> dict[str, Any]:
    """The keyword arguments given to ``timm.create_model`` (stored in the artifact as they are). A CNN (``name``
    takes no image size: timm's ResNets, ConvNeXts...) gets none: it runs at any size, and learns at the data's."""
    for key, flag in (("num_classes", "the dataset's classes"), ("img_size", "--img-size"), ("patch_size", "--patch-size")):
        if key in extra:
            raise UserError(f"--model-kwargs sets {key}, which comes from {flag}", f"drop {key} from --model-kwargs")
    kwargs: dict[str, Any] = {"num_classes": num_classes}
    if name is None or takes_image_size(name):
        kwargs["img_size"] = img_size
    elif patch_size:
        raise UserError(f"--patch-size {patch_size}: {name} is a CNN, it has no patches",
                        "leave --patch-size out (or pick a transformer)")
    if patch_size:
        kwargs["patch_size"] = patch_size
    kwargs.update(extra)
    return kwargs


def require_transformer(model: nn.Module, name: str, stage: str) -> None:
    """One line for a stage that works on transformer blocks (prune, merge, qat) handed a CNN (a teacher model)."""
    require(any(hasattr(module, "num_heads") for module in model.modules()),
            f"{name} is not a transformer: {stage} works on a ViT's attention blocks",
            f"{stage} a transformer artifact; a CNN trained by finetune serves as --teacher, eval, export and bench")


def create_model(name: str, kwargs: dict[str, Any], pretrained: bool = False) -> nn.Module:
    """``timm.create_model`` with user-facing errors for bad names, kwargs and offline downloads."""
    check_model_name(name)
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except TypeError as exc:
        if "'img_size'" in str(exc):
            raise UserError(f"model {name} takes no image size: it is not a Vision Transformer ({exc})",
                            "vitcompress works on timm's transformers: pick e.g. vit_small_patch16_224, "
                            "deit_small_patch16_224 or eva02_tiny_patch14_224") from None
        raise UserError(f"model {name} does not accept these arguments {kwargs} ({exc})",
                        "check --model-kwargs / --patch-size against the timm model's signature") from None
    except Exception as exc:  # noqa: BLE001 - hub/network failures come in many types
        if not pretrained:
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise UserError(f"could not create model {name} with {kwargs} ({type(exc).__name__}: {reason})",
                            "check the values in --model-kwargs, --img-size and --patch-size") from None
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UserError(f"could not load pretrained weights for {name} ({type(exc).__name__}: {reason})",
                        "connect to the internet (weights come from the Hugging Face hub), point HF_HOME at a cache "
                        "that has them, or pass --init-checkpoint FILE") from None


def meta_model(name: str, model_kwargs: str | dict | None, img_size: int | None, patch_size: int | None) -> nn.Module:
    """The architecture finetune would build, on the meta device: no weights, no memory, well under a second
    (``pipeline`` checks a recipe's later stages against it before anything trains)."""
    kwargs = build_kwargs(10, img_size or default_img_size(name), patch_size, parse_model_kwargs(model_kwargs), name)
    with torch.device("meta"):
        return create_model(name, kwargs)


def load_init_checkpoint(model: nn.Module, path: str | Path, same_classes: bool = False) -> dict[str, list[str]]:
    """Load local weights into ``model``; the classifier is re-initialised if its class count differs or the
    checkpoint has none (a backbone; refused when ``same_classes``: a teacher's classifier is what it is for).

    The weights first go through the converter timm applies to the model's own pretrained weights
    (:func:`_timm_checkpoint_filter`): original DINOv2, OpenAI CLIP or OpenCLIP layouts, and patch
    and position embeddings resampled to the model's patch and grid size, so a checkpoint trained at
    224px with 16px patches can start a 32px run with 4px patches.

    Returns which of the model's tensors were ``loaded`` as they were, ``resampled`` to the model's shape, and
    ``new`` (left as initialised: the classifier).
    """
    raw = read_state_dict(path)
    shapes = {key: tuple(tensor.shape) for key, tensor in raw.items()}
    state = _timm_checkpoint_filter(model, raw, path)
    own = model.state_dict()
    head_keys = _classifier_keys(model)
    backbone_only = not same_classes and not head_keys & set(state)
    resized = sorted(head_keys) if backbone_only else []  # the classifier starts fresh
    for key in list(state):
        if key in own and state[key].shape != own[key].shape:
            if key in head_keys:
                require(not same_classes, f"checkpoint {path}'s classifier {key} has shape {tuple(state[key].shape)}, "
                        f"the data's classes need {tuple(own[key].shape)}",
                        "pass a checkpoint trained on the same classes as the data")
                del state[key]
                resized.append(key)
            elif key == "pos_embed":
                state[key] = _resample_pos_embed(model, state[key])
    missing = [k for k in own if k not in state and k not in resized]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in state if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        detail = "; ".join(
            f"{label}: {len(keys)} (e.g. {keys[0]})"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched))
            if keys
        )
        raise UserError(f"checkpoint {path} does not match model {type(model).__name__} ({detail})",
                        "pass weights saved from the same --model and --model-kwargs")
    model.load_state_dict(state, strict=False)
    resampled = sorted(k for k in state if k in shapes and shapes[k] != tuple(own[k].shape))
    return {"loaded": sorted(k for k in state if k not in resampled), "resampled": resampled, "new": sorted(resized)}


def _timm_checkpoint_filter(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> dict[str, torch.Tensor]:
    """``state`` converted by the ``checkpoint_filter_fn`` of the timm module that defines ``model``, as
    ``timm.create_model(pretrained=True)`` does; unchanged for models whose module has none."""
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is None:
        return state
    try:
        return filter_fn(state, model)
    except Exception as exc:  # noqa: BLE001 - timm's converters assume their own layouts and fail in many ways
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UserError(f"checkpoint {path} cannot be converted for {type(model).__name__} by timm ({reason})",
                        "pass weights saved from the same --model (timm, original or OpenCLIP layout)") from None


def _classifier_keys(model: nn.Module) -> set[str]:
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(head, nn.Module):
        return set()
    prefix = next((n for n, m in model.named_modules() if m is head), None)
    return {f"{prefix}.{k}" for k in head.state_dict()} if prefix else set()


def _resample_pos_embed(model: nn.Module, pos_embed: torch.Tensor) -> torch.Tensor:
    from timm.layers import resample_abs_pos_embed

    prefix = 0 if getattr(model, "no_embed_class", False) else getattr(model, "num_prefix_tokens", 1)
    grid = model.patch_embed.grid_size
    return resample_abs_pos_embed(pos_embed, new_size=list(grid), num_prefix_tokens=prefix)


def block_stages(model: nn.Module) -> list[list[nn.Module]]:
    """The transformer blocks with multi-head attention, by stage: a ViT's ``blocks`` (one stage), or each stage's
    blocks of a hierarchical model (Swin's ``layers[i].blocks``). Empty for models without them (CNNs)."""
    if hasattr(model, "blocks"):
        stages = [model.blocks]
    else:
        stages = [getattr(layer, "blocks", []) for layer in getattr(model, "layers", [])]
    found = [[b for b in stage if hasattr(getattr(b, "attn", None), "num_heads")] for stage in stages]
    return [stage for stage in found if stage]


def attention_blocks(model: nn.Module) -> list[nn.Module]:
    """Every block of :func:`block_stages`, in order."""
    return [block for stage in block_stages(model) for block in stage]


def heads_per_block(model: nn.Module) -> list[int]:
    """Attention heads in each transformer block (empty for models without any)."""
    return [int(b.attn.num_heads) for b in attention_blocks(model)]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, img_size: int) -> int:
    """Multiply-accumulates of one forward pass on one image (matmul, conv and attention ops).

    The parameters are frozen while counting instead of running under ``no_grad``: there, a view of a
    parameter (SigLIP's pooling query, ``latent.expand``) claims ``requires_grad`` without a grad_fn,
    and the counter's module tracker fails on it.
    """
    param = next(model.parameters())
    x = torch.zeros(1, 3, img_size, img_size, device=param.device, dtype=param.dtype)
    was_training = model.training
    trainable = [p for p in model.parameters() if p.requires_grad]
    model.eval().requires_grad_(False)
    try:
        # PyTorch's math attention, whose matmuls the counter sees: it counts nothing for the fused CPU kernel, which
        # left attention out of unmerged models' MACs and in merged ones' (token_merging.py writes its own matmuls)
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
        for p in trainable:
            p.requires_grad_(True)
    return counter.get_total_flops() // 2
