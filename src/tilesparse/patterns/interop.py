"""Other tools' sparsity settings as tilesparse patterns (from their documented formats; none of
those packages is imported).

* torch.ao.pruning ``WeightNormSparsifier(sparse_block_shape=(r, c), zeros_per_block=z)``: a block of
  r rows (output channels) x c columns (input channels); z = r*c zeroes whole blocks (``Block``),
  r = 1 with z < c zeroes z of every c along the input channels (``NM(c - z, c)``).
* NVIDIA ASP ``mask_calculator="m4n2_1d"``: n kept of every m along the input (``NM(2, 4)``).
* Intel Neural Compressor ``pattern="4x1"``: N output x M input channels blocks (``Block(4, 1)``);
  ``"2:4"``: N of every M input-channel weights pruned, as its docs word it (``NM(M - N, M)``).
"""

from __future__ import annotations

import re

from tilesparse.errors import ConfigError
from tilesparse.patterns.family import NM, Block, Pattern

__all__ = ["from_torch_ao", "from_asp", "from_inc"]


def from_torch_ao(sparse_block_shape: tuple[int, int] = (1, 4), zeros_per_block: int | None = None,
                  sparsity_level: float | None = None) -> Pattern:
    """torch.ao's WeightNormSparsifier settings -> pattern (``sparsity_level``: fraction of blocks).

    >>> from_torch_ao((1, 4), 2)
    NM(n=2, m=4, axis='in')
    """
    where = "torch.ao WeightNormSparsifier"
    r, c = (int(v) for v in sparse_block_shape)
    size = r * c
    z = size if zeros_per_block is None else int(zeros_per_block)
    if not 0 < z <= size:
        raise ConfigError(where, [f"zeros_per_block must be in [1, {size}] for block {r}x{c}, got {z}"])
    if z == size:
        return Block(r, c, sparsity_level)
    if r != 1:
        raise ConfigError(where, [f"{z} zeros per {r}x{c} block has no tilesparse pattern; partial blocks must be "
                                  "1 x M (N:M along the input channels)"])
    if sparsity_level not in (None, 1.0):
        raise ConfigError(where, [f"sparsity_level {sparsity_level} with partial blocks zeroes only some runs; "
                                  "tilesparse's N:M applies to every run (use sparsity_level=1.0)"])
    return NM(c - z, c)


_ASP = re.compile(r"m(\d+)n(\d+)_1d")


def from_asp(mask_calculator: str) -> Pattern:
    """NVIDIA ASP's mask calculator name -> pattern (``m4n2_1d``: 2 kept of every 4)."""
    m = _ASP.fullmatch(mask_calculator.strip())
    if m is None:
        raise ConfigError("ASP mask_calculator", [f"expected 'mMnN_1d' such as 'm4n2_1d', got {mask_calculator!r} "
                                                  "(2-D ASP patterns have no tilesparse equivalent)"])
    return NM(int(m[2]), int(m[1]))


def from_inc(pattern: str, target_sparsity: float | None = None) -> Pattern:
    """Intel Neural Compressor's pruning pattern string -> pattern."""
    t = pattern.strip().lower()
    if (m := re.fullmatch(r"(\d+)x(\d+)", t)) is not None:
        return Block(int(m[1]), int(m[2]), target_sparsity)
    if (m := re.fullmatch(r"(\d+):(\d+)", t)) is not None:
        n_pruned, size = int(m[1]), int(m[2])
        if not 0 < n_pruned < size:
            raise ConfigError("INC pattern", [f"expected N:M with 0 < N < M, got {pattern!r}"])
        return NM(size - n_pruned, size)
    raise ConfigError("INC pattern", [f"expected 'NxM' (e.g. '4x1') or 'N:M' (e.g. '2:4'), got {pattern!r}"])
