"""Map-space search for the cost model: random, random-pruned, exhaustive, genetic (GAMMA),
simulated annealing, and gradient search on a learned surrogate (Mind Mappings); warm start across
layers and a sparsity-aware objective.

>>> from tilesparse.costmodel import Problem, load_arch
>>> from tilesparse.mapper import search
>>> r = search(Problem.matmul(16, 16, 16), load_arch("eyeriss"), mapper="genetic", budget=500)
>>> r.n_evals <= 500
True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from tilesparse.costmodel.arch import Architecture
from tilesparse.costmodel.density import Uniform, check_density
from tilesparse.costmodel.model import SparseSpec
from tilesparse.costmodel.problem import Problem
from tilesparse.errors import ConfigError
from tilesparse.mapper.base import Evaluator, NoValidMappingError, SearchResult
from tilesparse.mapper.search import (
    annealing,
    exhaustive,
    genetic,
    random_search,
    space_size,
)
from tilesparse.mapper.space import MapSpace
from tilesparse.mapper.surrogate import surrogate_search
from tilesparse.mapper.warmstart import ReplayBuffer

__all__ = [
    "MAPPERS",
    "Evaluator",
    "MapSpace",
    "NoValidMappingError",
    "ReplayBuffer",
    "SearchResult",
    "map_network",
    "search",
    "space_size",
    "sparsity_specs",
]

WARM_SEEDS = 16  # mappings taken from the replay buffer to seed a layer's search


def _random_unpruned(space, ev, seed=0, init=None):
    return random_search(space, ev, seed, pruned=False)


def _exhaustive(space, ev, seed=0, init=None):
    return exhaustive(space, ev, seed)


MAPPERS: dict[str, Callable[..., SearchResult]] = {
    "random": _random_unpruned,
    "random-pruned": random_search,
    "exhaustive": _exhaustive,
    "genetic": genetic,
    "annealing": annealing,
    "surrogate": surrogate_search,
}


def sparsity_specs(base: SparseSpec | None, densities: Sequence[float]) -> list[SparseSpec]:
    """One spec per weight density (uniform random), keeping ``base``'s formats and action."""
    base = base or SparseSpec(action="skip")
    return [replace(base, density={**base.density, "W": Uniform(check_density(d, "densities"))})
            for d in densities]


def search(problem: Problem, arch: Architecture, *, mapper: str = "genetic", budget: int = 10_000,
           objective: str = "edp", sparse: SparseSpec | None = None,
           densities: Sequence[float] | None = None, seed: int = 0, progress: bool = False,
           warm: ReplayBuffer | None = None, search_bypass: bool = True) -> SearchResult:
    """Best mapping of ``problem`` on ``arch`` found by ``mapper`` within ``budget`` evaluations.

    ``densities`` makes the objective sparsity-aware (geometric mean over those weight densities);
    ``warm`` seeds the search with adapted mappings of earlier layers and records this one."""
    if mapper not in MAPPERS:
        raise ConfigError("mapper", [f"unknown mapper {mapper!r}; expected one of {', '.join(MAPPERS)}"])
    space = MapSpace(problem, arch, search_bypass=search_bypass)
    specs = sparsity_specs(sparse, densities) if densities else sparse
    ev = Evaluator(space, objective, specs, budget, progress, desc=f"{mapper} {problem.name}")
    init = warm.seeds(space, WARM_SEEDS, np.random.default_rng(seed)) if warm is not None else None
    result = MAPPERS[mapper](space, ev, seed, init=init)
    if warm is not None:
        warm.add(problem, result.top)
    return result


def map_network(problems: Sequence[Problem], arch: Architecture, *, warm_start: bool = True,
                sparse_specs: Sequence[SparseSpec | None] | None = None, **kw) -> list[SearchResult]:
    """Map every layer in order; with ``warm_start`` each search is seeded from the earlier ones.
    ``sparse_specs`` gives each layer its own sparsity (e.g. its actual mask). Layers with
    identical shapes and sparsity reuse the first result (no extra evaluations)."""
    if sparse_specs is not None and len(sparse_specs) != len(problems):
        raise ConfigError("sparse_specs", [f"expected {len(problems)} specs, got {len(sparse_specs)}"])
    warm = ReplayBuffer() if warm_start else None
    done: dict[tuple, SearchResult] = {}
    out = []
    for i, p in enumerate(problems):
        spec_kw = {} if sparse_specs is None else {"sparse": sparse_specs[i]}
        key = (p.bounds, p.stride, p.dilation, p.bits, id(spec_kw.get("sparse")))
        if key not in done:
            done[key] = search(p, arch, warm=warm, **kw, **spec_kw)
        out.append(done[key])
    return out
