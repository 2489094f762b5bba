"""Mappings of a problem onto an architecture, single and batched, with a validity check.

A mapping gives, per storage level ``i`` (innermost first):

- ``temporal[i][d]`` -- the factor of loop ``d`` iterated in time at level ``i``;
- ``spatial[i][d]`` -- the factor of loop ``d`` spread over level ``i``'s children (fan-out);
- ``order[i]`` -- the temporal loop order at level ``i``, a string of ``DIMS`` innermost first;
- ``keep[i]`` -- which tensors level ``i`` stores (the others bypass it).

The tile a level ``i`` instance holds has extent ``prod_{j <= i} temporal[j][d] * spatial[j][d]``
per loop; the factors of each loop over all levels multiply to its bound.

Batches (:class:`MappingBatch`) hold the same data as arrays ``(B, L, 8)`` for the vectorized model.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from tilesparse.costmodel.arch import Architecture
from tilesparse.costmodel.problem import DIMS, TENSORS, Problem
from tilesparse.errors import TilesparseError

__all__ = [
    "Invalid",
    "InvalidMappingError",
    "Mapping",
    "MappingBatch",
    "check_batch",
    "validate_mapping",
    "why_invalid",
]

D = len(DIMS)
CAPACITY_SLACK = 1e-9  # relative float slack when comparing tile bytes with a capacity


class InvalidMappingError(TilesparseError, ValueError):
    """A mapping violates the problem (factors) or the architecture (fan-out, capacity, holds)."""


class Invalid(IntEnum):
    """Reason codes of :func:`check_batch` (0 = valid)."""

    OK = 0
    FACTORS = 1
    ORDER = 2
    FANOUT = 3
    HOLDS = 4
    CAPACITY = 5


@dataclass(frozen=True)
class Mapping:
    temporal: tuple[tuple[int, ...], ...]
    spatial: tuple[tuple[int, ...], ...]
    order: tuple[str, ...]
    keep: tuple[frozenset[str], ...]

    @classmethod
    def build(cls, arch: Architecture, temporal: list[dict[str, int]],
              spatial: list[dict[str, int]] | None = None, order: list[str] | None = None,
              bypass: list[str] | None = None) -> Mapping:
        """Friendly constructor: per level dicts of factors (missing = 1), orders as strings of
        dims innermost first (default ``DIMS`` order reversed), bypass as strings of tensors."""
        n = arch.n_levels
        spatial = spatial or [{} for _ in range(n)]
        order = order or ["".join(reversed(DIMS))] * n
        bypass = bypass or [""] * n
        if not (len(temporal) == len(spatial) == len(order) == len(bypass) == n):
            raise InvalidMappingError(f"mapping: expected {n} levels for {arch.name}")
        def vec(f):
            bad = set(f) - set(DIMS)
            if bad:
                raise InvalidMappingError(f"mapping: unknown loop(s) {sorted(bad)}; loops are {DIMS}")
            return tuple(int(f.get(d, 1)) for d in DIMS)
        full = [o + "".join(d for d in DIMS if d not in o) for o in order]
        keep = tuple(frozenset(t for t in TENSORS if t not in b) for b in bypass)
        return cls(tuple(vec(t) for t in temporal), tuple(vec(s) for s in spatial), tuple(full), keep)

    def to_batch(self) -> MappingBatch:
        return MappingBatch.from_mappings([self])

    def describe(self, arch: Architecture | None = None) -> str:
        """The loop nest, outermost first (spatial loops shown as ``par``)."""
        lines = []
        for i in reversed(range(len(self.temporal))):
            name = arch.levels[i].name if arch else f"L{i}"
            keep = "".join(t for t in TENSORS if t in self.keep[i])
            lines.append(f"{name} [{keep}]")
            for d in reversed(self.order[i]):
                f = self.temporal[i][DIMS.index(d)]
                if f > 1:
                    lines.append(f"  for {d} in {f}")
            for d, f in zip(DIMS, self.spatial[i], strict=True):
                if f > 1:
                    lines.append(f"  par {d} in {f}")
        return "\n".join(lines)


@dataclass
class MappingBatch:
    temporal: np.ndarray  # (B, L, D) int64
    spatial: np.ndarray  # (B, L, D) int64
    order: np.ndarray  # (B, L, D) int64: dim index at each position, innermost first
    keep: np.ndarray  # (B, L, 3) bool

    def __len__(self) -> int:
        return self.temporal.shape[0]

    @classmethod
    def from_mappings(cls, maps: list[Mapping]) -> MappingBatch:
        idx = {d: i for i, d in enumerate(DIMS)}
        try:
            order = np.array([[[idx[c] for c in o] for o in m.order] for m in maps], dtype=np.int64)
        except KeyError as e:
            raise InvalidMappingError(f"mapping: unknown loop {e.args[0]!r} in an order") from None
        return cls(
            np.array([m.temporal for m in maps], dtype=np.int64),
            np.array([m.spatial for m in maps], dtype=np.int64),
            order,
            np.array([[[t in k for t in TENSORS] for k in m.keep] for m in maps], dtype=bool))

    def take(self, idx) -> MappingBatch:
        return MappingBatch(self.temporal[idx], self.spatial[idx], self.order[idx], self.keep[idx])

    def __getitem__(self, i: int) -> Mapping:
        return Mapping(
            tuple(tuple(int(v) for v in r) for r in self.temporal[i]),
            tuple(tuple(int(v) for v in r) for r in self.spatial[i]),
            tuple("".join(DIMS[j] for j in r) for r in self.order[i]),
            tuple(frozenset(t for t, k in zip(TENSORS, r, strict=True) if k) for r in self.keep[i]))

    @staticmethod
    def concat(batches: list[MappingBatch]) -> MappingBatch:
        return MappingBatch(*(np.concatenate([getattr(b, f) for b in batches])
                              for f in ("temporal", "spatial", "order", "keep")))


def tile_bytes(problem: Problem, batch: MappingBatch) -> np.ndarray:
    """Bytes of each tensor's tile at each level: (B, L, 3) (whether kept or not)."""
    ext = np.cumprod((batch.temporal * batch.spatial).astype(np.float64), axis=1)
    return problem.tile_elems(ext) * problem.bytes_per_word


def check_batch(problem: Problem, arch: Architecture, batch: MappingBatch) -> np.ndarray:
    """Reason code per mapping (``Invalid``; 0 = valid), vectorized. First failing check wins."""
    b = len(batch)
    code = np.zeros(b, dtype=np.int64)

    def flag(bad: np.ndarray, why: Invalid) -> None:
        code[(code == 0) & bad] = why

    prod = (batch.temporal * batch.spatial).prod(axis=1)
    flag((prod != np.array(problem.bounds)).any(axis=1) | (batch.temporal < 1).any(axis=(1, 2))
         | (batch.spatial < 1).any(axis=(1, 2)), Invalid.FACTORS)
    flag((np.sort(batch.order, axis=2) != np.arange(D)).any(axis=(1, 2)), Invalid.ORDER)
    fan = np.array([lv.fanout for lv in arch.levels])
    flag((batch.spatial.prod(axis=2) > fan).any(axis=1), Invalid.FANOUT)
    allowed = np.array([[t in lv.holds for t in TENSORS] for lv in arch.levels])
    flag((batch.keep & ~allowed).any(axis=(1, 2)) | ~batch.keep[:, -1].all(axis=1), Invalid.HOLDS)
    flag(_over_capacity(problem, arch, batch), Invalid.CAPACITY)
    return code


def _over_capacity(problem: Problem, arch: Architecture, batch: MappingBatch) -> np.ndarray:
    used = tile_bytes(problem, batch) * batch.keep  # (B, L, 3)
    over = np.zeros(len(batch), dtype=bool)
    for i, lv in enumerate(arch.levels):
        if lv.capacity_bytes is not None:
            over |= used[:, i].sum(axis=1) > lv.capacity_bytes * (1 + CAPACITY_SLACK)
        for t, cap in lv.tensor_capacity_bytes.items():
            over |= used[:, i, TENSORS.index(t)] > cap * (1 + CAPACITY_SLACK)
    return over


def why_invalid(problem: Problem, arch: Architecture, mapping: Mapping) -> str | None:
    """A sentence naming what is wrong with ``mapping``, or None if it is valid."""
    batch = mapping.to_batch()
    if batch.temporal.shape[1:] != (arch.n_levels, D):
        return (f"mapping has {batch.temporal.shape[1]} levels, {arch.name} has {arch.n_levels}")
    code = Invalid(int(check_batch(problem, arch, batch)[0]))
    if code is Invalid.OK:
        return None
    t, s = batch.temporal[0], batch.spatial[0]
    if code is Invalid.FACTORS:
        prod = (t * s).prod(axis=0)
        bad = [f"{d}: factors multiply to {p}, bound is {b}"
               for d, p, b in zip(DIMS, prod, problem.bounds, strict=True) if p != b]
        return "; ".join(bad) or "factors must be positive integers"
    if code is Invalid.ORDER:
        return f"each level's loop order must be a permutation of {''.join(DIMS)}: {mapping.order}"
    if code is Invalid.FANOUT:
        return "; ".join(f"{lv.name}: spatial factors use {int(s[i].prod())} > fanout {lv.fanout}"
                         for i, lv in enumerate(arch.levels) if s[i].prod() > lv.fanout)
    if code is Invalid.HOLDS:
        return "; ".join(f"{lv.name} may hold {''.join(lv.holds)} but the mapping keeps "
                         f"{''.join(sorted(mapping.keep[i]))}" for i, lv in enumerate(arch.levels)
                         if not mapping.keep[i] <= set(lv.holds) or
                         (i == arch.n_levels - 1 and len(mapping.keep[i]) < len(TENSORS)))
    return _capacity_reason(problem, arch, batch)


def _capacity_reason(problem: Problem, arch: Architecture, batch: MappingBatch) -> str:
    used = tile_bytes(problem, batch)[0] * batch.keep[0]
    msgs = []
    for i, lv in enumerate(arch.levels):
        if lv.capacity_bytes is not None and used[i].sum() > lv.capacity_bytes * (1 + CAPACITY_SLACK):
            parts = ", ".join(f"{t} {used[i, j]:,.0f}" for j, t in enumerate(TENSORS) if used[i, j])
            msgs.append(f"{lv.name}: tiles need {used[i].sum():,.0f} B ({parts}) > capacity "
                        f"{lv.capacity_bytes:,.0f} B")
        for t, cap in lv.tensor_capacity_bytes.items():
            j = TENSORS.index(t)
            if used[i, j] > cap * (1 + CAPACITY_SLACK):
                msgs.append(f"{lv.name}: {t} tile needs {used[i, j]:,.0f} B > its {cap:,.0f} B buffer")
    return "; ".join(msgs)


def validate_mapping(problem: Problem, arch: Architecture, mapping: Mapping) -> None:
    """Raise :class:`InvalidMappingError` naming the layer and the reason if ``mapping`` is invalid."""
    reason = why_invalid(problem, arch, mapping)
    if reason is not None:
        raise InvalidMappingError(f"{problem.name} on {arch.name}: invalid mapping: {reason}")
