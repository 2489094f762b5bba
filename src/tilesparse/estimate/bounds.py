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

The network bound is the sum over layers (layers run one after another in the time model).
The *roofline* of a layer is max(compute, DDR): how far it is from the machine's balance.

Beside the bound, a diagnostic **halting floor** (``floor_s``): under time-model rule 5 a core
cannot compute while its weight buffer refills, and every step's LOADWM stalls the cores for the
busiest row channel's bytes. Summed over a layer's steps the stalls are at least
``weight bytes / (rows × MemTile→core bandwidth)`` (every weight byte reaches a core once, the
busiest of ``rows`` channels carries at least its share), and they add to the COMP time, which is
at least the compute bound. So no schedule the time model can express beats
``max(compute + weight stall, DDR, MemTile↔core)``. It is *not* the issue's bound (which is the
largest of the three terms); it shows how much of the gap to that bound rule 5 itself forces.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tilesparse.hw import ArrayConfig
from tilesparse.program import LayerGeometry, LayerRecord, Program
from tilesparse.program.sparse_format import MASKED
from tilesparse.program.zero_compress import expected_size
from tilesparse.timing import peak_macs_per_cycle

__all__ = ["LayerBound", "layer_bound", "program_bounds"]


@dataclass(frozen=True)
class LayerBound:
    layer: str
    compute_s: float
    ddr_s: float
    memtile_s: float
    weight_stall_s: float = 0.0  # the least LOADWM stall (weights over the row channels)

    @property
    def floor_s(self) -> float:
        """The halting floor (module doc): never above the estimate, never below the bound."""
        return max(self.compute_s + self.weight_stall_s, self.ddr_s, self.memtile_s)

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


def layer_bound(rec: LayerRecord, buffers: dict, hw: ArrayConfig) -> LayerBound:
    """The bound of one ``LayerRecord`` of a program (``buffers``: the program's buffer table)."""
    g = rec.geometry
    links = hw.links
    weights = rec.packed_weight_bytes + rec.bias_bytes
    out_bytes: float = g.co * g.ho * g.wo
    # a fused residual add reads an output-shaped second operand
    in_one = g.ci * (g.hi * g.wi if rec.kind == "flatten" else _touched(g, 0) * _touched(g, 1))
    sizes = [in_one] * (len(rec.inputs) - bool(rec.residual)) + [out_bytes] * bool(rec.residual)
    in_bytes: float = sum(sizes)
    in_io = sum(n for n, i in zip(sizes, rec.inputs, strict=True) if buffers[i.buffer].get("graph_io"))
    out_io = out_bytes if buffers[rec.output.buffer].get("graph_io") else 0
    col_in = hw.cols * links.ddr_to_memtile_bytes_per_s
    ddr = max(weights / col_in, in_io / col_in, out_io / (hw.cols * links.memtile_to_ddr_bytes_per_s))
    mt = links.memtile_to_core_bytes_per_s
    stall = weights / (hw.rows * mt)
    c = hw.dma_compression  # zero-compressed streams carry their expected compressed bytes
    if "LOADFM" in rec.compressed:
        in_bytes = expected_size(in_bytes, rec.in_zero_frac, c.chunk_bytes, c.mask_bytes, c.word_bytes)
    if "WRITEFM" in rec.compressed:
        out_bytes = expected_size(out_bytes, rec.out_zero_frac, c.chunk_bytes, c.mask_bytes, c.word_bytes)
    memtile = max(stall, in_bytes / (hw.cols * mt), out_bytes / (hw.cols * mt))
    return LayerBound(rec.name, rec.kept_macs / _peak_ops_per_s(rec, hw), ddr, memtile, stall)


def _peak_ops_per_s(rec: LayerRecord, hw: ArrayConfig) -> float:
    """The whole array's peak rate of the layer's operations: MACs (twice the dense-equivalent ones for
    a conv in the masked format), or table lookups for a lut layer."""
    if rec.kind == "lut":
        return hw.n_cores * hw.core.lut_lookups_per_cycle * hw.clock_hz
    return hw.n_cores * peak_macs_per_cycle(hw, rec.geometry.weight_format == MASKED) * hw.clock_hz


def program_bounds(program: Program) -> list[LayerBound]:
    return [layer_bound(r, program.buffers, program.hw) for r in program.layers]
