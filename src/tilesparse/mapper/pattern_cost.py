"""A sparsity pattern's cost on one layer: a mapping searched per term of the pattern
(``costmodel.pattern.pattern_terms``), the terms' cycles, energy, weight bytes and MACs summed.

It lives with the mappers, not in ``costmodel``, because it searches: the cost model below only
evaluates a given mapping.
"""

from __future__ import annotations

from dataclasses import dataclass

from tilesparse.costmodel.pattern import pattern_terms
from tilesparse.costmodel.problem import Problem

__all__ = ["PatternCost", "energy"]


@dataclass(frozen=True)
class PatternCost:
    """A pattern's cost on one layer: each term mapped on its own, figures summed."""

    pattern: str
    terms: tuple[str, ...]
    cycles: float
    energy_pj: float
    weight_bytes: float
    effective_macs: float

    @property
    def edp(self) -> float:
        return self.energy_pj * self.cycles


def energy(layer: Problem, pattern: str, arch: object = "aie2", *, sparsity: float | None = None,
           hw: object = None, mapper: str = "genetic", budget: int = 2000, objective: str = "energy",
           seed: int = 0) -> PatternCost:
    """Search a mapping per term of ``pattern`` on ``arch`` (a cost-model architecture or its
    spec) and return the summed cycles, energy (pJ), packed weight bytes and MACs performed.

    ``hw`` is the array description the pattern's rules come from; for an ``aie2:RxC`` arch
    it defaults to that array."""
    from tilesparse.costmodel.arch import load_arch
    from tilesparse.mapper import map_network

    arch_obj = load_arch(arch)  # type: ignore[arg-type]
    if hw is None and isinstance(arch, str) and arch.lower().startswith("aie2:"):
        hw = arch.partition(":")[2]
    terms = pattern_terms(layer, pattern, sparsity=sparsity, hw=hw)
    res = map_network([t.problem for t in terms], arch_obj, sparse_specs=[t.spec for t in terms],
                      mapper=mapper, budget=budget, objective=objective, seed=seed, progress=False)
    return PatternCost(pattern, tuple(t.label for t in terms), sum(r.breakdown.cycles for r in res),
                       sum(r.breakdown.energy_pj for r in res), sum(t.weight_bytes() for t in terms),
                       sum(r.breakdown.effective_macs for r in res))
