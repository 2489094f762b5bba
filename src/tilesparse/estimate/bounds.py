"""Lower bounds: no schedule on this hardware description can run a layer faster.

Per layer, the largest of

* **compute**: kept MACs (zero blocks skipped) at the whole array's peak rate — for a conv whose
  weights are in the masked format, the sparse multiply's (twice the dense-equivalent MACs);
* for a lookup-table layer, its lookups (one per output) at every core's ``lut_lookups_per_cycle``;
* **DDR**: bytes that must cross DDR at least once — the packed weights (bitmap and bias
  included) on the column weight channels, the graph input on the column activation channels, the
  graph output on the write channels — each group of channels in parallel;
* **MemTile↔core**: every weight byte must reach a core (row channels), every input byte the
  layer reads must reach a core (a strided 1×1 conv reads only the sampled positions) and every
  output byte must leave one (column channels), in parallel.

A layer whose first weight step was prefetched during the layer before (cross-layer weight
prefetch, docs/program.md) counts only its other weight bytes on its DDR term: a layer runs from the
end of the one before to its own end, and the prefetched bytes crossed DDR before that.

The per-layer bounds summed over the network give the *per-layer bound sum*: what layers run one
after another (time-model rule 7) can reach at best if every layer hit its own bound.

**Network bound** (``network_bound``): the largest, over each resource, of the work summed over the
whole network — compute at peak; the DDR weight channels (packed weights), the DDR activation read
channels (graph input), the DDR write channels (graph output and spills); the MemTile→core row
channels (weights), column channels (inputs) and core→MemTile column channels (outputs). A schedule
that never lets one resource idle while another works would still need that long, so it is at most
the per-layer bound sum (each term summed is at most the sum of the per-layer maxima) and it shows
how far any layer-by-layer schedule is from the machine's limit. **MemTile capacity**: between two
layers every activation buffer completely written before (by its last writer: a concat has several)
and read after the boundary is stored in full somewhere; what exceeds all on-chip memory (every
MemTile and every core's data memory) at the worst boundary must have been written to DDR at least
once. Those bytes are added to the DDR write channels (only there: a reader may touch a part of a
buffer, a strided 1×1 conv a quarter). Valid for schedules that finish a layer before the next
starts (rule 7); a depth-first (fused) schedule would keep tiles of a live tensor only in part.

The *roofline* of a layer is max(compute, DDR): how far it is from the machine's balance.

**In-core fusion bound** (``fusion_bound``; not built, an estimate of what it could buy). A
depth-first schedule keeping a conv's output in the cores for the next conv (its only reader) saves
that tensor's WRITEFM and LOADFM. On this overlay (activations down the columns, weights along the
rows) a core can consume an intermediate only if it holds all of its channels for its part of the
map, so every core splits space, not channels, and every row channel carries all of the group's
weights (instead of its 1/rows share); the intermediate of a core's part must fit the data memory the
stream buffers leave (``layout.residual_capacity``). Per group of consecutive such convs, the
largest of: compute, DDR and weights on one row channel, each summed over the group; the group's
first input and other operands (a fused residual) over the column channels; its last output. The
network is cut into groups (a lone layer keeps its own bound) so that the sum is least. Ideal: a
group's work overlaps perfectly, halos and partial sums are free, the producer's input is streamed
once; rule 7 between groups.

Beside the bound, a diagnostic **halting floor** (``floor_s``): under time-model rule 5 a core
cannot compute while its weight buffer refills, and every step's LOADWM stalls the cores for the
busiest row channel's bytes. Summed over a layer's steps the stalls are at least
``weight bytes / (rows × MemTile→core bandwidth)`` (every weight byte reaches a core once, the
busiest of ``rows`` channels carries at least its share), and they add to the COMP time, which is
at least the compute bound. So no schedule the time model can express beats
``max(compute + weight stall, DDR, MemTile↔core)``. It is *not* the issue's bound (which is the
largest of the three terms); it shows how much of the gap to that bound rule 5 itself forces. A
layer whose weight buffer is double-buffered (its LOADWMs do not halt) has no stall: its floor is
its bound.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tilesparse.hw import ArrayConfig
from tilesparse.program import LayerGeometry, LayerRecord, Program
from tilesparse.program.zero_compress import expected_size
from tilesparse.timing import parts_lower_rate

__all__ = ["FusionBound", "LayerBound", "NetworkBound", "fusion_bound", "layer_bound", "network_bound",
           "prefetch_bound", "program_bounds"]


@dataclass(frozen=True)
class LayerBound:
    layer: str
    compute_s: float
    ddr_s: float
    memtile_s: float
    weight_stall_s: float = 0.0  # the least LOADWM stall (weights over the row channels)
    ddr_weight_s: float = 0.0  # the layer's weights on the DDR weight channels (prefetched or not)
    ddr_act_s: float = 0.0  # the DDR term's graph input / output part
    halting: bool = True  # its LOADWMs halt the cores (False: a double-buffered weight buffer)
    prefetched_weight_s: float = 0.0  # of ddr_weight_s, what crossed DDR during the layer before

    @property
    def prefetched_s(self) -> float:
        """The bound with the layer's DDR weights moved earlier (``prefetch_bound``)."""
        return max(self.compute_s, self.ddr_act_s, self.memtile_s)

    @property
    def floor_s(self) -> float:
        """The halting floor (module doc): never above the estimate, never below the bound; the
        bound itself for a layer whose weight buffer is double-buffered (its LOADWMs do not halt)."""
        stall = self.weight_stall_s if self.halting else 0.0
        return max(self.compute_s + stall, self.ddr_s, self.memtile_s)

    @property
    def bound_s(self) -> float:
        return max(self.compute_s, self.ddr_s, self.memtile_s)

    @property
    def roofline_s(self) -> float:
        return max(self.compute_s, self.ddr_s)

    @property
    def limiter(self) -> str:
        return max((("compute", self.compute_s), ("ddr", self.ddr_s), ("memtile", self.memtile_s)),
                   key=lambda x: x[1])[0]


def _touched(g: LayerGeometry, axis: int) -> int:
    """Input rows (axis 0) / columns (1) some window tap reads: with a stride at least the kernel
    extent the windows skip the rest (a strided 1×1 conv reads a quarter of its input), and the
    rows past the last window (a 5-row kernel giving one output row of a 6-row input), padding-only
    and dilation-skipped positions are never read either."""
    size, n_out = (g.hi, g.wi)[axis], (g.ho, g.wo)[axis]
    taps = (np.arange(n_out)[:, None] * g.stride[axis] - g.padding[axis]
            + g.dilation[axis] * np.arange(g.kernel[axis])[None, :]).ravel()
    return int(np.unique(taps[(taps >= 0) & (taps < size)]).size)


def _layer_bytes(rec: LayerRecord, buffers: dict, hw: ArrayConfig) -> tuple[float, float, float, float, float]:
    """(weight bytes, input bytes read, of them from the graph input, output bytes, of them to the
    graph output) of one layer; the MemTile<->core input / output bytes as their streams carry them
    (a zero-compressed LOADFM / WRITEFM: its expected compressed bytes)."""
    g = rec.geometry
    weights = rec.packed_weight_bytes + rec.bias_bytes
    out_bytes: float = g.co * g.ho * g.wo
    # a fused residual add reads an output-shaped second operand
    in_one = g.ci * (g.hi * g.wi if g.reads_whole_plane else _touched(g, 0) * _touched(g, 1))
    sizes = [in_one] * (len(rec.inputs) - bool(rec.residual)) + [out_bytes] * bool(rec.residual)
    in_io = sum(n for n, i in zip(sizes, rec.inputs, strict=True) if buffers[i.buffer].get("graph_io"))
    out_io = out_bytes if buffers[rec.output.buffer].get("graph_io") else 0
    in_bytes: float = sum(sizes)
    c = hw.dma_compression
    if "LOADFM" in rec.compressed:
        in_bytes = expected_size(in_bytes, rec.in_zero_frac, c.chunk_bytes, c.mask_bytes, c.word_bytes)
    if "WRITEFM" in rec.compressed:
        out_bytes = expected_size(out_bytes, rec.out_zero_frac, c.chunk_bytes, c.mask_bytes, c.word_bytes)
    return weights, in_bytes, in_io, out_bytes, out_io


def layer_bound(rec: LayerRecord, buffers: dict, hw: ArrayConfig, halting: bool = True,
                prefetched_bytes: int = 0) -> LayerBound:
    """The bound of one ``LayerRecord`` of a program (``buffers``: the program's buffer table;
    ``halting``: whether its LOADWMs halt the cores, for the halting floor; ``prefetched_bytes``:
    weight bytes its prefetching LOADW brought during the layer before, not on its DDR term)."""
    links = hw.links
    weights, in_bytes, in_io, out_bytes, out_io = _layer_bytes(rec, buffers, hw)
    col_in = hw.cols * links.ddr_to_memtile_bytes_per_s
    ddr_w = max(weights - prefetched_bytes, 0) / col_in
    ddr = max(ddr_w, in_io / col_in, out_io / (hw.cols * links.memtile_to_ddr_bytes_per_s))
    mt = links.memtile_to_core_bytes_per_s
    stall = weights / (hw.rows * mt)
    memtile = max(stall, in_bytes / (hw.cols * mt), out_bytes / (hw.cols * mt))
    act = max(in_io / col_in, out_io / (hw.cols * links.memtile_to_ddr_bytes_per_s))
    return LayerBound(rec.name, rec.kept_macs / _peak_ops_per_s(rec, hw), ddr, memtile, stall, weights / col_in, act,
                      halting, weights / col_in - ddr_w)


def _peak_ops_per_s(rec: LayerRecord, hw: ArrayConfig) -> float:
    """The whole array's peak rate of the layer's operations: MACs (twice the dense-equivalent ones for
    a conv in the masked format), or table lookups for a lut layer."""
    if rec.kind == "lut":
        return hw.n_cores * hw.core.lut_lookups_per_cycle * hw.clock_hz
    return hw.n_cores * parts_lower_rate(hw, rec.geometry.weight_format) * hw.clock_hz  # parts: each at its rate


def program_bounds(program: Program) -> list[LayerBound]:
    """Every layer's bound; a layer none of whose LOADWMs halts the cores (its weight buffer
    double-buffered, docs/program.md "Weight halves") gets no halting stall in its floor, and a
    layer whose first weights were prefetched during the layer before ("Prefetched weights") has
    those bytes off its DDR term (the layer spans from the end of the one before to its own end)."""
    double = {ins.layer for ins in program.instrs if ins.op == "LOADWM" and not ins.halts}
    halts = {ins.layer for ins in program.instrs if ins.op == "LOADWM" and ins.halts}
    pre: dict[int, int] = {}
    for ins in program.instrs:
        if ins.prefetch:
            pre[ins.layer] = pre.get(ins.layer, 0) + ins.nbytes
    return [layer_bound(r, program.buffers, program.hw, halting=li in halts or li not in double,
                        prefetched_bytes=pre.get(li, 0)) for li, r in enumerate(program.layers)]


@dataclass(frozen=True)
class NetworkBound:
    """Seconds of work summed over the network on each resource (module doc, "Network bound")."""

    resources: dict[str, float]
    spill_bytes: int  # activation bytes that cannot stay on chip at the worst layer boundary

    @property
    def bound_s(self) -> float:
        return max(self.resources.values(), default=0.0)

    @property
    def limiter(self) -> str:
        return max(self.resources.items(), key=lambda kv: kv[1])[0] if self.resources else "-"


def spill_lower_bytes(program: Program) -> int:
    """Activation bytes that must go to DDR under rule 7: at each boundary between layers k and k+1,
    the buffers completely written at or before k and read after it (graph inputs and outputs live in DDR
    anyway) beyond every MemTile and every core's data memory; the largest over the boundaries."""
    hw = program.hw
    on_chip = hw.cols * hw.memtile.bytes + hw.n_cores * hw.core.data_memory_bytes
    written: dict[str, int] = {}  # a buffer's last writer (a concat's parts come from several layers)
    for li, rec in enumerate(program.layers):
        written[rec.output.buffer] = li
    live = np.zeros(max(len(program.layers) - 1, 0), np.int64)
    for name, b in program.buffers.items():
        start, end = max(b["live"][0], written.get(name, -1)), b["live"][1]
        if not b.get("graph_io") and end > start:  # held in full from its last writer on
            live[start:end] += int(b["nbytes"])
    return int(max(0, live.max(initial=0) - on_chip))


def network_bound(program: Program, bounds: list[LayerBound] | None = None) -> NetworkBound:
    """The network bound of a compiled program (module doc): the largest per-resource sum."""
    hw, links = program.hw, program.hw.links
    col_in = hw.cols * links.ddr_to_memtile_bytes_per_s
    col_out = hw.cols * links.memtile_to_ddr_bytes_per_s
    mt = links.memtile_to_core_bytes_per_s
    bounds = bounds if bounds is not None else program_bounds(program)
    w = in_io = out_io = in_mt = out_mt = 0.0
    for rec in program.layers:
        weights, in_bytes, in_graph, out_bytes, out_graph = _layer_bytes(rec, program.buffers, hw)
        w += weights
        in_io += in_graph
        out_io += out_graph
        in_mt += in_bytes
        out_mt += out_bytes
    spill = spill_lower_bytes(program)
    res = {"compute": sum(b.compute_s for b in bounds),
           "ddr weights": w / col_in, "ddr activations in": in_io / col_in,
           "ddr write": (out_io + spill) / col_out,
           "memtile->core weights": w / (hw.rows * mt),
           "memtile->core activations": in_mt / (hw.cols * mt),
           "core->memtile activations": out_mt / (hw.cols * mt)}
    return NetworkBound(res, spill)


def prefetch_bound(bounds: list[LayerBound]) -> float:
    """Seconds no schedule that keeps rule 7 for everything but the DDR weight channel can beat: a
    layer's DDR weights may arrive during earlier layers (cross-layer weight prefetch, MemTile
    capacity ignored), so a layer is bounded by its other terms only, and the weight channel by
    all weights: ``max(Σ max(compute, DDR activations, MemTile↔core), Σ DDR weights)``."""
    return max(sum(b.prefetched_s for b in bounds), sum(b.ddr_weight_s for b in bounds), 0.0)


@dataclass(frozen=True)
class FusionBound:
    """The ideal in-core fusion bound (module doc) and the fused groups (layer names) that reach it."""

    bound_s: float
    groups: tuple[tuple[str, ...], ...]


def _chained(program: Program) -> list[bool]:
    """``out[k]``: layer k+1 may take conv k's output in the cores (module doc, "In-core fusion bound"):
    both convs, k+1 the only reader of k's output, which is no graph output and whose share per core
    fits the core's free data memory."""
    from tilesparse.program.layout import residual_capacity

    layers, hw = program.layers, program.hw
    readers: dict[str, set[int]] = {}
    for li, rec in enumerate(layers):
        for t in rec.inputs:
            readers.setdefault(t.buffer, set()).add(li)
    out = []
    for k in range(len(layers) - 1):
        a, b = layers[k], layers[k + 1]
        g, buf = a.geometry, program.buffers[a.output.buffer]
        out.append(a.kind == b.kind == "conv" and readers.get(a.output.buffer) == {k + 1}
                   and not buf.get("graph_io") and g.co * g.ho * g.wo <= hw.n_cores * residual_capacity(hw))
    return out


def _group_s(program: Program, lo: int, hi: int, bounds: list[LayerBound]) -> float:
    """The ideal seconds of layers lo..hi fused in the cores (module doc)."""
    if lo == hi:
        return bounds[lo].bound_s
    hw = program.hw
    mt = hw.links.memtile_to_core_bytes_per_s
    parts = [_layer_bytes(program.layers[li], program.buffers, hw) for li in range(lo, hi + 1)]
    weights = sum(p[0] for p in parts)
    # of a later layer's input bytes, only a fused residual operand's still come over the columns
    extra = 0.0
    for li, p in zip(range(lo + 1, hi + 1), parts[1:], strict=True):
        rec = program.layers[li]
        if rec.residual:
            g = rec.geometry
            res = g.co * g.ho * g.wo
            extra += p[1] * res / (res + g.ci * _touched(g, 0) * _touched(g, 1))
    span = bounds[lo:hi + 1]
    return max(sum(b.compute_s for b in span), sum(b.ddr_s for b in span), weights / mt,
               (parts[0][1] + extra) / (hw.cols * mt), parts[-1][3] / (hw.cols * mt))


def fusion_bound(program: Program, bounds: list[LayerBound] | None = None) -> FusionBound:
    """The in-core fusion bound of a compiled program (module doc): the least sum over a cutting of
    the layers into groups of chained convs (a dynamic programme over the cuts)."""
    bounds = bounds if bounds is not None else program_bounds(program)
    link = _chained(program)
    n = len(program.layers)
    best = [0.0] + [np.inf] * n  # best[j]: layers 0..j-1
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        lo = j - 1
        while True:
            t = best[lo] + _group_s(program, lo, j - 1, bounds)
            if t < best[j]:
                best[j], cut[j] = t, lo
            if lo == 0 or not link[lo - 1]:
                break
            lo -= 1
    groups, j = [], n
    while j > 0:
        if j - cut[j] > 1:
            groups.append(tuple(program.layers[li].name for li in range(cut[j], j)))
        j = cut[j]
    return FusionBound(float(best[n]), tuple(reversed(groups)))
