"""SDQ layers inside a quantized graph: which convs take the split, and how the graph stores them.

``quantize(graph, calib, sdq=SDQConfig(sparse="1:8", layers=("fc", "layer4*")))`` replaces the
int8 ``weight`` of every chosen conv (a linear layer is a 1×1 conv by then) by the two parts of
:func:`tilesparse.quant.sdq.sdq`:

=====================  ========================================================================
``<node>.sdq_sparse``  int8 codes of the structured-sparse high-precision part (zero off the mask)
``<node>.sdq_mask``    bool, weight-shaped: the sparse pattern's keep mask
``<node>.sdq_dense``   int8 array holding the dense low-precision codes (``dense_bits`` range)
``<node>.bias``        int32 at the accumulator exponent e_in + e_w, e_w = min(sparse, dense exp)
attr ``sdq``           {pattern, sparse_bits, dense_bits, sparse_exp, dense_exp}
attrs                  ``weight_exp`` = e_w, ``shift`` = e_out − e_in − e_w, ``clamp`` as usual
=====================  ========================================================================

The accumulator is exact: acc = (Σ x·sparse) << (sparse_exp − e_w) + (Σ x·dense) << (dense_exp − e_w)
+ bias, then the usual requantization. No ``weight`` param is left, so a reader that does not know
SDQ fails instead of computing a wrong layer; the compiler packs both parts in the ``parts`` weight format
(``program.parts_format``, docs/compiler.md "Composite patterns").
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from tilesparse.errors import ConfigError
from tilesparse.ir.graph import Graph, Node, Op
from tilesparse.patterns import Pattern, as_pattern
from tilesparse.quant.sdq import SDQ

__all__ = ["SDQConfig", "given_parts", "select_sdq_layers", "sdq_layers", "sdq_attr"]

_MAX_BITS = 8  # both parts are stored as int8 and the reference's exactness bound assumes it


@dataclass(frozen=True)
class SDQConfig:
    """Which layers take SDQ and how: ``sparse`` pattern (a Pattern or its text, e.g. ``"1:8"``),
    the bits of each part, and ``layers``: node names or module paths, fnmatch globs allowed
    (``"*"``: every conv and linear layer the pattern fits; a name without a glob must fit).
    ``given``: trained parts by module path or node name (a checkpoint's, ``sparsify.composite``),
    used as they are instead of splitting the layer's weight; they must sum to that weight."""

    sparse: Pattern | str
    sparse_bits: int = 8
    dense_bits: int = 4
    layers: tuple[str, ...] = ("*",)
    given: Mapping[str, SDQ] | None = dataclasses.field(default=None, compare=False, hash=False)

    def __post_init__(self) -> None:
        errs = []
        try:
            pattern = as_pattern(self.sparse, "sdq.sparse")
            if pattern.free_levels():
                errs.append(f"sdq.sparse: pattern {pattern.spec()} has a free sparsity; give it '@s'")
            object.__setattr__(self, "sparse", pattern)
        except ConfigError as e:
            errs += e.errors
        for field in ("sparse_bits", "dense_bits"):
            v = getattr(self, field)
            if not isinstance(v, int) or isinstance(v, bool) or not 2 <= v <= _MAX_BITS:
                errs.append(f"sdq.{field}: expected an integer number of bits in [2, {_MAX_BITS}], got {v!r}")
        layers = (self.layers,) if isinstance(self.layers, str) else tuple(self.layers)
        if not layers or not all(isinstance(p, str) and p for p in layers):
            errs.append(f"sdq.layers: expected non-empty layer names or globs, got {self.layers!r}")
        object.__setattr__(self, "layers", layers)
        if errs:
            raise ConfigError("sdq", errs)

    @property
    def pattern(self) -> Pattern:
        assert isinstance(self.sparse, Pattern)  # normalised in __post_init__
        return self.sparse

    def spec(self) -> str:
        """The composite pattern's text, e.g. ``int8-2:4+int4``."""
        return f"int{self.sparse_bits}-{self.pattern.spec()}+int{self.dense_bits}"


def _matches(n: Node, glob: str) -> bool:
    return fnmatch.fnmatchcase(n.name, glob) or bool(n.source) and fnmatch.fnmatchcase(n.source, glob)


def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def select_sdq_layers(g: Graph, sdq: SDQConfig | Sequence[SDQConfig] | None) -> dict[str, SDQConfig]:
    """Conv node → its SDQ settings (the first config naming it wins). A name or glob matching no
    conv/linear layer the pattern fits, or a layer named outright that it does not fit, is a
    ConfigError; a glob skips the layers its pattern does not fit (e.g. a 3-channel first conv)."""
    if sdq is None:
        return {}
    configs = [sdq] if isinstance(sdq, SDQConfig) else list(sdq)
    chosen: dict[str, SDQConfig] = {}
    errs = []
    for cfg in configs:
        if not isinstance(cfg, SDQConfig):
            raise ConfigError("sdq", [f"expected SDQConfig values, got {type(cfg).__name__}"])
        for glob in cfg.layers:
            names, why = _pick(g, cfg.pattern, glob)
            errs += why
            for name in names:
                chosen.setdefault(name, cfg)
    if errs:
        raise ConfigError("sdq", errs)
    return chosen


def _pick(g: Graph, pattern: Pattern, glob: str) -> tuple[list[str], list[str]]:
    """(the convs ``glob`` names that ``pattern`` fits, what is wrong)."""
    hits = [n for n in g.of(Op.CONV2D) if _matches(n, glob)]
    if not hits:
        return [], [f"sdq.layers: {glob!r} matches no conv or linear layer of graph {g.name}"]
    unfit = {n.name: pattern.eligible(tuple(g.param(n.name, "weight").shape), n.attrs["groups"]) for n in hits}
    fit = [n.name for n in hits if unfit[n.name] is None]
    if _is_glob(glob) and fit:
        return fit, []
    return fit, [f"sdq layer {name!r}: pattern {pattern.spec()} does not fit: {why}"
                 for name, why in unfit.items() if why is not None]


def sdq_layers(g: Graph) -> list[str]:
    """Names of the nodes stored as SDQ parts (empty for an ordinary int8 graph)."""
    return [n.name for n in g if n.attrs.get("sdq") is not None]


def sdq_attr(cfg: SDQConfig, sparse_exp: int, dense_exp: int) -> dict[str, Any]:
    """The node's ``sdq`` attr: the settings and the two parts' exponents."""
    return {"pattern": cfg.pattern.spec(), "sparse_bits": cfg.sparse_bits, "dense_bits": cfg.dense_bits,
            "sparse_exp": int(sparse_exp), "dense_exp": int(dense_exp)}


# A checkpoint's parts are of the weight the graph quantizes (BatchNorm folded, sparsify.sdq_train);
# folding in float again differs from them by float rounding only, far below a part's step
_GIVEN_RTOL = 1e-5


def given_parts(cfg: SDQConfig, n: Node, w: np.ndarray) -> SDQ | None:
    """The trained parts ``cfg`` gives for conv node ``n`` (by module path, else node name), shaped
    as its graph weight ``w``; None if it gives none. ``ConfigError`` naming the layer if their
    dequantized sum is not ``w``."""
    if not cfg.given:
        return None
    key = n.source if n.source in cfg.given else n.name
    d = cfg.given.get(key)
    if d is None:
        return None
    if d.sparse.size != w.size:
        raise ConfigError(f"sdq layer {n.name!r}", [f"trained parts of {key} hold {d.sparse.shape}, the graph's "
                                                    f"weight is {w.shape}"])
    d = replace(d, sparse=d.sparse.reshape(w.shape), dense=d.dense.reshape(w.shape), mask=d.mask.reshape(w.shape))
    deq = d.dequantized()
    diff = float(np.abs(np.asarray(w, np.float64) - deq).max(initial=0.0))
    if diff > _GIVEN_RTOL * float(np.abs(deq).max(initial=0.0)):
        raise ConfigError(f"sdq layer {n.name!r}", [f"the trained parts of {key} do not sum to the graph's weight "
                                                    f"(max difference {diff:.3g}): the weight or the BatchNorm "
                                                    "folded into it is not the one the parts were trained with"])
    return d
