"""The analytical model, vectorized over a batch of mappings of one problem.

Steps (Sparseloop's three, on Timeloop's loop-nest view):

1. **Dense dataflow** (:func:`dense_transfers`): for every tensor and every (child, parent) pair
   of levels that store it (the MAC units are the innermost child), the words moved per pair.
   A child tile of ``tile_c`` words is refilled ``T`` times: the product of the temporal loops above
   the child, except the innermost run of loops that do not index the tensor (the tile stays put,
   *stationarity*). Spatial loops that do not index the tensor share one parent read (multicast;
   for outputs, a spatial reduction). Outputs: every child write-back is an update at the parent;
   the parent sends partial sums back down for every update except the first into each element.
2. **Sparse** (:func:`evaluate_batch`): compressed tensors move ``data + metadata`` bits (a format
   on the tile at each level, expected under a density model); compute skipping/gating conditioned
   on leader tensors scales the MACs and the operand/partial-sum traffic at the MACs by the
   probability that the leaders are non-zero; skipping also drops a follower tile's refill when the
   leader's tile at that level is empty. Gating saves energy only: gated accesses and MACs still
   take their cycles.
3. **Micro-architecture**: cycles = max(compute cycles, each level's read and write bytes per
   used instance / bandwidth); energy = bytes x pJ/byte per level + MACs x pJ/MAC; EDP = energy x
   cycles.

:func:`evaluate` gives one mapping's :class:`Breakdown`, which explains every figure.
"""

from __future__ import annotations

from collections.abc import Mapping as MappingT
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from tilesparse.costmodel.arch import Architecture
from tilesparse.costmodel.density import Dense, DensityModel
from tilesparse.costmodel.formats import Format, Uncompressed
from tilesparse.costmodel.mapping import Mapping, MappingBatch, validate_mapping
from tilesparse.costmodel.problem import DIMS, RELEVANT, TENSORS, Problem, window
from tilesparse.errors import ConfigError

__all__ = [
    "OBJECTIVES",
    "BatchResult",
    "Breakdown",
    "SparseSpec",
    "dense_transfers",
    "evaluate",
    "evaluate_batch",
    "objective_values",
]

W, I, O = 0, 1, 2  # noqa: E741  the tensors' names throughout the literature (weights, inputs, outputs)
OBJECTIVES = ("latency", "energy", "edp")


@dataclass(frozen=True)
class SparseSpec:
    """Sparsity of W and I, their compressed formats, and the compute action.

    ``action`` ``skip`` or ``gate`` is conditioned on ``leaders`` (MACs happen only where every
    leader operand is non-zero); ``none`` computes every MAC.

    ``mac_fraction`` (optional) is the fraction of the dense MACs the hardware actually performs,
    when its rule differs from the leaders' density: the AIE-ML sparse multiply always works on
    50 % of the weights (a 1:4 layer runs at the 2:4 rate). It replaces the compute fraction for
    both cycles and MAC energy, and (with ``action`` none) scales the partial-sum accesses at the
    MACs; the operands are then read dense (the sparse multiply reads the whole activation
    operand). ``mac_rate`` multiplies the MACs per cycle (int8 x int4: 2, from
    the hw description's ``macs_per_cycle``); a MAC at rate x costs 1/x of a MAC's energy (the
    vector unit spends the same energy per cycle)."""

    density: MappingT[str, DensityModel] = field(default_factory=dict)
    formats: MappingT[str, Format] = field(default_factory=dict)
    action: Literal["none", "gate", "skip"] = "none"
    leaders: tuple[str, ...] = ("W",)
    mac_fraction: float | None = None
    mac_rate: float = 1.0

    def __post_init__(self) -> None:
        errs = [f"density: tensor {t!r} is not W or I (outputs are dense)"
                for t in self.density if t not in ("W", "I")]
        errs += [f"formats: unknown tensor {t!r}" for t in self.formats if t not in ("W", "I")]
        errs += [f"leaders: {t!r} is not W or I" for t in self.leaders if t not in ("W", "I")]
        if self.action not in ("none", "gate", "skip"):
            errs.append(f"action must be none, gate or skip, got {self.action!r}")
        if self.mac_fraction is not None and not 0.0 <= self.mac_fraction <= 1.0:
            errs.append(f"mac_fraction must be in [0, 1], got {self.mac_fraction!r}")
        if not self.mac_rate > 0:
            errs.append(f"mac_rate must be positive, got {self.mac_rate!r}")
        if errs:
            raise ConfigError("sparse spec", errs)

    def dm(self, t: int) -> DensityModel:
        return self.density.get(TENSORS[t], Dense())

    def fmt(self, t: int) -> Format:
        return self.formats.get(TENSORS[t], Uncompressed())

    @property
    def compute_fraction(self) -> float:
        if self.action == "none":
            return 1.0
        return float(np.prod([self.dm(TENSORS.index(t)).density for t in self.leaders]))


DENSE = SparseSpec()


@dataclass
class Transfers:
    """Per (child slot k = child level + 1, tensor): words moved, (B, L, 3) each."""

    parent: np.ndarray  # parent level, -1 where the child does not store the tensor
    down: np.ndarray  # read at the parent for the child (W, I: fills; O: partial sums sent down)
    up: np.ndarray  # O: updates written into the parent
    child_in: np.ndarray  # written into the child (fills, partial sums received)
    child_out: np.ndarray  # O: read at the child to write back


def _refetches(batch: MappingBatch) -> np.ndarray:
    """T for every child slot k (child level k-1) and tensor: (B, L, 3).

    Products of integer factors stay exact in float64 (far below 2**53 for any real layer)."""
    b, n_lv, _ = batch.temporal.shape
    # Loop position first: numpy reduces a leading axis row by row, far faster than a short last axis.
    order = np.ascontiguousarray(batch.order.transpose(2, 0, 1))  # (D, B, L)
    f = np.take_along_axis(batch.temporal.transpose(2, 0, 1), order, axis=0).astype(np.float64)
    rel = RELEVANT.T[order] & (f > 1)[..., None]  # (D, B, L, 3), innermost loop first
    seen = np.logical_or.accumulate(rel, axis=0)
    lead = np.where(seen, 1.0, f[..., None]).prod(axis=0)  # innermost run of non-indexing loops
    lead = np.moveaxis(lead, 2, 0)  # (3, B, L)
    seen_last = np.moveaxis(seen[-1], 2, 0)
    a = f.prod(axis=0)  # (B, L) all temporal loops of a level
    q = a[None] / lead  # loops from the first indexing one outward
    has = seen_last
    above = np.cumprod(a[:, ::-1], axis=1)[:, ::-1]  # above[:, j] = product over levels >= j
    t = np.ones((3, b, n_lv))
    nxt = np.ones((3, b))  # slot L (the outermost level) has no loops above
    for k in range(n_lv - 1, 0, -1):  # child level k-1: loops at levels >= k
        above_next = above[:, k + 1] if k + 1 < n_lv else 1.0
        nxt = np.where(has[:, :, k], q[:, :, k] * above_next, nxt)
        t[:, :, k] = nxt
    t[:, :, 0] = above[:, 0]  # the MACs: no operand latch, every temporal iteration reads
    return np.moveaxis(t, 0, 2)


def dense_transfers(problem: Problem, arch: Architecture, batch: MappingBatch,
                    cum: np.ndarray | None = None) -> Transfers:
    """Step 1: dense words moved between each child and its parent, per tensor. ``cum``: the
    tile extents (B, L, D) if the caller has them."""
    b, n_lv, _ = batch.temporal.shape
    s = batch.spatial.astype(np.float64)
    if cum is None:
        cum = np.cumprod(batch.temporal * s, axis=1)
    tile = problem.tile_elems(cum)  # (B, L, 3)
    s_rel = np.exp(np.log(s) @ RELEVANT.T.astype(np.float64))  # (B, L, 3) relevant spatial
    s_lvl = s.prod(axis=2)  # (B, L)
    inst = np.ones((b, n_lv))  # used instances of each level: spatial factors above it
    inst[:, :-1] = np.cumprod(s_lvl[:, :0:-1], axis=1)[:, ::-1]
    inst_mac = inst[:, 0] * s_lvl[:, 0]
    t = _refetches(batch)
    keep = batch.keep
    out = Transfers(np.full((b, n_lv, 3), -1), *(np.zeros((b, n_lv, 3)) for _ in range(4)))
    # Elements entering each level (the first update of an output element needs no psum read).
    t_up = np.ones((b, n_lv, 3))
    t_up[:, :-1] = t[:, 1:]
    entering_o = (tile * t_up)[:, :, O] * inst
    for k in range(n_lv):
        c = k - 1
        base = t[:, k] * (1.0 if c < 0 else tile[:, c])  # words per child instance
        child_words = base * (inst_mac if c < 0 else inst[:, c])[:, None]
        undecided = np.ones((b, 3), bool) if c < 0 else keep[:, c].copy()
        rel_acc = np.ones((b, 3))
        for p in range(k, n_lv):  # the parent is the first level above the child that keeps x
            rel_acc = rel_acc * s_rel[:, p]
            here = undecided & keep[:, p]
            undecided &= ~here
            par_words = base * rel_acc * inst[:, p, None]
            out.parent[:, k][here] = p
            psum = np.maximum(par_words[:, O] - entering_o[:, p], 0.0)
            words = np.where(here, par_words, 0.0)
            out.down[:, k, :2] += words[:, :2]
            out.up[:, k, O] += words[:, O]
            out.down[:, k, O] += np.where(here[:, O], psum, 0.0)
            if c >= 0:
                ch = np.where(here, child_words, 0.0)
                out.child_in[:, k, :2] += ch[:, :2]
                out.child_out[:, k, O] += ch[:, O]
                out.child_in[:, k, O] += np.where(here[:, O], psum, 0.0)
    return out


@dataclass
class BatchResult:
    """Model outputs for a batch; counts are words (B, L, 3), bytes include metadata."""

    macs: int
    effective_macs: np.ndarray  # MACs actually performed (not skipped, not gated)
    gated_macs: np.ndarray
    reads: np.ndarray
    fills: np.ndarray
    updates: np.ndarray
    gated_reads: np.ndarray  # reads that happen but cost no energy (gating)
    read_bytes: np.ndarray  # (B, L) actual + gated
    write_bytes: np.ndarray  # (B, L)
    compute_cycles: np.ndarray  # (B,)
    level_cycles: np.ndarray  # (B, L)
    cycles: np.ndarray
    mac_energy_pj: np.ndarray
    level_energy_pj: np.ndarray  # (B, L)
    energy_pj: np.ndarray
    utilization: np.ndarray

    @property
    def edp(self) -> np.ndarray:
        return self.energy_pj * self.cycles


def _compression(problem: Problem, cum: np.ndarray, sparse: SparseSpec) -> np.ndarray:
    """Bytes moved per dense byte, per level and tensor (B, L, 3): (data + metadata) / dense."""
    n, g, k, c, p, q, r, s = (cum[..., i] for i in range(len(DIMS)))
    h = window(p, r, problem.stride[0], problem.dilation[0])
    w = window(q, s, problem.stride[1], problem.dilation[1])
    views = {W: (g * k, c, r * s), I: (n * g * h * w, c, np.ones_like(c))}
    ratio = np.ones(cum.shape[:-1] + (3,))
    for t, (rows, cols, reps) in views.items():
        fmt, dm = sparse.fmt(t), sparse.dm(t)
        if isinstance(fmt, Uncompressed):
            continue
        data, meta = fmt.expected(rows, cols, dm, reps)
        bits = problem.bits[t]
        ratio[..., t] = (data * bits + meta) / (rows * cols * reps * bits)
    return ratio


def _tile_nonempty(problem: Problem, cum: np.ndarray, sparse: SparseSpec) -> np.ndarray:
    """P(every leader's tile at each level is non-empty): (B, L)."""
    n, g, k, c, p, q, r, s = (cum[..., i] for i in range(len(DIMS)))
    h = window(p, r, problem.stride[0], problem.dilation[0])
    w = window(q, s, problem.stride[1], problem.dilation[1])
    views = {"W": (g * k, c, r * s), "I": (n * g * h * w, c, 1)}
    prob = np.ones(cum.shape[:-1])
    for t in sparse.leaders:
        prob = prob * (1.0 - sparse.dm(TENSORS.index(t)).prob_empty(*views[t]))
    return prob


def _scales(problem, batch, sparse, cum) -> tuple[np.ndarray, np.ndarray]:
    """Fraction of each pair's dense transfers that happen (actual) and that are gated."""
    b, n_lv, _ = batch.temporal.shape
    act, gated = np.ones((b, n_lv, 3)), np.zeros((b, n_lv, 3))
    if sparse.action == "none":
        if sparse.mac_fraction is not None:  # one partial-sum update per performed MAC
            act[:, 0, O] = sparse.mac_fraction
        return act, gated
    fc = sparse.compute_fraction
    followers = [t for t in range(3) if TENSORS[t] not in sparse.leaders]
    for t in followers:  # operand / partial-sum accesses of the MACs
        act[:, 0, t] = fc
        gated[:, 0, t] = 0.0 if sparse.action == "skip" else 1.0 - fc
    if sparse.action == "skip":
        nonempty = _tile_nonempty(problem, cum, sparse)  # (B, L) per child level
        for t in followers:
            if t != O:  # refills of a follower tile are skipped when the leader tile is empty
                act[:, 1:, t] = nonempty[:, :-1]
    return act, gated


def _per_level(tr: Transfers, act: np.ndarray, gated: np.ndarray, n_lv: int):
    b = tr.down.shape[0]
    reads, updates, g_reads = (np.zeros((b, n_lv, 3)) for _ in range(3))
    for p in range(n_lv):
        at = tr.parent == p
        reads[:, p] = (tr.down * act * at).sum(axis=1)
        g_reads[:, p] = (tr.down * gated * at).sum(axis=1)
        updates[:, p] = (tr.up * act * at).sum(axis=1)
    fills = np.zeros((b, n_lv, 3))
    fills[:, :-1] = tr.child_in[:, 1:] * act[:, 1:]
    reads[:, :-1] += tr.child_out[:, 1:] * act[:, 1:]
    return reads, fills, updates, g_reads


def evaluate_batch(problem: Problem, arch: Architecture, batch: MappingBatch,
                   sparse: SparseSpec | None = None) -> BatchResult:
    """Evaluate every mapping of ``batch`` (assumed valid: see ``check_batch``)."""
    sparse = sparse or DENSE
    n_lv = arch.n_levels
    cum = np.cumprod((batch.temporal * batch.spatial).astype(np.float64), axis=1)
    tr = dense_transfers(problem, arch, batch, cum)
    act, gated = _scales(problem, batch, sparse, cum)
    reads, fills, updates, g_reads = _per_level(tr, act, gated, n_lv)
    word_bytes = problem.bytes_per_word * _compression(problem, cum, sparse)  # (B, L, 3)
    rb_act = (reads * word_bytes).sum(axis=2)
    rb = rb_act + (g_reads * word_bytes).sum(axis=2)
    wb = ((fills + updates) * word_bytes).sum(axis=2)
    s_lvl = batch.spatial.prod(axis=2).astype(np.float64)
    used = np.ones((len(batch), n_lv))  # used instances per level
    used[:, :-1] = np.cumprod(s_lvl[:, :0:-1], axis=1)[:, ::-1]
    lvl_cyc = np.zeros((len(batch), n_lv))
    e_lvl = np.zeros((len(batch), n_lv))
    for i, lv in enumerate(arch.levels):
        if lv.read_bytes_per_cycle is not None:
            lvl_cyc[:, i] = rb[:, i] / (used[:, i] * lv.read_bytes_per_cycle)
        if lv.write_bytes_per_cycle is not None:
            lvl_cyc[:, i] = np.maximum(lvl_cyc[:, i], wb[:, i] / (used[:, i] * lv.write_bytes_per_cycle))
        if lv.rw_bytes_per_cycle is not None:
            lvl_cyc[:, i] = np.maximum(lvl_cyc[:, i], (rb[:, i] + wb[:, i]) / (used[:, i] * lv.rw_bytes_per_cycle))
        e_lvl[:, i] = rb_act[:, i] * lv.read_pj_per_byte + wb[:, i] * lv.write_pj_per_byte
    fc = sparse.compute_fraction
    per_unit = batch.temporal.prod(axis=(1, 2)).astype(np.float64)  # MACs per MAC unit
    skip = sparse.action == "skip"
    cyc_frac = (fc if skip else 1.0) if sparse.mac_fraction is None else sparse.mac_fraction
    if sparse.mac_fraction is not None:
        fc = sparse.mac_fraction
    comp = per_unit * cyc_frac / (arch.compute.macs_per_cycle * sparse.mac_rate)
    if arch.compute.overhead_cycles_per_tile:  # one kernel call per level-0 tile
        comp = comp + batch.temporal[:, 1:].prod(axis=(1, 2)) * arch.compute.overhead_cycles_per_tile
    cycles = np.maximum(comp, lvl_cyc.max(axis=1))
    eff = np.full(len(batch), problem.macs * fc)
    gmacs = np.full(len(batch), problem.macs * (1.0 - fc) if sparse.action == "gate" else 0.0)
    e_mac = (eff * arch.compute.pj_per_mac + gmacs * arch.compute.gated_pj_per_mac) / sparse.mac_rate
    util = eff / (cycles * arch.peak_macs_per_cycle * sparse.mac_rate)
    return BatchResult(problem.macs, eff, gmacs, reads, fills, updates, g_reads, rb, wb, comp,
                       lvl_cyc, cycles, e_mac, e_lvl, e_mac + e_lvl.sum(axis=1), util)


def objective_values(res: BatchResult, objective: str) -> np.ndarray:
    """Lower is better: cycles, pJ, or pJ x cycles."""
    if objective == "latency":
        return res.cycles
    if objective == "energy":
        return res.energy_pj
    if objective == "edp":
        return res.edp
    raise ConfigError("objective", [f"expected one of {', '.join(OBJECTIVES)}, got {objective!r}"])


@dataclass(frozen=True)
class Breakdown:
    """One mapping's figures, each traceable to accesses, bytes, bandwidths and MACs."""

    problem: Problem
    arch: Architecture
    mapping: Mapping
    macs: int
    effective_macs: float
    cycles: float
    compute_cycles: float
    level_cycles: dict[str, float]
    energy_pj: float
    mac_energy_pj: float
    level_energy_pj: dict[str, float]
    utilization: float
    accesses: dict[str, dict[str, dict[str, float]]]  # level -> tensor -> reads/fills/updates/gated
    traffic_bytes: dict[str, dict[str, float]]  # level -> read/write bytes

    @property
    def edp(self) -> float:
        return self.energy_pj * self.cycles

    @property
    def bottleneck(self) -> str:
        worst = max(self.level_cycles.items(), key=lambda kv: kv[1], default=("", 0.0))
        return "compute" if self.compute_cycles >= worst[1] else worst[0]

    def seconds(self) -> float:
        return self.cycles / self.arch.clock_hz

    def explain(self) -> str:
        lines = [f"{self.problem} on {self.arch.name}",
                 f"cycles {self.cycles:,.0f} = max(compute {self.compute_cycles:,.0f}, "
                 + ", ".join(f"{k} {v:,.0f}" for k, v in self.level_cycles.items())
                 + f") -> bound by {self.bottleneck}",
                 f"MACs {self.macs:,} (performed {self.effective_macs:,.0f}), "
                 f"utilization {self.utilization:.1%}",
                 f"energy {self.energy_pj / 1e6:,.3f} uJ = MACs {self.mac_energy_pj / 1e6:,.3f} + "
                 + " + ".join(f"{k} {v / 1e6:,.3f}" for k, v in self.level_energy_pj.items()),
                 f"EDP {self.edp:.4g} pJ*cycles"]
        for lv, per_t in self.accesses.items():
            tb = self.traffic_bytes[lv]
            lines.append(f"  {lv}: read {tb['read']:,.0f} B, write {tb['write']:,.0f} B")
            for t, c in per_t.items():
                if any(c.values()):
                    lines.append("    " + t + ": " + ", ".join(f"{k} {v:,.0f}" for k, v in c.items()))
        return "\n".join(lines)


def _clean(x: float) -> float:
    """Undo log/exp round-off: counts within 1e-9 (relative) of an integer are that integer."""
    r = round(x)
    return float(r) if abs(x - r) <= 1e-9 * max(1.0, abs(x)) else float(x)


def evaluate(problem: Problem, arch: Architecture, mapping: Mapping,
             sparse: SparseSpec | None = None) -> Breakdown:
    """Validate ``mapping`` and model it (raises ``InvalidMappingError`` with the reason)."""
    validate_mapping(problem, arch, mapping)
    r = evaluate_batch(problem, arch, mapping.to_batch(), sparse)
    for f in ("reads", "fills", "updates", "gated_reads", "read_bytes", "write_bytes", "compute_cycles",
              "level_cycles", "cycles", "energy_pj", "mac_energy_pj", "level_energy_pj"):
        setattr(r, f, np.vectorize(_clean, otypes=[float])(getattr(r, f)))
    names = [lv.name for lv in arch.levels]
    acc = {n: {t: {"reads": float(r.reads[0, i, j]), "fills": float(r.fills[0, i, j]),
                   "updates": float(r.updates[0, i, j]), "gated_reads": float(r.gated_reads[0, i, j])}
               for j, t in enumerate(TENSORS)} for i, n in enumerate(names)}
    return Breakdown(
        problem, arch, mapping, r.macs, float(r.effective_macs[0]), float(r.cycles[0]),
        float(r.compute_cycles[0]), dict(zip(names, r.level_cycles[0].tolist(), strict=True)),
        float(r.energy_pj[0]), float(r.mac_energy_pj[0]),
        dict(zip(names, r.level_energy_pj[0].tolist(), strict=True)),
        float(r.utilization[0]), acc,
        {n: {"read": float(r.read_bytes[0, i]), "write": float(r.write_bytes[0, i])}
         for i, n in enumerate(names)})
