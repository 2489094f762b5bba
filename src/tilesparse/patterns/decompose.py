"""TASD: approximate a weight by a sum of structured-sparse terms, with no retraining.

Greedy on the residual: term 1 is the first pattern's magnitude mask applied to the weight, term 2
the second pattern's mask applied to what term 1 left, and so on. Every term obeys its own pattern
(each could run on a structured-sparse unit) and the terms sum to the approximation. ``search_terms``
tries term lists and returns, for a density budget, the one with the smallest relative error.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from tilesparse.errors import ConfigError
from tilesparse.patterns.family import NM, Pattern, prune_mask

__all__ = ["Decomposition", "decompose", "search_terms", "DEFAULT_TERMS"]

# Candidate terms for the search: the N:M patterns the AIE-ML sparse unit and NVIDIA's take, and finer.
DEFAULT_TERMS: tuple[Pattern, ...] = (NM(2, 4), NM(1, 4), NM(1, 8), NM(2, 8), NM(1, 16))


@dataclass(frozen=True)
class Decomposition:
    """Terms (each weight-shaped, zero where its pattern zeroes) and how well they sum to the weight.
    ``masks``: each term's keep-mask (bool, weight-shaped), the slots its pattern lets it use; a term
    may hold a zero inside its mask (a weight that was zero), which fine-tuning can move."""

    patterns: tuple[Pattern, ...]
    terms: tuple[Tensor, ...]
    weight_norm: float
    masks: tuple[Tensor, ...] = ()

    @property
    def approximation(self) -> Tensor:
        return torch.stack(self.terms).sum(0)

    def relative_error(self, weight: Tensor) -> float:
        """||W - sum(terms)|| / ||W|| (Frobenius)."""
        return float((weight.detach() - self.approximation).norm() / max(self.weight_norm, 1e-30))

    @property
    def term_density(self) -> float:
        """Sum of the terms' densities: the work a unit executing each term does, relative to dense."""
        return sum(float((t != 0).float().mean()) for t in self.terms)

    @property
    def support_density(self) -> float:
        """Fraction of weights nonzero in the approximation (terms may overlap only where zero)."""
        return float((self.approximation != 0).float().mean())


def decompose(weight: Tensor, terms: Sequence[Pattern], groups: int = 1) -> Decomposition:
    """Greedy TASD of ``weight`` into one structured-sparse term per pattern of ``terms``.

    >>> w = torch.tensor([[4.0, -3.0, 2.0, 1.0]])
    >>> d = decompose(w, [NM(2, 4), NM(1, 4)])
    >>> [t.tolist() for t in d.terms]
    [[[4.0, -3.0, 0.0, 0.0]], [[0.0, 0.0, 2.0, 0.0]]]
    """
    if not terms:
        raise ConfigError("decompose", ["expected at least one term pattern, e.g. [NM(2, 4), NM(1, 4)]"])
    w = weight.detach()
    for p in terms:
        if p.free_levels():
            raise ConfigError("decompose", [f"term {p.spec()} has a free sparsity; give it '@s'"])
        why = p.eligible(tuple(w.shape), groups)
        if why is not None:
            raise ConfigError("decompose", [f"term {p.spec()} does not fit weight {tuple(w.shape)}: {why}"])
    residual, out, masks = w.clone(), [], []
    for p in terms:
        mask = prune_mask(p, residual, groups).expand(w.shape)
        term = torch.where(mask, residual, torch.zeros_like(residual))
        out.append(term)
        masks.append(mask.clone())
        residual = residual - term
    return Decomposition(tuple(terms), tuple(out), float(w.norm()), tuple(masks))


def search_terms(weight: Tensor, max_density: float, candidates: Sequence[Pattern] = DEFAULT_TERMS,
                 max_terms: int = 3, groups: int = 1) -> Decomposition:
    """The term list (up to ``max_terms`` candidates, order kept as tried) with the lowest relative
    error whose nominal term density is at most ``max_density``."""
    best: tuple[float, Decomposition] | None = None
    for k in range(1, max_terms + 1):
        for combo in itertools.product(candidates, repeat=k):
            nominal = sum(1.0 - (p.nominal_sparsity() or 0.0) for p in combo)
            if nominal > max_density + 1e-12:
                continue
            d = decompose(weight, combo, groups)
            err = d.relative_error(weight)
            if best is None or err < best[0]:
                best = (err, d)
    if best is None:
        raise ConfigError("search_terms", [f"no list of up to {max_terms} terms from "
                                           f"{', '.join(p.spec() for p in candidates)} fits density {max_density:g}"])
    return best[1]
