"""Warm start across layers: a replay buffer of the best mappings of layers already mapped;
a new layer's search starts from the mappings of the most similar layers, repaired to its shape
(Kao et al., IISWC 2022)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tilesparse.costmodel.mapping import Mapping, MappingBatch
from tilesparse.costmodel.problem import Problem
from tilesparse.mapper.space import Genomes, MapSpace

__all__ = ["ReplayBuffer"]


@dataclass
class ReplayBuffer:
    """Best mappings per mapped layer; ``seeds`` adapts the closest layers' mappings."""

    layers_kept: int = 32
    entries: list[tuple[Problem, list[Mapping]]] = field(default_factory=list)

    def add(self, problem: Problem, mappings: list[Mapping]) -> None:
        if mappings:
            self.entries.append((problem, list(mappings)))
            self.entries = self.entries[-self.layers_kept:]

    def __len__(self) -> int:
        return len(self.entries)

    def seeds(self, space: MapSpace, n: int, rng: np.random.Generator) -> Genomes | None:
        """Up to ``n`` repaired genomes for ``space``'s problem, nearest layers first (distance =
        L1 over log loop bounds, stride included)."""
        if not self.entries:
            return None
        target = _signature(space.problem)
        dist = [np.abs(_signature(p) - target).sum() for p, _ in self.entries]
        maps: list[Mapping] = []
        for i in np.argsort(dist):
            maps += self.entries[i][1]
            if len(maps) >= n:
                break
        maps = [m for m in maps[:n] if len(m.temporal) == space.n_levels]
        if not maps:
            return None
        g = space.from_batch(MappingBatch.from_mappings(maps))
        return space.repair(g, rng)


def _signature(p: Problem) -> np.ndarray:
    return np.log(np.array([*p.bounds, *p.stride], dtype=np.float64))
