"""Gradient statistics for second-order / gradient block scores, gathered over a few batches.

``taylor``: mean gradient; ``fisher``: mean squared per-batch gradient (empirical Fisher diagonal);
``hessian``: Hutchinson estimate of the Hessian diagonal (see ``patterns.scores.hutchinson_diag``).
Statistics are taken w.r.t. the raw weight under the mask, with the model in eval mode (BatchNorm
uses its running statistics, so the estimate does not depend on batch composition).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from tilesparse.errors import ConfigError
from tilesparse.patterns.scores import SCORES, hutchinson_diag
from tilesparse.sparsify.sparsifier import Sparsifier

__all__ = ["gradient_stats", "hessian_traces"]

LossFn = Callable[[Tensor, Tensor], Tensor]


def _batches(loader: Iterable, n: int, device: torch.device | str) -> list[tuple[Tensor, Tensor]]:
    out = []
    for i, (x, y) in enumerate(loader):
        if i >= n:
            break
        out.append((x.to(device), y.to(device)))
    if not out:
        raise ConfigError("data", ["the data loader yielded no batches"])
    return out


def gradient_stats(
    sparsifier: Sparsifier, loader: Iterable, score: str, loss_fn: LossFn = nn.functional.cross_entropy,
    n_batches: int = 8, hutchinson_samples: int = 4, device: torch.device | str = "cpu", seed: int = 0,
) -> dict[str, Tensor] | None:
    """Per-layer statistic that ``score`` needs, or None for weight-only scores."""
    kind = SCORES.get(score)
    if kind is None:
        return None
    model = sparsifier.model
    was_training = model.training
    model.eval()
    names = list(sparsifier.layers)
    params = [sparsifier.layers[n].raw_weight for n in names]
    acc = [torch.zeros_like(p) for p in params]
    gen = torch.Generator().manual_seed(seed)
    batches = _batches(loader, n_batches, device)
    for x, y in batches:
        loss = loss_fn(model(x), y)
        if kind == "hess_diag":
            est = hutchinson_diag(loss, params, hutchinson_samples, gen)
        else:
            grads = torch.autograd.grad(loss, params)
            est = [g.square() if kind == "grad_sq" else g for g in grads]
        for a, e in zip(acc, est, strict=True):
            a.add_(e.detach())
    model.train(was_training)
    return {n: a / len(batches) for n, a in zip(names, acc, strict=True)}


def hessian_traces(
    sparsifier: Sparsifier, loader: Iterable, loss_fn: LossFn = nn.functional.cross_entropy,
    n_batches: int = 4, hutchinson_samples: int = 4, device: torch.device | str = "cpu", seed: int = 0,
) -> dict[str, float]:
    """Hutchinson estimate of tr(H) per layer, normalised by the layer's weight count."""
    diag = gradient_stats(sparsifier, loader, "hessian", loss_fn, n_batches, hutchinson_samples, device, seed)
    return {n: float(d.sum() / d.numel()) for n, d in diag.items()}
