"""Least-squares reconstruction after surgery: refit each block's output projections so the pruned model
reproduces the unpruned one's residual stream, on a few batches, with no training.

Removing heads (or MLP channels) removes terms from a sum: ``proj(concat(heads))``. The heads that stay
still carry most of what the removed ones did (heads are redundant), but ``proj`` was fitted to the full set.
Refitting ``proj`` on the kept heads' outputs by linear least squares is the layer-wise reconstruction of
Kwon et al. 2022 ("A Fast Post-Training Pruning Framework for Transformers"). Blocks are refitted in order,
each on the inputs the already-refitted pruned model gives it.

The target is the unpruned model's residual stream, not the layer's own output: ``proj`` (and ``fc2``) add
``g * output`` to the stream (``g``: a layer scale, or 1), so the pruned layer should output
``(stream after, unpruned - stream before, pruned) / g``: what the unpruned layer gave, plus what earlier
blocks still got wrong. That is why ``fc2`` is refitted even when only heads go: it can absorb the attention's
remaining error (on a converged CIFAR-10 ViT with half its heads gone: 63.5 % right after the cut, against
59.6 % fitting ``proj`` alone to its own output). Where a block does not add a layer's output to the stream
that way (Swin's attention works on shifted windows), the layer is fitted to the unpruned layer's output.
A ridge term pulls the solution towards the old weights, which keeps the normal equations well posed when
a layer's inputs are correlated.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from vitcompress.models import attention_blocks

RIDGE = 1e-3  # the pull towards the old weights, relative to the mean input energy per feature
ADD_TOLERANCE = 1e-4  # how exactly ``stream after = stream before + g * output`` must hold to fit to the stream


class _Captured(Exception):
    """Raised by a hook once it has what it came for: the rest of the forward pass is not needed."""


def _capture(model: nn.Module, layer: nn.Module, images: torch.Tensor, output: bool) -> torch.Tensor:
    """``layer``'s input (or output) as ``model`` computes it on ``images``, flattened to rows of features."""
    seen: list[torch.Tensor] = []

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        seen.append((out if output else inputs[0]).detach())
        raise _Captured

    handle = layer.register_forward_hook(hook)
    try:
        model(images)
    except _Captured:
        pass
    finally:
        handle.remove()
    return seen[0].reshape(-1, seen[0].shape[-1]).double()


Target = Callable[[torch.Tensor], torch.Tensor]  # images -> what the refitted layer should output, as rows


@torch.no_grad()
def refit_linear(student: nn.Module, layer: nn.Linear, target: Target,
                 batches: Iterable[torch.Tensor]) -> tuple[float, float]:
    """Refit ``layer`` (in ``student``) so that it outputs ``target(images)``; return its relative error (squared
    error over the target's energy) before and after."""
    with_bias = layer.bias is not None  # the bias is fitted as the weight of a feature of ones
    d_in = layer.in_features + int(with_bias)
    gram = torch.zeros(d_in, d_in, dtype=torch.float64, device=layer.weight.device)
    cross = torch.zeros(d_in, layer.out_features, dtype=torch.float64, device=layer.weight.device)
    energy = 0.0
    for images in batches:
        x = _capture(student, layer, images, output=False)
        if with_bias:
            x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        y = target(images)
        gram += x.T @ x
        cross += x.T @ y
        energy += float(y.pow(2).sum())
    old = layer.weight.double().T  # (d_in, out)
    if with_bias:
        old = torch.cat([old, layer.bias.double().unsqueeze(0)], dim=0)
    ridge = RIDGE * float(gram.diagonal().mean())
    eye = torch.eye(d_in, dtype=torch.float64, device=gram.device)
    new = torch.linalg.solve(gram + ridge * eye, cross + ridge * old)

    def relative_error(w: torch.Tensor) -> float:  # ||x w - y||^2 / ||y||^2 from the accumulated sums
        return max(float((w.T @ gram @ w).trace() - 2 * (w * cross).sum()) + energy, 0.0) / max(energy, 1e-30)

    errors = relative_error(old), relative_error(new)
    layer.weight.copy_(new[:layer.in_features].T.to(layer.weight.dtype))
    if with_bias:
        layer.bias.copy_(new[-1].to(layer.bias.dtype))
    return errors


Point = tuple[nn.Module, bool]  # where the residual stream is read: a module's input (False) or output (True)


def _sublayers(block: nn.Module) -> list[tuple[nn.Linear, Point, Point]]:
    """The block's output projections, each with where the residual stream is before and after it adds to it
    (pre-norm blocks: the block's input, ``norm2``'s input, the block's output)."""
    norm2 = getattr(block, "norm2", None)
    found = [(block.attn.proj, (block, False), (norm2, False))]
    if hasattr(block.mlp, "fc2"):
        found.append((block.mlp.fc2, (norm2, False), (block, True)))
    return found


def _stream_scale(model: nn.Module, layer: nn.Linear, before: Point, after: Point,
                  images: torch.Tensor) -> torch.Tensor | None:
    """``g`` such that ``after = before + g * layer's output`` in ``model``, per channel; None where the block does
    not add the layer's output to the stream that way (other shapes, token orders or a norm in between)."""
    if before[0] is None or after[0] is None:
        return None
    y = _capture(model, layer, images, output=True)
    delta = _capture(model, after[0], images, after[1]) - _capture(model, before[0], images, before[1])
    if delta.shape != y.shape:
        return None
    scale = (delta * y).sum(0) / y.pow(2).sum(0).clamp_min(1e-30)
    exact = float((delta - scale * y).pow(2).sum()) <= ADD_TOLERANCE * max(float(delta.pow(2).sum()), 1e-30)
    return scale if exact and bool((scale.abs() > 1e-12).all()) else None


def _target(student: nn.Module, reference: nn.Module, ref_layer: nn.Linear, student_before: Point,
            ref_before: Point, ref_after: Point, probe: torch.Tensor) -> Target:
    """What the student's layer should output: the reference's residual stream after the layer minus the
    student's before it, over ``g``, where the block adds the layer's output to the stream (checked on the
    reference with ``probe``); else the reference layer's own output."""
    scale = _stream_scale(reference, ref_layer, ref_before, ref_after, probe)
    if scale is None:
        return lambda images: _capture(reference, ref_layer, images, output=True)

    def stream_gap(images: torch.Tensor) -> torch.Tensor:
        wanted = _capture(reference, ref_after[0], images, ref_after[1])
        return (wanted - _capture(student, student_before[0], images, student_before[1])) / scale

    return stream_gap


def reconstruct(pruned: nn.Module, unpruned: nn.Module, batches: list[torch.Tensor]) -> list[tuple[float, float]]:
    """Refit every block's attention ``proj`` and ``mlp.fc2`` of ``pruned`` in order, against the residual stream
    of ``unpruned`` (module docstring); return each layer's relative error before and after its refit."""
    was_training = pruned.training
    pruned.eval()
    unpruned.eval()
    errors = []
    for block, ref in zip(attention_blocks(pruned), attention_blocks(unpruned), strict=True):
        for (layer, before, _), (ref_layer, ref_before, ref_after) in zip(_sublayers(block), _sublayers(ref), strict=True):
            target = _target(pruned, unpruned, ref_layer, before, ref_before, ref_after, batches[0])
            errors.append(refit_linear(pruned, layer, target, batches))
    pruned.train(was_training)
    return errors
