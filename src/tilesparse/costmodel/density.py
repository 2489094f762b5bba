"""Density models: how many non-zeros a tile holds, and how likely it is to be empty.

A tile is viewed as ``rows x cols`` (``cols`` along the reduction axis: input channels) repeated
``reps`` times (the kernel positions ``r x s`` of a weight tile, which share one block mask).
Every model exposes ``density`` (expected fraction of non-zeros) and ``prob_empty(rows, cols, reps)``
(vectorized over numpy arrays), the quantity skipping is conditioned on (Sparseloop).

- :class:`Uniform` -- non-zeros placed uniformly at random: tile occupancy is hypergeometric.
- :class:`NM` -- at most N non-zeros in every M consecutive values along ``cols`` (fixed-structured).
- :class:`Blocks` -- whole ``b_o x b_i`` blocks kept, a fixed fraction of blocks, placed at random.
- :class:`Hierarchical` -- HSS: levels nested (blocks, then N:M inside kept blocks); density is
  the product of the levels' densities.
- :class:`Actual` -- a real mask (e.g. from a sparsified model), counted tile by tile.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from tilesparse.errors import ConfigError


def expand_mask(mask, geom, ndim):
    from tilesparse.patterns.block import expand_mask as _expand

    return _expand(mask, geom, ndim)

__all__ = ["NM", "Actual", "Blocks", "Dense", "DensityModel", "Hierarchical", "Uniform", "check_density"]


def check_density(d: float, what: str = "density") -> float:
    if not (isinstance(d, (int, float, np.floating)) and 0.0 <= float(d) <= 1.0):
        raise ConfigError(what, [f"density must be in [0, 1], got {d!r}"])
    return float(d)


class DensityModel:
    """Base class: subclasses set ``density`` and implement ``prob_empty``."""

    density: float

    def prob_empty(self, rows: np.ndarray, cols: np.ndarray, reps: np.ndarray | int = 1) -> np.ndarray:
        raise NotImplementedError

    def prob_empty_run(self, length: int) -> float:
        """P(a run of ``length`` consecutive values along a fiber is all zero) (run-length format)."""
        return float(self.prob_empty(np.array([1]), np.array([length]))[0])


@dataclass(frozen=True)
class Dense(DensityModel):
    density: float = 1.0

    def prob_empty(self, rows, cols, reps=1):
        return np.zeros(np.broadcast(np.asarray(rows), np.asarray(cols)).shape)


@dataclass(frozen=True)
class Uniform(DensityModel):
    """``round(total * density)`` non-zeros among ``total`` values, uniformly at random. Without
    ``total`` the tensor is taken as infinite (binomial occupancy)."""

    density: float
    total: int | None = None

    def __post_init__(self) -> None:
        check_density(self.density, "Uniform.density")

    def prob_empty(self, rows, cols, reps=1):
        n = np.asarray(rows, dtype=np.float64) * np.asarray(cols) * np.asarray(reps)
        if self.total is None:
            return (1.0 - self.density) ** n
        nnz = round(self.total * self.density)
        return stats.hypergeom.pmf(0, self.total, nnz, np.minimum(n, self.total).astype(np.int64))


@dataclass(frozen=True)
class NM(DensityModel):
    """N:M structured sparsity along the reduction axis (exactly N non-zeros per group of M)."""

    n: int
    m: int
    density: float = field(init=False)

    def __post_init__(self) -> None:
        if not (1 <= self.m and 0 <= self.n <= self.m):
            raise ConfigError("NM", [f"need 0 <= N <= M and M >= 1, got {self.n}:{self.m}"])
        object.__setattr__(self, "density", self.n / self.m)

    def prob_empty(self, rows, cols, reps=1):
        # An aligned tile narrower than M sits inside one group per fiber; each of its
        # rows*reps fibers is empty with the hypergeometric probability, independently.
        c = np.minimum(np.asarray(cols, dtype=np.int64), self.m)
        p_fiber = stats.hypergeom.pmf(0, self.m, self.n, c)
        wide = np.asarray(cols) > self.m  # spans several groups: empty only if N == 0
        p_fiber = np.where(wide, 1.0 if self.n == 0 else 0.0, p_fiber)
        return p_fiber ** (np.asarray(rows, dtype=np.float64) * np.asarray(reps))


@dataclass(frozen=True)
class Blocks(DensityModel):
    """Block sparsity: a tensor of ``shape`` (rows x cols) cut into ``bo x bi`` blocks, of which
    ``round(n_blocks * density)`` are kept (uniformly at random); ``reps`` copies share the mask."""

    density: float
    bo: int
    bi: int
    shape: tuple[int, int]

    def __post_init__(self) -> None:
        check_density(self.density, "Blocks.density")
        if self.bo < 1 or self.bi < 1:
            raise ConfigError("Blocks", [f"block shape must be positive, got {self.bo}x{self.bi}"])

    @property
    def n_blocks(self) -> int:
        return -(-self.shape[0] // self.bo) * -(-self.shape[1] // self.bi)

    def prob_empty(self, rows, cols, reps=1):
        # An aligned tile covers ceil(rows/bo) x ceil(cols/bi) blocks (one if it is smaller).
        span = np.ceil(np.asarray(rows) / self.bo) * np.ceil(np.asarray(cols) / self.bi)
        nb = self.n_blocks
        kept = round(nb * self.density)
        return stats.hypergeom.pmf(0, nb, kept, np.minimum(span, nb).astype(np.int64))


@dataclass(frozen=True)
class Hierarchical(DensityModel):
    """Hierarchical structured sparsity (HSS): ``levels`` outermost first, each level's rule
    applied inside every unit the level above keeps. Density is the product of the levels'
    densities (every level is fixed-structured or a fixed fraction). A tile is empty when any
    level empties it; the levels are taken as independent (exact when the inner levels are N:M
    runs that never empty a kept block, as in ``8x8@0.5/2:4``)."""

    levels: tuple[DensityModel, ...]
    density: float = field(init=False)

    def __post_init__(self) -> None:
        if len(self.levels) < 2:
            raise ConfigError("Hierarchical", [f"needs at least two levels, got {len(self.levels)}"])
        object.__setattr__(self, "density", float(np.prod([lv.density for lv in self.levels])))

    @property
    def outer(self) -> DensityModel:
        return self.levels[0]

    def prob_empty(self, rows, cols, reps=1):
        nonempty = np.ones(np.broadcast(np.asarray(rows), np.asarray(cols)).shape)
        for lv in self.levels:
            nonempty = nonempty * (1.0 - lv.prob_empty(rows, cols, reps))
        return 1.0 - nonempty


class Actual(DensityModel):
    """A real mask (rows = out channels, cols = in channels; a 4-D conv mask is reduced over the
    kernel positions). ``prob_empty`` is the fraction of aligned tiles that are all zero."""

    def __init__(self, mask: np.ndarray, name: str = "mask"):
        m = np.asarray(mask)
        if m.ndim == 4:
            m = m.reshape(m.shape[0], m.shape[1], -1).any(axis=2)
        if m.ndim != 2 or m.size == 0:
            raise ConfigError(name, [f"mask must be 2-D (out x in) or 4-D, got shape {m.shape}"])
        self.mask = m.astype(bool)
        self.density = float(self.mask.mean())
        self._cache: dict[tuple[int, int], float] = {}

    @classmethod
    def from_block_mask(cls, block_mask: np.ndarray, weight_shape: tuple[int, ...],
                        block: tuple[int, int], groups: int = 1, name: str = "mask") -> Actual:
        """The element mask (out x in-per-group) of a block mask over a weight, as the sparsifier
        and the compiler see it (``tilesparse.patterns.block.expand_mask``)."""
        import torch

        from tilesparse.patterns.block import BlockGeometry, parse_block_shape

        geom = BlockGeometry.of_weight(tuple(weight_shape), parse_block_shape(tuple(block)), groups)
        m = expand_mask(torch.as_tensor(np.asarray(block_mask, dtype=bool)), geom, ndim=2)
        return cls(m.numpy(), name)

    @classmethod
    def from_graph(cls, graph, node: str) -> Actual:
        """The mask a (sparsified) IR graph carries for a conv2d / linear node."""
        n = graph.node(node)
        return cls.from_block_mask(graph.param(node, "mask"), graph.param(node, "weight").shape,
                                   n.attrs["block"], int(n.attrs.get("groups", 1)), name=node)

    def _empty_fraction(self, r: int, c: int) -> float:
        key = (r, c)
        if key not in self._cache:
            rows, cols = self.mask.shape
            r, c = max(1, min(r, rows)), max(1, min(c, cols))
            gr, gc = -(-rows // r), -(-cols // c)
            padded = np.zeros((gr * r, gc * c), dtype=bool)
            padded[:rows, :cols] = self.mask
            occupied = padded.reshape(gr, r, gc, c).any(axis=(1, 3))
            self._cache[key] = float(1.0 - occupied.mean())
        return self._cache[key]

    def prob_empty(self, rows, cols, reps=1):
        r, c = np.broadcast_arrays(np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64))
        pairs, inv = np.unique(np.stack([r.ravel(), c.ravel()], axis=1), axis=0, return_inverse=True)
        vals = np.array([self._empty_fraction(int(a), int(b)) for a, b in pairs])
        return vals[inv.ravel()].reshape(r.shape)

    def prob_empty_run(self, length: int) -> float:
        return self._empty_fraction(1, length)
