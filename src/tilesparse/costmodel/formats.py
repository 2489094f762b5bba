"""Compressed formats for a ``rows x cols`` tile (``cols`` = the fiber / reduction axis).

Each format gives the data words it stores and its metadata bits, either exactly for a real mask
(:meth:`Format.exact`) or in expectation under a density model (:meth:`Format.expected`, vectorized).

================  =========================================================================
format            metadata bits (F = rows fibers, S = cols per fiber, nnz non-zeros)
================  =========================================================================
uncompressed      0 (stores all F*S words)
bitmask (UB)      F*S -- one bit per position
coordinate (CP)   nnz * ceil(log2 S) -- the column coordinate of every non-zero
offset_pairs      (F+1) * ceil(log2(nnz+1)) + nnz * ceil(log2 S) -- fiber offsets (UOP) + CP
run_length        entries * r; entries = nnz + escapes, a run of z zeros needs floor(z / 2**r)
                  escape entries (each stores 2**r - 1 zeros and one explicit zero word)
block_index       block CSR over b_o x b_i blocks: (Fb+1)*ceil(log2(nb+1)) + nb*ceil(log2 Sb),
                  data = nb * b_o * b_i (blocks stored dense)
================  =========================================================================
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tilesparse.costmodel.density import DensityModel
from tilesparse.errors import ConfigError

__all__ = [
    "FORMAT_NAMES",
    "Bitmask",
    "BlockIndex",
    "Coordinate",
    "Format",
    "OffsetPairs",
    "RunLength",
    "Uncompressed",
    "make_format",
]


def index_bits(n: np.ndarray | int) -> np.ndarray:
    """Bits to address ``n`` distinct positions: ceil(log2 n), 0 for n <= 1."""
    return np.ceil(np.log2(np.maximum(np.asarray(n, dtype=np.float64), 1.0)))


def _as_mask(mask: np.ndarray) -> np.ndarray:
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise ConfigError("format", [f"expected a 2-D mask (rows x cols), got shape {m.shape}"])
    return m


class Format:
    name = "format"

    def exact(self, mask: np.ndarray) -> tuple[int, int]:
        """(data words, metadata bits) to store ``mask``'s non-zeros."""
        raise NotImplementedError

    def expected(self, rows, cols, dm: DensityModel, reps=1) -> tuple[np.ndarray, np.ndarray]:
        """Expected (data words, metadata bits) of ``reps`` tiles of rows x cols under ``dm``."""
        raise NotImplementedError


@dataclass(frozen=True)
class Uncompressed(Format):
    name = "uncompressed"

    def exact(self, mask):
        return int(_as_mask(mask).size), 0

    def expected(self, rows, cols, dm, reps=1):
        words = np.asarray(rows, dtype=np.float64) * cols * reps
        return words, np.zeros_like(words)


@dataclass(frozen=True)
class Bitmask(Format):
    name = "bitmask"

    def exact(self, mask):
        m = _as_mask(mask)
        return int(m.sum()), int(m.size)

    def expected(self, rows, cols, dm, reps=1):
        n = np.asarray(rows, dtype=np.float64) * cols * reps
        return n * dm.density, n


@dataclass(frozen=True)
class Coordinate(Format):
    name = "coordinate"

    def exact(self, mask):
        m = _as_mask(mask)
        nnz = int(m.sum())
        return nnz, int(nnz * index_bits(m.shape[1]))

    def expected(self, rows, cols, dm, reps=1):
        nnz = np.asarray(rows, dtype=np.float64) * cols * reps * dm.density
        return nnz, nnz * index_bits(cols)


@dataclass(frozen=True)
class OffsetPairs(Format):
    name = "offset_pairs"

    def exact(self, mask):
        m = _as_mask(mask)
        nnz = int(m.sum())
        return nnz, int((m.shape[0] + 1) * index_bits(nnz + 1) + nnz * index_bits(m.shape[1]))

    def expected(self, rows, cols, dm, reps=1):
        rows = np.asarray(rows, dtype=np.float64)
        nnz = rows * cols * dm.density  # per rep
        meta = (rows + 1) * index_bits(nnz + 1) + nnz * index_bits(cols)
        return nnz * reps, meta * reps


@dataclass(frozen=True)
class RunLength(Format):
    run_bits: int = 4
    name = "run_length"

    def exact(self, mask):
        m = _as_mask(mask)
        period = 2**self.run_bits  # positions one escape entry consumes
        entries = 0
        for row in m:
            idx = np.flatnonzero(row)
            if idx.size:
                runs = np.diff(np.concatenate([[-1], idx])) - 1  # zeros before each non-zero
                entries += idx.size + int((runs // period).sum())
        return entries, entries * self.run_bits

    def expected(self, rows, cols, dm, reps=1):
        d = dm.density
        period = 2**self.run_bits
        q = 1.0 - d
        # Zero runs before a non-zero are geometric: E[floor(z/period)] = q^P / (1 - q^P).
        esc_per_nnz = 0.0 if d == 0 else q**period / (1.0 - q**period)
        nnz = np.asarray(rows, dtype=np.float64) * cols * reps * d
        entries = nnz * (1.0 + esc_per_nnz)
        return entries, entries * self.run_bits


@dataclass(frozen=True)
class BlockIndex(Format):
    bo: int = 8
    bi: int = 8
    name = "block_index"

    def exact(self, mask):
        m = _as_mask(mask)
        fb, sb = -(-m.shape[0] // self.bo), -(-m.shape[1] // self.bi)
        pad = np.zeros((fb * self.bo, sb * self.bi), dtype=bool)
        pad[: m.shape[0], : m.shape[1]] = m
        nb = int(pad.reshape(fb, self.bo, sb, self.bi).any(axis=(1, 3)).sum())
        meta = (fb + 1) * index_bits(nb + 1) + nb * index_bits(sb)
        return nb * self.bo * self.bi, int(meta)

    def expected(self, rows, cols, dm, reps=1):
        rows = np.asarray(rows, dtype=np.float64)
        fb, sb = np.ceil(rows / self.bo), np.ceil(np.asarray(cols) / self.bi)
        p_kept = 1.0 - dm.prob_empty(np.minimum(rows, self.bo), np.minimum(cols, self.bi), 1)
        nb = fb * sb * p_kept
        meta = (fb + 1) * index_bits(nb + 1) + nb * index_bits(sb)
        return nb * self.bo * self.bi * reps, meta * reps


FORMAT_NAMES = ("uncompressed", "bitmask", "coordinate", "offset_pairs", "run_length", "block_index")


def make_format(name: str, **kw) -> Format:
    """A format by name; ``block_index`` takes ``bo``/``bi``, ``run_length`` takes ``run_bits``."""
    table = {"uncompressed": Uncompressed, "bitmask": Bitmask, "coordinate": Coordinate,
             "offset_pairs": OffsetPairs, "run_length": RunLength, "block_index": BlockIndex}
    if name not in table:
        raise ConfigError("format", [f"unknown format {name!r}; expected one of {', '.join(table)}"])
    return table[name](**kw)
