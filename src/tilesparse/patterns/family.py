"""The structured-sparsity family as values: a pattern computes a keep-mask from scores, checks a
given mask, and says its density and metadata cost.

    Block(8, 8)                    b_o x b_i blocks (the kernel rides along), "8x8"
    NM(2, 4)                       N kept of every M consecutive input channels, "2:4" ("2:4:out")
    Channel() / Filter()           whole input-channel columns / output-channel rows, "channel", "filter"
    Unstructured()                 single weights, "unstructured"
    Hierarchical((Block(8, 8, 0.5), NM(2, 4)))
                                   each level's rule inside every unit the level above keeps, "8x8@0.5/2:4"

A weight of shape (O, I/g, *kernel) is viewed as g stacked O_g x I_g matrices (``patterns.block``).
``sparsity=None`` is a *free* level, filled by ``with_sparsity`` from ``--sparsity``; ``NM`` is
fixed at 1 - n/m. A pattern's *native* mask is what the sparsifier stores: the unit grid for the
one-level grid patterns (the block grid of ``patterns.block`` for Block, so block checkpoints are
unchanged) and the element mask for N:M and hierarchies. ``expand`` turns it into a bool mask
broadcastable to the weight. Spec strings and dicts: ``patterns.grammar``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from tilesparse.errors import ConfigError
from tilesparse.patterns.block import BlockGeometry, BlockShape, block_reduce, expand_mask
from tilesparse.patterns.selection import check_sparsity, select_layer, sparsity_problem, zero_count

__all__ = ["Pattern", "GridPattern", "Block", "NM", "Channel", "Filter", "Unstructured", "Hierarchical",
           "Scorer", "magnitude_scorer", "prune_mask"]

Shape = tuple[int, ...]
# A scorer maps "how to sum a weight-shaped tensor over a unit" to the units' scores
# (``patterns.scores.unit_scores`` with the weight and statistic bound).
Scorer = Callable[[Callable[[Tensor], Tensor]], Tensor]


def magnitude_scorer(weight: Tensor) -> Scorer:
    """L2 norm of each unit (|w| for single weights): the default importance."""
    w2 = weight.detach().double().square()
    return lambda reduce: reduce(w2).sqrt()


def _fmt(s: float) -> str:
    return f"{s:g}"


def _level_sparsity(v: object, what: str) -> float | None:
    if v is None:
        return None
    problem = sparsity_problem(v)
    if problem is not None:
        raise ConfigError(f"pattern {what}", [f"sparsity: {problem}"])
    return float(v)  # type: ignore[arg-type]  # a Real, checked above


def _weight_geometry(shape: Shape, groups: int) -> tuple[int, int, int]:
    """(O, I_g, kernel elements) of a weight shape, refused clearly when it is not one."""
    if len(shape) < 2:
        raise ConfigError("weight", [f"expected a weight with >= 2 dims (out, in, ...), got shape {tuple(shape)}"])
    if groups < 1 or shape[0] % groups:
        raise ConfigError("weight", [f"out channels {shape[0]} not divisible by groups {groups}"])
    return int(shape[0]), int(shape[1]), math.prod(shape[2:])


def _full(mask: Tensor, shape: Shape) -> Tensor:
    return mask.bool().expand(tuple(shape)) if mask.dim() == len(shape) else mask.bool().reshape(shape)


@dataclass(frozen=True)
class Pattern(ABC):
    """One structured-sparsity rule (see the module docstring)."""

    kind: ClassVar[str]

    # ---- description -------------------------------------------------------------------------
    @abstractmethod
    def spec(self) -> str:
        """The command-line form, e.g. ``"8x8@0.5/2:4"`` (``parse_pattern(p.spec()) == p``)."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """The YAML / checkpoint form (``pattern_from_dict(p.to_dict()) == p``)."""

    def __str__(self) -> str:
        return self.spec()

    def levels(self) -> tuple[Pattern, ...]:
        return (self,)

    @abstractmethod
    def level_sparsity(self) -> float | None:
        """This level's own sparsity (None: free)."""

    def free_levels(self) -> list[int]:
        return [i for i, lv in enumerate(self.levels()) if lv.level_sparsity() is None]

    def nominal_sparsity(self) -> float | None:
        """Sparsity of the whole pattern when channel counts divide evenly (None if a level is free)."""
        density = 1.0
        for lv in self.levels():
            s = lv.level_sparsity()
            if s is None:
                return None
            density *= 1.0 - s
        return 1.0 - density

    def with_sparsity(self, sparsity: float | None) -> Pattern:
        """The pattern with its free level set so the nominal total is ``sparsity``; a pattern with
        no free level must already have that sparsity (None: unchanged)."""
        if sparsity is None:
            return self
        s = check_sparsity(sparsity, f"pattern {self.spec()}")
        free = self.free_levels()
        if not free:
            nominal = self.nominal_sparsity()
            assert nominal is not None  # no free level
            if not math.isclose(nominal, s, abs_tol=1e-9):
                raise ConfigError(f"pattern {self.spec()}", [
                    f"is {_fmt(nominal)} sparse by construction; a sparsity of {_fmt(s)} needs another pattern "
                    f"(or a free level, e.g. 8x8/{self.spec()})"])
            return self
        if len(free) > 1:
            raise ConfigError(f"pattern {self.spec()}", ["at most one level may leave its sparsity free; "
                                                         "give the others '@s' (e.g. 8x8@0.5/2:4)"])
        fixed_density = math.prod(1.0 - (lv.level_sparsity() or 0.0) for lv in self.levels())
        level = 1.0 - (1.0 - s) / fixed_density
        if level < -1e-12:
            raise ConfigError(f"pattern {self.spec()}", [
                f"its fixed levels alone are {_fmt(1 - fixed_density)} sparse, more than the requested {_fmt(s)}"])
        return self._fill(free[0], min(max(level, 0.0), math.nextafter(1.0, 0.0)))

    def _fill(self, index: int, sparsity: float) -> Pattern:
        assert index == 0
        return self.at(sparsity)

    def at(self, sparsity: float | None) -> Pattern:
        """This one-level pattern with its level sparsity replaced."""
        raise ConfigError(f"pattern {self.spec()}", ["has a fixed sparsity"])

    # ---- masks ---------------------------------------------------------------------------------
    def eligible(self, shape: Shape, groups: int = 1) -> str | None:
        """Why a weight cannot take this pattern (None: it can)."""
        return None

    @abstractmethod
    def native_shape(self, shape: Shape, groups: int = 1) -> Shape:
        """Shape of the mask the sparsifier stores for a weight of ``shape``."""

    @abstractmethod
    def expand(self, native: Tensor, shape: Shape, groups: int = 1) -> Tensor:
        """Native mask (bool, or float gates for grid patterns) -> broadcastable to the weight."""

    @abstractmethod
    def _full_mask(self, scorer: Scorer, shape: Shape, groups: int, keep: Tensor | None, *,
                   mode: str, allow_empty_rows: bool) -> Tensor:
        """Native keep-mask at the pattern's full sparsity (no free level left)."""

    def select(self, scorer: Scorer, shape: Shape, groups: int = 1, *, sparsity: float | None = None,
               keep: Tensor | None = None, mode: str | None = None, allow_empty_rows: bool = False) -> Tensor:
        """Native keep-mask from scores. ``sparsity`` below the pattern's own is a step on the way
        (incremental pruning): the lowest-scoring weights the full pattern would zero, zeroed first.
        ``keep``: the current native mask; what it zeroes stays zeroed."""
        self._require_fixed()
        mode = mode or self.selection_default()
        full = self._full_mask(scorer, shape, groups, keep, mode=mode, allow_empty_rows=allow_empty_rows)
        total = self.nominal_sparsity()
        if sparsity is None or total is None or sparsity >= total - 1e-12:
            return full
        return self._ramp(full, self._ramp_order(scorer, full, shape, groups), shape, sparsity, keep)

    default_selection: ClassVar[str] = "layer"

    def selection_default(self) -> str:
        """The selection mode used when none is asked for (blocks: balanced rows, as the paper)."""
        return self.default_selection

    def _ramp_order(self, scorer: Scorer, full: Tensor, shape: Shape, groups: int) -> Tensor:
        """Per-weight keys: a step on the way zeroes the lowest first (of the weights ``full`` zeroes)."""
        return scorer(lambda x: x).double().reshape(shape)

    def _ramp(self, full: Tensor, order: Tensor, shape: Shape, sparsity: float, keep: Tensor | None) -> Tensor:
        """Zero only the lowest-``order`` of the weights ``full`` zeroes, ``round(sparsity * n)`` in
        all (those ``keep`` already zeroes count and stay zero). Element-mask patterns only."""
        s = order.clone()
        cand = ~full.reshape(shape)
        if keep is not None:
            s[~_full(keep, shape)] = -math.inf
        n = math.prod(shape)
        already = 0 if keep is None else int((~_full(keep, shape)).sum())
        n_zero = min(int(cand.sum()), max(zero_count(n, sparsity), already))
        s[~cand] = math.inf
        out = torch.ones(n, dtype=torch.bool)
        if n_zero:
            out[torch.sort(s.flatten(), stable=True).indices[:n_zero]] = False
        return out.reshape(shape)

    def _require_fixed(self) -> None:
        if self.free_levels():
            raise ConfigError(f"pattern {self.spec()}", ["has a free level: set its sparsity first "
                                                         "(with_sparsity, --sparsity or '@s')"])

    def check(self, mask: Tensor, shape: Shape, groups: int = 1) -> list[str]:
        """What is wrong with an element mask (bool, broadcastable to ``shape``) under this pattern;
        empty when every level's rule holds. A mask keeping *fewer* weights than a level allows
        still obeys it (extra zeros are zeros)."""
        return self._check(_full(mask, shape), shape, groups)

    @abstractmethod
    def _check(self, mask: Tensor, shape: Shape, groups: int) -> list[str]: ...

    def density(self, mask: Tensor, shape: Shape) -> float:
        """Kept fraction of the real weights."""
        return float(_full(mask, shape).float().mean())

    @abstractmethod
    def metadata_bits(self, shape: Shape, groups: int = 1) -> int:
        """Index / mask bits the compressed weight needs (nominal: lower levels counted over the
        kept fraction of the level above)."""


# ---- one-level grid patterns: a unit grid, selected like blocks ------------------------------------

def _unchecked_shape(out: int, in_: int) -> BlockShape:
    """A BlockShape without the user-facing size limit: whole rows / columns of a layer."""
    b = object.__new__(BlockShape)
    object.__setattr__(b, "out", out)
    object.__setattr__(b, "in_", in_)
    return b


@dataclass(frozen=True)
class GridPattern(Pattern):
    """A pattern whose units tile the weight: the block-selection machinery (``selection``) applies."""

    sparsity: float | None = None

    def level_sparsity(self) -> float | None:
        return self.sparsity

    def at(self, sparsity: float | None) -> Pattern:
        return replace(self, sparsity=sparsity)

    def _suffix(self) -> str:
        return "" if self.sparsity is None else f"@{_fmt(self.sparsity)}"

    # the named grid patterns (channel, filter, unstructured) are their kind plus "@s"; Block overrides
    def __post_init__(self) -> None:
        object.__setattr__(self, "sparsity", _level_sparsity(self.sparsity, self.kind))

    def spec(self) -> str:
        return f"{self.kind}{self._suffix()}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "sparsity": self.sparsity}

    @abstractmethod
    def grid(self, shape: Shape, groups: int) -> tuple[BlockGeometry, Callable[[Tensor], Tensor]]:
        """The unit geometry and the view of a weight-shaped tensor it applies to."""

    def native_shape(self, shape: Shape, groups: int = 1) -> Shape:
        return self.grid(shape, groups)[0].grid

    def units(self, shape: Shape, groups: int = 1) -> int:
        return self.grid(shape, groups)[0].n_blocks

    def reduce(self, x: Tensor, shape: Shape, groups: int = 1) -> Tensor:
        geom, view = self.grid(shape, groups)
        return block_reduce(view(x), geom)

    def expand(self, native: Tensor, shape: Shape, groups: int = 1) -> Tensor:
        geom, _ = self.grid(shape, groups)
        m = expand_mask(native, geom, ndim=2)  # (O, I_g [* kernel])
        if geom.kernel_numel == 1 and m.shape[1] != shape[1]:  # unstructured: a flattened kernel
            return m.reshape(shape)
        return m.reshape(m.shape + (1,) * (len(shape) - 2))

    def _full_mask(self, scorer: Scorer, shape: Shape, groups: int, keep: Tensor | None, *,
                   mode: str, allow_empty_rows: bool) -> Tensor:
        scores = scorer(lambda x: self.reduce(x, shape, groups))
        assert self.sparsity is not None  # _require_fixed
        return select_layer(scores, self.sparsity, mode, allow_empty_rows, keep)

    def select(self, scorer: Scorer, shape: Shape, groups: int = 1, *, sparsity: float | None = None,
               keep: Tensor | None = None, mode: str | None = None, allow_empty_rows: bool = False) -> Tensor:
        """Unit keep-mask (see ``selection``); ``sparsity`` defaults to the pattern's own."""
        s = sparsity if sparsity is not None else self.sparsity
        if s is None:
            self._require_fixed()
        return replace(self, sparsity=s)._full_mask(scorer, shape, groups, keep, mode=mode or self.selection_default(),
                                                   allow_empty_rows=allow_empty_rows)

    def _check(self, mask: Tensor, shape: Shape, groups: int, whole: bool = True) -> list[str]:
        """Units are kept or zeroed whole (``whole=False``: a level below may zero inside a kept
        unit). The level's sparsity is a target, not a rule: row protection and per-row rounding
        move the count, and extra zeros are zeros."""
        if not whole:
            return []
        geom, view = self.grid(shape, groups)
        m = view(mask.float())
        kept = block_reduce(m, geom)
        counts = block_reduce(torch.ones_like(m), geom)
        mixed = int(((kept > 0) & (kept < counts)).sum())
        return [f"{mixed} of {geom.n_blocks} {self.unit_name} are partly zero (a unit is kept or "
                f"zeroed whole)"] if mixed else []

    unit_name: ClassVar[str] = "units"

    def metadata_bits(self, shape: Shape, groups: int = 1) -> int:
        return self.units(shape, groups)  # one bit per unit (a bitmap)


@dataclass(frozen=True)
class Block(GridPattern):
    """b_o output channels x b_i input channels x the whole kernel (today's pattern)."""

    out: int = 8
    in_: int = 8
    kind: ClassVar[str] = "block"
    unit_name: ClassVar[str] = "blocks"
    default_selection: ClassVar[str] = "balanced_rows"

    def __init__(self, out: int = 8, in_: int = 8, sparsity: float | None = None):
        b = BlockShape(out, in_)  # validates the sizes
        object.__setattr__(self, "out", b.out)
        object.__setattr__(self, "in_", b.in_)
        object.__setattr__(self, "sparsity", _level_sparsity(sparsity, f"{out}x{in_}"))

    @property
    def shape(self) -> BlockShape:
        return BlockShape(self.out, self.in_)

    def spec(self) -> str:
        return f"{self.out}x{self.in_}{self._suffix()}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "block", "out": self.out, "in": self.in_, "sparsity": self.sparsity}

    def grid(self, shape: Shape, groups: int) -> tuple[BlockGeometry, Callable[[Tensor], Tensor]]:
        return BlockGeometry.of_weight(tuple(shape), self.shape, groups), lambda x: x

    def eligible(self, shape: Shape, groups: int = 1) -> str | None:
        _, in_g, _ = _weight_geometry(shape, groups)
        if in_g < self.in_:
            what = "depthwise" if groups > 1 and in_g == 1 else "narrow"
            return f"{what}: {in_g} input channels per group < block width {self.in_}"
        return None


@dataclass(frozen=True)
class Channel(GridPattern):
    """Whole input channels (columns of each group's O_g x I_g matrix, kernel included)."""

    kind: ClassVar[str] = "channel"
    unit_name: ClassVar[str] = "input channels"

    def grid(self, shape: Shape, groups: int) -> tuple[BlockGeometry, Callable[[Tensor], Tensor]]:
        out, in_g, k = _weight_geometry(shape, groups)
        return BlockGeometry(out, in_g, groups, k, _unchecked_shape(out // groups, 1)), lambda x: x


@dataclass(frozen=True)
class Filter(GridPattern):
    """Whole output channels (rows: filters), kernel included."""

    kind: ClassVar[str] = "filter"
    unit_name: ClassVar[str] = "filters"

    def grid(self, shape: Shape, groups: int) -> tuple[BlockGeometry, Callable[[Tensor], Tensor]]:
        out, in_g, k = _weight_geometry(shape, groups)
        return BlockGeometry(out, in_g, groups, k, _unchecked_shape(1, in_g)), lambda x: x

    def select(self, scorer: Scorer, shape: Shape, groups: int = 1, *, sparsity: float | None = None,
               keep: Tensor | None = None, mode: str | None = None, allow_empty_rows: bool = False) -> Tensor:
        if mode in ("balanced_rows", "balanced_cols"):
            raise ConfigError("selection", [f"{mode} does not apply to filter pruning (one unit per row); "
                                            "use layer or global"])
        # every row is one filter: "keep a block per row" would keep everything
        return super().select(scorer, shape, groups, sparsity=sparsity, keep=keep, mode=mode, allow_empty_rows=True)


@dataclass(frozen=True)
class Unstructured(GridPattern):
    """Single weights: the baseline every structured pattern is measured against."""

    kind: ClassVar[str] = "unstructured"
    unit_name: ClassVar[str] = "weights"

    def grid(self, shape: Shape, groups: int) -> tuple[BlockGeometry, Callable[[Tensor], Tensor]]:
        out, in_g, k = _weight_geometry(shape, groups)
        flat = (out, in_g * k)
        return BlockGeometry(out, in_g * k, groups, 1, _unchecked_shape(1, 1)), lambda x: x.expand(shape).reshape(flat)


# ---- N:M -------------------------------------------------------------------------------------------

Axis = Literal["in", "out"]


@dataclass(frozen=True)
class NM(Pattern):
    """``n`` kept of every ``m`` consecutive weights along ``axis``: input channels (the reduction
    axis, the AIE-ML sparse multiply's and NVIDIA's 2:4) or output channels, at every kernel
    position. A ragged last run of r < m keeps min(n, r), as if padded with zeros."""

    n: int = 2
    m: int = 4
    axis: Axis = "in"
    kind: ClassVar[str] = "nm"

    def __post_init__(self) -> None:
        n, m = self.n, self.m
        ok = all(isinstance(v, int) and not isinstance(v, bool) for v in (n, m))
        if not ok or not 0 < n < m:
            raise ConfigError(f"pattern {n}:{m}", ["expected integers 0 < N < M (N kept of every M)"])
        if m > 256:
            raise ConfigError(f"pattern {n}:{m}", [f"M = {m} is above 256; use blocks or unstructured"])
        if self.axis not in ("in", "out"):
            raise ConfigError(f"pattern {n}:{m}", [f"axis must be 'in' or 'out', got {self.axis!r}"])

    def spec(self) -> str:
        return f"{self.n}:{self.m}" + (":out" if self.axis == "out" else "")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "nm", "n": self.n, "m": self.m, "axis": self.axis}

    def level_sparsity(self) -> float | None:
        return 1.0 - self.n / self.m

    def eligible(self, shape: Shape, groups: int = 1) -> str | None:
        out, in_g, _ = _weight_geometry(shape, groups)
        length = in_g if self.axis == "in" else out // groups
        if length < self.m:
            return f"{length} {'input' if self.axis == 'in' else 'output'} channels per group < M = {self.m}"
        return None

    def native_shape(self, shape: Shape, groups: int = 1) -> Shape:
        return tuple(shape)

    def expand(self, native: Tensor, shape: Shape, groups: int = 1) -> Tensor:
        return native.reshape(shape)

    def _runs(self, x: Tensor, shape: Shape, groups: int, pad: float) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        """x (weight-shaped) -> (..., runs, m) with the axis last, padded with ``pad``; and the inverse."""
        out, in_g, k = _weight_geometry(shape, groups)
        v = x.reshape(groups, out // groups, in_g, k)
        v = v.permute(0, 3, 2, 1) if self.axis == "out" else v.permute(0, 1, 3, 2)  # axis last
        length = v.shape[-1]
        runs = math.ceil(length / self.m)
        padded = torch.nn.functional.pad(v, (0, runs * self.m - length), value=pad)
        lead = padded.shape[:-1]

        def back(r: Tensor) -> Tensor:
            u = r.reshape(*lead, runs * self.m)[..., :length]
            u = u.permute(0, 3, 2, 1) if self.axis == "out" else u.permute(0, 1, 3, 2)
            return u.reshape(shape)

        return padded.reshape(*lead, runs, self.m), back

    def _full_mask(self, scorer: Scorer, shape: Shape, groups: int, keep: Tensor | None, *,
                   mode: str, allow_empty_rows: bool) -> Tensor:
        s = scorer(lambda x: x).double().reshape(shape).clone()
        if keep is not None:
            s[~_full(keep, shape)] = -math.inf
        runs, back = self._runs(s, shape, groups, pad=math.nan)
        real = ~runs.isnan()
        # rank by score, descending; padding after every real weight, ties lowest index first
        order = torch.sort(torch.where(real, runs, -math.inf), dim=-1, descending=True, stable=True).indices
        order = torch.sort(torch.where(real.gather(-1, order), 0, 1), dim=-1, stable=True).indices.gather(-1, order) \
            if (~real).any() else order
        rank = torch.empty_like(order)
        rank.scatter_(-1, order, torch.arange(self.m).expand_as(order).contiguous())
        return back(((rank < self.n) & real).to(torch.uint8)).bool()

    def _check(self, mask: Tensor, shape: Shape, groups: int) -> list[str]:
        runs, _ = self._runs(mask.to(torch.uint8), shape, groups, pad=0)
        over = runs.sum(-1) > self.n
        if over.any():
            return [f"{int(over.sum())} of {over.numel()} runs of {self.m} along the {self.axis} channels keep "
                    f"more than {self.n} (worst: {int(runs.sum(-1).max())})"]
        return []

    def metadata_bits(self, shape: Shape, groups: int = 1) -> int:
        runs, _ = self._runs(torch.zeros(shape), shape, groups, pad=0)
        return runs.shape[:-1].numel() * self.n * max(1, math.ceil(math.log2(self.m)))


# ---- hierarchies -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Hierarchical(Pattern):
    """Levels, outermost first; level i's rule holds inside every unit level i-1 keeps (HighLight's
    hierarchical structured sparsity). Lower levels are N:M runs that fit inside the unit above,
    or blocks that tile it (each parent keeps round((1 - s) * children) of its children)."""

    patterns: tuple[Pattern, ...] = ()
    kind: ClassVar[str] = "hierarchical"

    def __post_init__(self) -> None:
        levels = tuple(self.patterns)
        object.__setattr__(self, "patterns", levels)
        where = f"pattern {'/'.join(p.spec() for p in levels)}"
        if len(levels) < 2:
            raise ConfigError(where, ["a hierarchy needs at least two levels, e.g. 8x8@0.5/2:4"])
        errs = []
        for i, lv in enumerate(levels):
            if isinstance(lv, Hierarchical):
                errs.append(f"level {i + 1}: nest levels flat ('a/b/c'), not hierarchies in hierarchies")
            elif i and not isinstance(lv, (NM, Block)):
                errs.append(f"level {i + 1} ({lv.spec()}): a lower level is N:M or blocks")
            elif i:
                errs.extend(_fits(levels[i - 1], lv, i))
        if errs:
            raise ConfigError(where, errs)

    def levels(self) -> tuple[Pattern, ...]:
        return self.patterns

    def selection_default(self) -> str:
        return self.patterns[0].selection_default()

    def level_sparsity(self) -> float | None:
        return self.nominal_sparsity()

    def spec(self) -> str:
        return "/".join(p.spec() for p in self.patterns)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "hierarchical", "levels": [p.to_dict() for p in self.patterns]}

    def _fill(self, index: int, sparsity: float) -> Pattern:
        levels = list(self.patterns)
        levels[index] = levels[index].at(sparsity)
        return Hierarchical(tuple(levels))

    def eligible(self, shape: Shape, groups: int = 1) -> str | None:
        return next((r for p in self.patterns if (r := p.eligible(shape, groups)) is not None), None)

    def native_shape(self, shape: Shape, groups: int = 1) -> Shape:
        return tuple(shape)

    def expand(self, native: Tensor, shape: Shape, groups: int = 1) -> Tensor:
        return native.reshape(shape)

    def _full_mask(self, scorer: Scorer, shape: Shape, groups: int, keep: Tensor | None, *,
                   mode: str, allow_empty_rows: bool) -> Tensor:
        top = self.patterns[0]
        top_keep = None
        if keep is not None and isinstance(top, GridPattern):  # units the old mask zeroes whole stay zero
            k = _full(keep, shape).float()
            top_keep = top.reduce(k, shape, groups) > 0
        native = top.select(scorer, shape, groups, keep=top_keep if isinstance(top, GridPattern) else keep,
                            mode=mode if isinstance(top, GridPattern) else None, allow_empty_rows=allow_empty_rows)
        mask = _full(top.expand(native, shape, groups), shape)
        if keep is not None:
            mask = mask & _full(keep, shape)
        parent: Pattern = top
        for lv in self.patterns[1:]:
            if isinstance(lv, NM):
                lower = _full(lv.select(scorer, shape, groups, keep=mask), shape)
            else:
                assert isinstance(lv, Block) and isinstance(parent, Block)
                lower = _per_parent_blocks(lv, parent, scorer, shape, groups, mask)
            mask = mask & lower
            parent = lv
        return mask

    def _ramp_order(self, scorer: Scorer, full: Tensor, shape: Shape, groups: int) -> Tensor:
        """Steps on the way zero the top level's dropped units first (lowest scores first), then the
        lower levels' zeros: incremental HSS prunes blocks, then N:M inside the kept ones, so the
        units a step empties are the ones the next step keeps at zero whole."""
        order = super()._ramp_order(scorer, full, shape, groups)
        top = self.patterns[0]
        if not isinstance(top, GridPattern):
            return order
        kept_units = top.reduce(full.reshape(shape).float(), shape, groups) > 0
        dropped = ~_full(top.expand(kept_units, shape, groups), shape)
        finite = order[torch.isfinite(order)]
        span = float(finite.max() - finite.min()) + 1.0 if finite.numel() else 1.0
        return torch.where(dropped, order - 2 * span, order)  # every dropped weight below every other

    def _check(self, mask: Tensor, shape: Shape, groups: int) -> list[str]:
        # a kept unit may hold the zeros of the levels below it: "whole" applies to the last level only
        problems: list[str] = []
        parent: Pattern | None = None
        last = len(self.patterns)
        for i, lv in enumerate(self.patterns, start=1):
            if isinstance(lv, NM):
                found = lv.check(mask, shape, groups)
            elif parent is None:
                assert isinstance(lv, GridPattern)
                found = lv._check(mask, shape, groups, whole=i == last)
            else:
                assert isinstance(lv, Block) and isinstance(parent, Block)
                found = _check_per_parent(lv, parent, mask, shape, groups, whole=i == last)
            problems += [f"level {i} ({lv.spec()}): {p}" for p in found]
            parent = lv
        return problems

    def metadata_bits(self, shape: Shape, groups: int = 1) -> int:
        bits, density = 0.0, 1.0
        for lv in self.patterns:
            bits += density * lv.metadata_bits(shape, groups)
            density *= 1.0 - (lv.level_sparsity() or 0.0)
        return round(bits)


def _fits(parent: Pattern, child: Pattern, index: int) -> list[str]:
    """Can ``child`` sit inside every unit of ``parent``? (level numbers 1-based)."""
    where = f"level {index + 1} ({child.spec()})"
    if isinstance(child, NM):
        if isinstance(parent, Block):
            size = parent.in_ if child.axis == "in" else parent.out
            if size % child.m:
                return [f"{where}: runs of {child.m} do not tile the {parent.spec()} blocks above "
                        f"({size} channels along {child.axis})"]
        elif isinstance(parent, NM):
            return [f"{where}: N:M inside N:M is one N:M pattern; write it as one"]
        return []
    assert isinstance(child, Block)
    if not isinstance(parent, Block):
        return [f"{where}: blocks go inside blocks"]
    if parent.out % child.out or parent.in_ % child.in_ or (parent.out, parent.in_) == (child.out, child.in_):
        return [f"{where}: {child.out}x{child.in_} blocks must tile the {parent.out}x{parent.in_} blocks above "
                "and be smaller"]
    return []


def _parent_view(child: Block, parent: Block, x: Tensor, shape: Shape, groups: int, pad: float) -> Tensor:
    """Child-block grid values (rows, cols) -> (groups, parent rows, parent cols, children) per parent."""
    cg = BlockGeometry.of_weight(tuple(shape), child.shape, groups)
    pg = BlockGeometry.of_weight(tuple(shape), parent.shape, groups)
    ro, ri = parent.out // child.out, parent.in_ // child.in_
    v = x.reshape(groups, cg.rows_per_group, cg.cols)
    v = torch.nn.functional.pad(v, (0, pg.cols * ri - cg.cols, 0, pg.rows_per_group * ro - cg.rows_per_group),
                                value=pad)
    v = v.reshape(groups, pg.rows_per_group, ro, pg.cols, ri).permute(0, 1, 3, 2, 4)
    return v.reshape(groups, pg.rows_per_group, pg.cols, ro * ri)


def _per_parent_blocks(child: Block, parent: Block, scorer: Scorer, shape: Shape, groups: int,
                       mask: Tensor) -> Tensor:
    """Element mask keeping round((1 - s) * real children) of the child blocks of every parent block."""
    assert child.sparsity is not None
    cg = BlockGeometry.of_weight(tuple(shape), child.shape, groups)
    scores = scorer(lambda x: block_reduce(x, cg)).double()
    alive = block_reduce(mask.float(), cg) > 0
    scores = torch.where(alive, scores, -math.inf)
    per = _parent_view(child, parent, scores, shape, groups, pad=math.nan)
    real = ~per.isnan()
    n_real = real.sum(-1, keepdim=True)
    n_keep = torch.round((1.0 - child.sparsity) * n_real.double()).long()
    key = torch.where(real, per, -math.inf)
    order = torch.sort(key, dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(per.shape[-1]).expand_as(order).contiguous())
    keep_per = (rank < n_keep) & real
    # back to the child grid
    g, pr, pc, _ = keep_per.shape
    ro, ri = parent.out // child.out, parent.in_ // child.in_
    grid = keep_per.reshape(g, pr, pc, ro, ri).permute(0, 1, 3, 2, 4).reshape(g, pr * ro, pc * ri)
    grid = grid[:, : cg.rows_per_group, : cg.cols].reshape(cg.grid)
    return _full(expand_mask(grid, cg, ndim=len(shape)), shape)


def _check_per_parent(child: Block, parent: Block, mask: Tensor, shape: Shape, groups: int,
                      whole: bool = True) -> list[str]:
    cg = BlockGeometry.of_weight(tuple(shape), child.shape, groups)
    m = mask.float()
    kept = block_reduce(m, cg)
    counts = block_reduce(torch.ones_like(m), cg)
    problems = []
    mixed = int(((kept > 0) & (kept < counts)).sum())
    if mixed and whole:
        problems.append(f"{mixed} {child.out}x{child.in_} blocks are partly zero")
    if child.sparsity is not None:
        per = _parent_view(child, parent, (kept > 0).double(), shape, groups, pad=math.nan)
        real = (~per.isnan()).sum(-1)
        allowed = torch.round((1.0 - child.sparsity) * real.double())
        over = torch.nan_to_num(per, nan=0.0).sum(-1) > allowed
        if over.any():
            problems.append(f"{int(over.sum())} {parent.out}x{parent.in_} blocks keep more than "
                            f"{_fmt(1 - child.sparsity)} of their {child.out}x{child.in_} blocks")
    return problems


def prune_mask(pattern: Pattern, weight: Tensor, groups: int = 1) -> Tensor:
    """Keep-mask of ``pattern`` for ``weight`` by magnitude (L2 per unit), at the pattern's full
    sparsity, broadcastable to the weight (every row keeps a unit unless the pattern is Filter)."""
    shape = tuple(weight.shape)
    native = pattern.select(magnitude_scorer(weight), shape, groups)
    return pattern.expand(native, shape, groups).bool()
