"""The two composite patterns on the command line: TASD terms and SDQ parts.

Grammar (beside ``patterns.grammar``'s one-pattern forms)::

    2:4+1:4        TASD: the weight as the sum of structured-sparse terms, one pattern per term
    int8-2:4+int4  SDQ: an int8 part under the pattern 2:4 plus a dense int4 part (int2..int8 each)

``parse_composite`` returns None for a text that is neither, so a caller tries it first and falls
back to ``parse_pattern``. The spec strings (``CompositePattern.spec()``) are the stable names the
compiler, the cost model and the Pareto verb share.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tilesparse.errors import ConfigError
from tilesparse.patterns.family import Pattern
from tilesparse.patterns.grammar import parse_pattern

__all__ = ["SDQPattern", "TASDPattern", "parse_composite"]

_SDQ = re.compile(r"int(?P<s>[0-9]+)-(?P<pattern>[^+]+)\+int(?P<d>[0-9]+)")
_BITS = (2, 8)  # both SDQ parts are stored as int8 (quant.sdq_graph)


@dataclass(frozen=True)
class TASDPattern:
    """A weight as the sum of ``terms`` (each a fixed-sparsity pattern), e.g. 2:4+1:4."""

    terms: tuple[Pattern, ...]

    def spec(self) -> str:
        return "+".join(t.spec() for t in self.terms)


@dataclass(frozen=True)
class SDQPattern:
    """An int``sparse_bits`` part under ``sparse`` plus a dense int``dense_bits`` part."""

    sparse: Pattern
    sparse_bits: int = 8
    dense_bits: int = 4

    def spec(self) -> str:
        return f"int{self.sparse_bits}-{self.sparse.spec()}+int{self.dense_bits}"


CompositePattern = TASDPattern | SDQPattern


def parse_composite(spec: object, where: str = "--pattern") -> CompositePattern | None:
    """The TASD or SDQ pattern ``spec`` names; None when it is neither (no ``+``).

    >>> parse_composite("2:4+1:4").spec(), parse_composite("int8-2:4+int4").spec()
    ('2:4+1:4', 'int8-2:4+int4')
    >>> parse_composite("8x8@0.5/2:4") is None
    True
    >>> parse_composite("2:4+channel")
    Traceback (most recent call last):
    tilesparse.errors.ConfigError: --pattern: term 2 (channel) has a free sparsity; give it '@s' (e.g. channel@0.5)
    """
    if not isinstance(spec, str) or "+" not in spec:
        return None
    text = spec.strip().lower()
    if (m := _SDQ.fullmatch(text)) is not None:
        errs = [f"int{b}: SDQ parts take {_BITS[0]} to {_BITS[1]} bits" for b in (int(m["s"]), int(m["d"]))
                if not _BITS[0] <= b <= _BITS[1]]
        sparse = parse_pattern(m["pattern"], where)
        if sparse.free_levels():
            errs.append(f"sparse part {sparse.spec()} has a free sparsity; give it '@s'")
        if errs:
            raise ConfigError(where, errs)
        return SDQPattern(sparse, int(m["s"]), int(m["d"]))
    if text.startswith("int"):
        raise ConfigError(where, [f"cannot read {spec!r} as an SDQ pattern; expected e.g. int8-2:4+int4"])
    terms, errs = [], []
    for i, part in enumerate(text.split("+"), 1):
        if not part:
            errs.append(f"term {i} is empty; expected e.g. 2:4+1:4")
            continue
        p = parse_pattern(part, where)
        if p.free_levels():
            errs.append(f"term {i} ({p.spec()}) has a free sparsity; give it '@s' (e.g. {p.spec()}@0.5)")
        terms.append(p)
    if errs:
        raise ConfigError(where, errs)
    return TASDPattern(tuple(terms))
