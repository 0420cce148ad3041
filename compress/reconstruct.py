"""Least-squares reconstruction after surgery: refit each block's output projections so the pruned model
reproduces the unpruned one's outputs, on a few batches, with no training.

Removing heads (or MLP channels) removes terms from a sum: ``proj(concat(heads))``. The heads that stay
still carry most of what the removed ones did (heads are redundant), but ``proj`` was fitted to the full set.
Refitting ``proj`` on the kept heads' outputs, by linear least squares against the unpruned layer's output, is
the layer-wise reconstruction of Kwon et al. 2022 ("A Fast Post-Training Pruning Framework for Transformers").
Blocks are refitted in order, each on the inputs the already-refitted pruned model gives it, so each refit
also corrects what earlier blocks still got wrong. A ridge term pulls the solution towards the old weights,
which keeps the normal equations well posed when a layer's inputs are correlated.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from vitcompress.models import attention_blocks

RIDGE = 1e-3  # the pull towards the old weights, relative to the mean input energy per feature


class _Captured(Exception):
    """Raised by a hook once it has what it came for: the rest of the forward pass is not needed."""


def _capture(model: nn.Module, layer: nn.Linear, images: torch.Tensor, output: bool) -> torch.Tensor:
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


@torch.no_grad()
def refit_linear(student: nn.Module, layer: nn.Linear, reference: nn.Module, reference_layer: nn.Linear,
                 batches: Iterable[torch.Tensor]) -> tuple[float, float]:
    """Refit ``layer`` (in ``student``) so that it gives what ``reference_layer`` gives in ``reference``;
    return its relative error (squared error over the target's energy) before and after."""
    with_bias = layer.bias is not None  # the bias is fitted as the weight of a feature of ones
    d_in = layer.in_features + int(with_bias)
    gram = torch.zeros(d_in, d_in, dtype=torch.float64, device=layer.weight.device)
    cross = torch.zeros(d_in, layer.out_features, dtype=torch.float64, device=layer.weight.device)
    energy = 0.0
    for images in batches:
        x = _capture(student, layer, images, output=False)
        if with_bias:
            x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        y = _capture(reference, reference_layer, images, output=True)
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


def reconstruct(pruned: nn.Module, unpruned: nn.Module, batches: list[torch.Tensor],
                mlp: bool) -> list[tuple[float, float]]:
    """Refit every block's attention ``proj`` (and, with ``mlp``, its ``mlp.fc2``) of ``pruned`` in order, against
    the same layers of ``unpruned``; return each layer's relative error before and after its refit."""
    was_training = pruned.training
    pruned.eval()
    unpruned.eval()
    errors = []
    for block, ref in zip(attention_blocks(pruned), attention_blocks(unpruned), strict=True):
        layers = [(block.attn.proj, ref.attn.proj)]
        if mlp and hasattr(block.mlp, "fc2"):
            layers.append((block.mlp.fc2, ref.mlp.fc2))
        for layer, ref_layer in layers:
            errors.append(refit_linear(pruned, layer, unpruned, ref_layer, batches))
    pruned.train(was_training)
    return errors
