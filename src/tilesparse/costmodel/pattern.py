"""The sparsity patterns of ``tilesparse.patterns`` as cost-model terms (density model, format,
compute rate), so ``map`` searches mappings for them and other verbs price them.

A pattern becomes one or more :class:`Term` s; each term is a weight tensor of its own (a
:class:`~tilesparse.costmodel.problem.Problem` with its weight width) with a
:class:`~tilesparse.costmodel.model.SparseSpec`. Terms accumulate into the same output, so their
cycles and energies add (as parallel convs plus an add; the add's output traffic is not counted).

================  ============================  ==================  ===========================
pattern           density model                 format              MACs performed / rate
================  ============================  ==================  ===========================
``8x8[@s]``       Blocks (fraction 1 - s)       block_bitmap        kept blocks, int8 rate
``2:4``, ``1:4``  NM (n / m, no variance)       masked              sparse multiply: 50 %
``3:4`` ...       NM                            uncompressed        all (the rule needs <= 2:4)
``8x8@s/2:4``     Hierarchical(Blocks, NM)      block_masked        kept blocks x 50 %
``a+b`` (TASD)    one term per summand          each its own        each its own
``int4``          Dense, 4-bit weights          uncompressed        int8 x int4 rate
``int8-2:4``      as ``2:4`` (SDQ's sparse part)
================  ============================  ==================  ===========================

The sparse multiply's rule, chunking and rate, and the int8 x int4 rate, come from the hw
description (``core.sparse_matmul``, ``core.macs_per_cycle``); SDQ is ``int8-2:4+int4``.

>>> from tilesparse.costmodel import Problem
>>> layer = Problem.conv(k=64, c=64, p=8, q=8, r=3, s=3)
>>> weight_bytes(layer, "2:4")  # 36,864 int8 weights in 1,152 chunks of 4 + 16 B
23040.0
>>> [t.label for t in pattern_terms(layer, "int8-2:4+int4")]
['int8-2:4', 'int4']
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

from tilesparse.costmodel.density import NM as NMDensity
from tilesparse.costmodel.density import Blocks, Dense, DensityModel, Hierarchical
from tilesparse.costmodel.formats import BlockBitmap, BlockMasked, Format, Masked, Uncompressed
from tilesparse.costmodel.model import SparseSpec
from tilesparse.costmodel.problem import Problem
from tilesparse.errors import ConfigError

if TYPE_CHECKING:
    from tilesparse.hw.array import ArrayConfig, CoreConfig
    from tilesparse.patterns import Pattern

__all__ = ["Term", "pattern_terms", "weight_bytes"]

INT4_BITS = 4
DTYPE_PREFIXES = ("int8-", "int4-")


@dataclass(frozen=True)
class Term:
    """One weight term of a pattern: its label, the layer as that term sees it (weight bits) and
    its sparse spec (density model, format, MACs performed and their rate)."""

    label: str
    problem: Problem
    spec: SparseSpec

    @property
    def density(self) -> float:
        return self.spec.dm(0).density

    def weight_bytes(self) -> float:
        """Bytes of the whole layer's weights in the term's format (data + metadata)."""
        p = self.problem
        rows, cols, reps = p.bound("G") * p.bound("K"), p.bound("C"), p.bound("R") * p.bound("S")
        data, meta = self.spec.fmt(0).expected(rows, cols, self.spec.dm(0), reps)
        return float((data * p.bits[0] + meta) / 8)


def _hw(hw: object) -> ArrayConfig:
    from tilesparse.hw import load_array

    return load_array(hw if hw is not None else "4x4")  # type: ignore[arg-type]


def _sparse_rate(core: CoreConfig) -> float:
    """Fraction of the dense MAC cycles the sparse multiply takes (dense K / sparse K)."""
    return core.matmul_shape[1] / core.sparse_matmul.shape[1]


def _masked_ok(n: int, m: int, core: CoreConfig) -> bool:
    sm = core.sparse_matmul
    fits = m % sm.group_bytes == 0 and n * sm.group_bytes <= sm.max_nonzero_per_group * m
    return bool(sm.enabled and fits)


def _single(layer: Problem, pat: Pattern, sparsity: float | None,
            core: CoreConfig) -> tuple[DensityModel, Format, float | None]:
    """(density model, format, MACs performed fraction or None for the density) of one pattern."""
    from tilesparse.patterns import NM, Block
    from tilesparse.patterns import Hierarchical as HPattern

    shape = (layer.bound("G") * layer.bound("K"), layer.bound("C"))
    if isinstance(pat, Block):
        s = pat.sparsity if pat.sparsity is not None else sparsity
        if s is None:
            raise ConfigError("--pattern", [f"{pat.spec()}: give its sparsity ({pat.spec()}@0.5 or --sparsity)"])
        return Blocks(1.0 - s, pat.out, pat.in_, shape), BlockBitmap(pat.out, pat.in_), None
    if isinstance(pat, NM):
        # No tile-level skipping: the sparse multiply reads the dense activation operand (4 x 16)
        # whatever the weights' zeros; the layer runs at the multiply's rate (mac fraction).
        dm: DensityModel = NMDensity(pat.n, pat.m)
        if pat.axis == "in" and _masked_ok(pat.n, pat.m, core):
            return dm, Masked(core.sparse_matmul), _sparse_rate(core)
        return dm, Uncompressed(), 1.0  # stored and computed dense (the block format)
    if isinstance(pat, HPattern) and len(pat.patterns) == 2 and isinstance(pat.patterns[0], Block):
        outer_dm, _, _ = _single(layer, pat.patterns[0], sparsity, core)
        inner = pat.patterns[1]
        if isinstance(inner, NM) and inner.axis == "in" and _masked_ok(inner.n, inner.m, core):
            blk = pat.patterns[0]
            hss = Hierarchical((outer_dm, NMDensity(inner.n, inner.m)))
            return hss, BlockMasked(blk.out, blk.in_, core.sparse_matmul), outer_dm.density * _sparse_rate(core)
    raise ConfigError("--pattern", [f"{pat.spec()}: the cost model knows blocks (8x8[@s]), N:M along input "
                                    "channels, blocks over N:M (8x8@0.5/2:4), terms joined by '+' and int4"])


def _term(layer: Problem, text: str, sparsity: float | None, core: CoreConfig, macs_int4: float) -> Term:
    from tilesparse.patterns.grammar import parse_pattern

    t = text.strip().lower()
    bits, rest = (INT4_BITS, t[5:]) if t.startswith("int4") else (layer.bits[0], t[5:] if t.startswith("int8") else t)
    rate = macs_int4 if bits == INT4_BITS else 1.0
    prob = replace(layer, bits=(bits, *layer.bits[1:]))
    if not rest:  # a dense term ("int4")
        return Term(t, prob, SparseSpec(density={"W": Dense()}, mac_rate=rate))
    dm, fmt, frac = _single(layer, parse_pattern(rest), sparsity, core)
    if bits == INT4_BITS and not isinstance(fmt, (BlockBitmap, Uncompressed)):
        raise ConfigError("--pattern", [f"{t}: the sparse multiply reads 8-bit weights; int4 terms are dense "
                                        "or blocks"])
    action: Literal["none", "skip"] = "none" if isinstance(fmt, (Masked, Uncompressed)) else "skip"
    return Term(t, prob, SparseSpec(density={"W": dm}, formats={"W": fmt}, action=action, mac_fraction=frac,
                                    mac_rate=rate))


def pattern_terms(layer: Problem, pattern: str, *, sparsity: float | None = None, hw: object = None) -> list[Term]:
    """The cost-model terms of ``pattern`` (module table) for ``layer`` on the array ``hw`` (a hw
    spec as ``compile --array`` takes it; default the shipped 4x4 AIE2 description).

    ``sparsity`` fills a block level given without ``@s``. Raises ``ConfigError`` naming the term
    the cost model cannot describe."""
    if not isinstance(pattern, str) or not pattern.strip():
        raise ConfigError("--pattern", [f"expected a pattern such as 2:4, 8x8@0.5/2:4 or int8-2:4+int4, "
                                        f"got {pattern!r}"])
    a = _hw(hw)
    has_int4 = "int8xint4" in a.core.macs_per_cycle
    macs_int4 = a.macs_per_cycle("int8xint4") / a.macs_per_cycle("int8") if has_int4 else 1.0
    return [_term(layer, part, sparsity, a.core, macs_int4) for part in pattern.split("+")]


def weight_bytes(layer: Problem, pattern: str, *, sparsity: float | None = None, hw: object = None) -> float:
    """Bytes of ``layer``'s weights packed in ``pattern``'s formats (all terms, data + metadata)."""
    return sum(t.weight_bytes() for t in pattern_terms(layer, pattern, sparsity=sparsity, hw=hw))
