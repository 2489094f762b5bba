"""Importance scores: one number per unit (a block, a channel, a single weight), higher = kept first.

Magnitude scores need only the weight; Taylor needs a gradient, Fisher an accumulated squared
gradient (empirical Fisher diagonal), Hessian a diagonal-Hessian estimate (see ``hutchinson_diag``).
``unit_scores`` computes any of them over any units, given how to sum a weight-shaped tensor over a
unit (``reduce``); ``block_scores`` is the b_o x b_i block case and returns the block-grid shape.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from tilesparse.errors import ConfigError
from tilesparse.patterns.block import BlockGeometry, block_counts, block_reduce

__all__ = [
    "SCORES",
    "GRADIENT_SCORES",
    "l1_scores",
    "l2_scores",
    "variance_scores",
    "taylor_scores",
    "fisher_scores",
    "hessian_scores",
    "hutchinson_diag",
    "block_scores",
    "unit_scores",
]


def l1_scores(weight: Tensor, geom: BlockGeometry) -> Tensor:
    """Sum of |w| over the block."""
    return block_reduce(weight.detach().abs(), geom)


def l2_scores(weight: Tensor, geom: BlockGeometry) -> Tensor:
    """Frobenius norm of the block."""
    return block_reduce(weight.detach().square(), geom).sqrt()


def variance_scores(weight: Tensor, geom: BlockGeometry) -> Tensor:
    """Population variance of the block's elements (ragged blocks use their own element count)."""
    w = weight.detach()
    n = block_counts(geom, device=w.device)
    mean = block_reduce(w, geom) / n
    return (block_reduce(w.square(), geom) / n - mean.square()).clamp_min(0.0)


def taylor_scores(weight: Tensor, grad: Tensor, geom: BlockGeometry) -> Tensor:
    """First-order Taylor estimate of the loss change when the block is zeroed: |sum(w * g)|."""
    return block_reduce(weight.detach() * grad, geom).abs()


def fisher_scores(weight: Tensor, grad_sq: Tensor, geom: BlockGeometry) -> Tensor:
    """0.5 * sum(F * w^2) with F the empirical Fisher diagonal (mean squared gradient)."""
    return 0.5 * block_reduce(grad_sq * weight.detach().square(), geom)


def hessian_scores(weight: Tensor, hess_diag: Tensor, geom: BlockGeometry) -> Tensor:
    """Optimal-brain-damage saliency 0.5 * sum(h_ii * w_i^2) over the block.

    A Hutchinson estimate of h_ii can be negative; the sum is kept signed (a negative saliency
    means the quadratic model predicts no loss increase, so the block goes first).
    """
    return 0.5 * block_reduce(hess_diag * weight.detach().square(), geom)


def hutchinson_diag(
    loss: Tensor, params: Sequence[Tensor], n_samples: int = 8, generator: torch.Generator | None = None
) -> list[Tensor]:
    """Hutchinson estimate of diag(H) of ``loss`` w.r.t. ``params``: mean over Rademacher z of z * (H z).

    ``loss`` must have been computed with a graph (create_graph-able). Unbiased: E[z * Hz] = diag(H).
    """
    if n_samples <= 0:
        raise ConfigError("hutchinson", [f"n_samples must be positive, got {n_samples}"])
    params = list(params)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    est = [torch.zeros_like(p) for p in params]
    for s in range(n_samples):
        zs = [torch.randint(0, 2, p.shape, generator=generator, device="cpu").to(p) * 2 - 1 for p in params]
        hz = torch.autograd.grad(grads, params, grad_outputs=zs, retain_graph=s < n_samples - 1)
        for e, z, h in zip(est, zs, hz, strict=True):
            e.add_(z * h)
    return [e / n_samples for e in est]


# Score name -> which extra statistic it needs (None: weight only).
SCORES = {"l1": None, "l2": None, "variance": None, "taylor": "grad", "fisher": "grad_sq", "hessian": "hess_diag"}
GRADIENT_SCORES = frozenset(k for k, v in SCORES.items() if v is not None)


def block_scores(name: str, weight: Tensor, geom: BlockGeometry, stat: Tensor | None = None) -> Tensor:
    """Dispatch by score name; ``stat`` is the gradient / squared gradient / Hessian diagonal."""
    if name not in SCORES:
        raise ConfigError("score", [f"unknown score {name!r}; expected one of {', '.join(SCORES)}"])
    if SCORES[name] is not None and stat is None:
        raise ConfigError("score", [f"score {name!r} needs {SCORES[name]} statistics (a data loader)"])
    if name == "l1":
        return l1_scores(weight, geom)
    if name == "l2":
        return l2_scores(weight, geom)
    if name == "variance":
        return variance_scores(weight, geom)
    assert stat is not None  # checked above: the gradient scores need it
    if name == "taylor":
        return taylor_scores(weight, stat, geom)
    if name == "fisher":
        return fisher_scores(weight, stat, geom)
    return hessian_scores(weight, stat, geom)


Reduce = Callable[[Tensor], Tensor]


def unit_scores(name: str, weight: Tensor, reduce: Reduce, stat: Tensor | None = None) -> Tensor:
    """Score ``name`` of every unit, where ``reduce`` sums a weight-shaped tensor over each unit
    (identity for single weights). Same formulas as the block scores above."""
    if name not in SCORES:
        raise ConfigError("score", [f"unknown score {name!r}; expected one of {', '.join(SCORES)}"])
    if SCORES[name] is not None and stat is None:
        raise ConfigError("score", [f"score {name!r} needs {SCORES[name]} statistics (a data loader)"])
    w = weight.detach()
    if name == "l1":
        return reduce(w.abs())
    if name == "l2":
        return reduce(w.square()).sqrt()
    if name == "variance":
        n = reduce(torch.ones_like(w))
        return (reduce(w.square()) / n - (reduce(w) / n).square()).clamp_min(0.0)
    assert stat is not None  # checked above
    if name == "taylor":
        return reduce(w * stat).abs()
    if name == "fisher":
        return 0.5 * reduce(stat * w.square())
    return 0.5 * reduce(stat * w.square())  # hessian: signed OBD saliency
