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
block_bitmap      the compiler's block format: Fb*Sb bits (one per b_o x b_i block, the whole
                  kernel rides along), kept blocks stored dense
masked            the AIE-ML sparse multiply's format (UG1603): every chunk_bytes (32) bytes of
                  the weight stream become a mask_bytes (4) mask + payload_bytes (16) bytes padded
                  to 32-bit words; data = chunks * payload, metadata = chunks * (mask + padding)
block_masked      HSS: block_bitmap over the blocks, masked inside the kept blocks' stream
================  =========================================================================

``masked`` and ``block_masked`` read their chunk parameters from the hw description
(``tilesparse.hw`` ``core.sparse_matmul``); their word is a byte (the rule is for 8-bit data).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tilesparse.costmodel.density import DensityModel, Hierarchical
from tilesparse.errors import ConfigError
from tilesparse.hw import SparseMatmulConfig

__all__ = [
    "FORMAT_NAMES",
    "Bitmask",
    "BlockBitmap",
    "BlockIndex",
    "BlockMasked",
    "Coordinate",
    "Format",
    "Masked",
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


def _kept_blocks(m: np.ndarray, bo: int, bi: int) -> tuple[int, int, int]:
    """(block rows, block columns, blocks holding a non-zero) of mask ``m`` in bo x bi blocks."""
    fb, sb = -(-m.shape[0] // bo), -(-m.shape[1] // bi)
    pad = np.zeros((fb * bo, sb * bi), dtype=bool)
    pad[: m.shape[0], : m.shape[1]] = m
    return fb, sb, int(pad.reshape(fb, bo, sb, bi).any(axis=(1, 3)).sum())


@dataclass(frozen=True)
class BlockIndex(Format):
    bo: int = 8
    bi: int = 8
    name = "block_index"

    def exact(self, mask):
        fb, sb, nb = _kept_blocks(_as_mask(mask), self.bo, self.bi)
        meta = (fb + 1) * index_bits(nb + 1) + nb * index_bits(sb)
        return nb * self.bo * self.bi, int(meta)

    def expected(self, rows, cols, dm, reps=1):
        rows = np.asarray(rows, dtype=np.float64)
        fb, sb = np.ceil(rows / self.bo), np.ceil(np.asarray(cols) / self.bi)
        p_kept = 1.0 - dm.prob_empty(np.minimum(rows, self.bo), np.minimum(cols, self.bi), 1)
        nb = fb * sb * p_kept
        meta = (fb + 1) * index_bits(nb + 1) + nb * index_bits(sb)
        return nb * self.bo * self.bi * reps, meta * reps


def _sparse_matmul(sm: SparseMatmulConfig | None) -> SparseMatmulConfig:
    if sm is not None:
        return sm
    from tilesparse.hw import load_array

    return load_array("4x4").core.sparse_matmul  # the shipped AIE2 description


def _kept_fraction(rows, cols, dm: DensityModel, bo: int, bi: int) -> np.ndarray:
    """Expected fraction of the b_o x b_i blocks of a rows x cols tile that hold a non-zero."""
    outer = dm.outer if isinstance(dm, Hierarchical) else dm
    return 1.0 - outer.prob_empty(np.minimum(rows, bo), np.minimum(cols, bi), 1)


@dataclass(frozen=True)
class Masked(Format):
    """The AIE-ML masked format (module table): a function of the stream length only, since the
    hardware stores exactly ``payload_bytes`` of every chunk whatever the zeros."""

    sm: SparseMatmulConfig | None = None
    name = "masked"

    def _words(self, n):
        sm = _sparse_matmul(self.sm)
        chunks = np.ceil(np.asarray(n, dtype=np.float64) / sm.chunk_bytes)
        pad = -(-sm.payload_bytes // 4) * 4 - sm.payload_bytes  # payload padded to 32-bit words
        return chunks * sm.payload_bytes, chunks * (sm.mask_bytes + pad) * 8

    def exact(self, mask):
        data, meta = self._words(_as_mask(mask).size)
        return int(data), int(meta)

    def expected(self, rows, cols, dm, reps=1):
        return self._words(np.asarray(rows, dtype=np.float64) * cols * reps)


@dataclass(frozen=True)
class BlockBitmap(Format):
    """One bit per b_o x b_i block of the tile; kept blocks dense (all ``reps`` kernel taps)."""

    bo: int = 8
    bi: int = 8
    name = "block_bitmap"

    def exact(self, mask):
        fb, sb, nb = _kept_blocks(_as_mask(mask), self.bo, self.bi)
        return nb * self.bo * self.bi, fb * sb

    def expected(self, rows, cols, dm, reps=1):
        rows = np.asarray(rows, dtype=np.float64)
        positions = np.ceil(rows / self.bo) * np.ceil(np.asarray(cols) / self.bi)
        nb = positions * _kept_fraction(rows, cols, dm, self.bo, self.bi)
        return nb * self.bo * self.bi * reps, positions * np.ones_like(nb)  # one bitmap per tile


@dataclass(frozen=True)
class BlockMasked(Format):
    """HSS blocks over N:M: the block bitmap, then the kept blocks' bytes in the masked format."""

    bo: int = 8
    bi: int = 8
    sm: SparseMatmulConfig | None = None
    name = "block_masked"

    def exact(self, mask):
        kept_words, bitmap_bits = BlockBitmap(self.bo, self.bi).exact(mask)
        data, meta = Masked(self.sm)._words(kept_words)
        return int(data), int(meta + bitmap_bits)

    def expected(self, rows, cols, dm, reps=1):
        kept_words, bitmap_bits = BlockBitmap(self.bo, self.bi).expected(rows, cols, dm, reps)
        data, meta = Masked(self.sm)._words(kept_words)
        return data, meta + bitmap_bits


FORMAT_NAMES = ("uncompressed", "bitmask", "coordinate", "offset_pairs", "run_length", "block_index",
                "block_bitmap", "masked", "block_masked")


def make_format(name: str, **kw) -> Format:
    """A format by name; ``block_index``, ``block_bitmap`` and ``block_masked`` take ``bo``/``bi``,
    ``run_length`` takes ``run_bits``, ``masked`` and ``block_masked`` take ``sm`` (the hw
    description's ``core.sparse_matmul``; default the shipped AIE2 one)."""
    table = {"uncompressed": Uncompressed, "bitmask": Bitmask, "coordinate": Coordinate,
             "offset_pairs": OffsetPairs, "run_length": RunLength, "block_index": BlockIndex,
             "block_bitmap": BlockBitmap, "masked": Masked, "block_masked": BlockMasked}
    if name not in table:
        raise ConfigError("format", [f"unknown format {name!r}; expected one of {', '.join(table)}"])
    return table[name](**kw)
