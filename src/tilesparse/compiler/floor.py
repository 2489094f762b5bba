"""Floors of the sub-volume search: seconds no partition of a grid beats under the time model.

The search (``planning._search``) enumerates grids in the order of their floor and stops at the
first that cannot beat the best plan so far; within a grid, a partition's own floor (``GridFloor.of``)
orders its timings and skips the ones that cannot win. A floor must never exceed the time model's
time of any partition it covers (tests/test_compiler_planning.py: the branch and bound returns the
exhaustive optimum).
"""

from __future__ import annotations

import numpy as np

from tilesparse.compiler.cache import CompileCache
from tilesparse.compiler.layers import LayerSpec
from tilesparse.compiler.partition import LayerPartition, oc_chunks
from tilesparse.compiler.steps import WeightIndex
from tilesparse.hw import ArrayConfig
from tilesparse.program.zero_compress import hw_format, min_ratio
from tilesparse.timing import WEIGHT_HALVES, parts_lower_rate, weight_double_buffer_on

__all__ = ["GridFloor", "input_pass_s"]


class GridFloor:
    """Seconds no sub-volume of a grid beats under the time model.

    A channel-wise op (no weights) moves every core's input window (its own channels) and every output
    byte over its column's channel (LOADFM, WRITEFM); a lookup table's busiest core also reads an entry
    per output at ``lut_lookups_per_cycle`` (its 256-byte table is left out). For a conv, a core's COMP
    runs at most at its peak rate, pays the kernel-call overhead at every iteration and never runs while
    its weights refill (rules 2, 5), so the layer takes at least the busiest core's kept MACs at peak
    plus the LOADWM time of the busiest row — its distinct chunks, each sent at least once per spatial
    group unless a single chunk stays resident — and one LOADFM pass over the input per output-channel
    chunk (``input_pass_s``), after the first piece of the first step's weights has arrived (all but the
    first tile's input, which may stream in meanwhile). Where the weight buffer may be double-buffered
    (``timing.weight_double_buffer_on``), the later LOADWMs need not halt the cores: the floor then
    counts them on the row channels only, beside COMP."""

    def __init__(self, spec: LayerSpec, hw: ArrayConfig, cores, widx: WeightIndex | None, cache: CompileCache):
        live = [c for c in cores if not c.empty]
        self.spec, self.widx, self.cache = spec, widx, cache
        self.comp = self.stall = self.fm = self.s = 0.0
        self.double = weight_double_buffer_on(hw)  # LOADWM may run beside COMP (a partition whose chunks fit)
        self.wbuf = hw.core.weight_buffer_bytes  # a chunk over half of it rules double-buffering out
        # of(): first-step LOADW bytes (all chunks, the largest) by (oc, n_k, ci blocks, n_q == 1)
        self.first: dict[tuple, tuple[float, int]] = {}
        if not live:
            return
        mt_bw = self.mt_bw = hw.links.memtile_to_core_bytes_per_s
        if widx is None:  # channel-wise: each (region, channel group) of a column reads its window
            in_col, out_col, seen = np.zeros(hw.cols), np.zeros(hw.cols), set()
            for c in live:
                out_col[c.col] += c.n_out
                if (c.col, c.region, c.oc_group) not in seen:
                    seen.add((c.col, c.region, c.oc_group))
                    ci0, ci1 = spec.ci_range(c.oc0, c.oc1)
                    in_col[c.col] += spec.window_positions(c.h1 - c.h0, c.w1 - c.w0) * (ci1 - ci0) * spec.n_in
            r_in, r_out = _fm_ratios(spec, hw)
            self.s = max(float(in_col.max()) * r_in, float(out_col.max()) * r_out) / mt_bw
            if spec.kind == "lut":  # and the busiest core looks up each of its outputs (rule 2)
                busiest = max(c.n_out for c in live)
                self.s = max(self.s, busiest / (hw.core.lut_lookups_per_cycle * hw.clock_hz))
            return
        oc0, oc1 = np.array([c.oc0 for c in live]), np.array([c.oc1 for c in live])
        pos = np.array([(c.h1 - c.h0) * (c.w1 - c.w0) for c in live])
        zero, n_cb = np.zeros(len(live), np.int64), np.full(len(live), widx.n_cb)
        macs = widx.kept_many(oc0, oc1, zero, n_cb) * spec.taps * pos
        rate = parts_lower_rate(hw, spec.weight_format)  # twice the dense for masked weights; parts: per part
        self.comp = float(macs.max()) / (rate * hw.clock_hz)
        self.call_s = hw.core.kernel_call_overhead_cycles / hw.clock_hz  # paid by every COMP iteration
        nbytes = widx.chunk_bytes_many(oc0, oc1, zero, n_cb, np.ones(len(live), bool))
        row_bytes: dict[int, dict[int, int]] = {}
        for c, b in zip(live, nbytes, strict=True):
            row_bytes.setdefault(c.row, {})[c.oc_group] = int(b)
        self.stall = max(sum(d.values()) for d in row_bytes.values()) / mt_bw
        self.fm = input_pass_s(spec, hw, cores) * _fm_ratios(spec, hw)[0]
        distinct = {c.oc_group: (c.oc0, c.oc1, int(b)) for c, b in zip(live, nbytes, strict=True)}
        g = np.array(list(distinct.values()))
        self.g_oc0, self.g_oc1 = g[:, 0], g[:, 1]
        # the cores wait for the first step's weight piece 0: at least 1/pieces of its bytes
        # (``pack.piece_bounds`` rounds piece 0 up) spread over every column's weight channel
        self.col_bw = hw.cols * hw.links.ddr_to_memtile_bytes_per_s
        self.piece0_bw = self.col_bw * hw.memtile.weight_slot_pieces
        # LOADW streams every distinct chunk on the column weight channels before the last COMP
        cores = max(self.comp, self.stall) if self.double else self.comp + self.stall
        self.s = max(cores, self.fm, float(g[:, 2].sum()) / self.col_bw)

    def of(self, part: LayerPartition, halting: bool = False) -> float:
        """The floor of one partition of the grid: for a conv, weight reloads per spatial group
        and input passes per output-channel chunk, after the first piece of the first step's
        weights has arrived (its LOADWM and pipeline wait for it). ``halting``: as if the weight
        buffer were never double-buffered (the floor of the halting schedule, not a floor of the layer)."""
        if self.widx is None or not self.s:
            return self.s
        reloads = part.n_s if part.n_k * part.n_q > 1 else 1
        spec, sub = self.spec, part.sub
        cb1 = (-(-min(sub.ci, spec.ci) // spec.block[1]) if spec.groups == 1 else self.widx.n_cb)
        key = (sub.oc, part.n_k, cb1, part.n_q == 1)
        if key not in self.first:  # the first step's chunks, one per oc group
            oc1 = np.array([oc_chunks(spec, int(a), int(z), sub.oc, part.n_k, self.cache)[1]
                            for a, z in zip(self.g_oc0, self.g_oc1, strict=True)])
            n = len(oc1)
            b = self.widx.chunk_bytes_many(self.g_oc0, oc1, np.zeros(n, np.int64), np.full(n, cb1),
                                           np.full(n, part.n_q == 1))
            self.first[key] = (float(b.sum()), int(b.max()))
        first, largest = self.first[key]
        # double-buffered only with more than one weight step, each chunk (the first step's among
        # them) in half the buffer (``StepTable.double_buffered``): else LOADWM halts, rule 5
        double = self.double and not halting and part.n_k * part.n_q > 1 and WEIGHT_HALVES * largest <= self.wbuf
        # the first tile's input (LOAD, LOADFM: at most two of its windows) may move while those
        # weights arrive (time-model rule 5); COMP and the weight stalls wait for them
        lead = 2 * spec.n_in * spec.window_positions(sub.h, sub.w) * min(sub.ci, spec.ci) / self.mt_bw
        fm = part.n_k * self.fm
        # COMP and every later LOADWM also wait for all of the first step's weights
        comp = self.comp + part.n_tiles * part.n_k * part.n_q * self.call_s
        if double:
            return max(first / self.piece0_bw + comp, reloads * self.stall,
                       max(fm, first / self.piece0_bw + fm - lead), self.s)
        return max(first / self.piece0_bw + comp + reloads * self.stall,
                   first / self.col_bw + comp + (reloads - 1) * self.stall,
                   max(fm, first / self.piece0_bw + fm - lead), self.s)


def _fm_ratios(spec: LayerSpec, hw: ArrayConfig) -> tuple[float, float]:
    """Lower bounds on charged / raw bytes of the layer's LOADFM and WRITEFM: 1 without activation
    compression, else ``zero_compress.min_ratio`` at its zero fractions (the floor stays a floor)."""
    if spec.act_zero_fracs is None:
        return 1.0, 1.0
    fmt = hw_format(hw)
    z_in, z_out = spec.act_zero_fracs
    return min_ratio(z_in, *fmt), min_ratio(z_out, *fmt)


def input_pass_s(spec: LayerSpec, hw: ArrayConfig, cores) -> float:
    """A lower bound on the LOADFM seconds of one pass over the input (one output-channel chunk)
    of a conv reading all input channels: every column channel carries at least the window of
    its largest region (tiles re-read halos, so their windows add up to at least that). The
    time model's layer time is at least n_k such passes (rules 1, 4). 0 for other layers."""
    if spec.kind != "conv" or spec.groups != 1:
        return 0.0
    per_col: dict[int, int] = {}
    for c in cores:
        if not c.empty:
            win = spec.window_positions(c.h1 - c.h0, c.w1 - c.w0)
            per_col[c.col] = max(per_col.get(c.col, 0), win)
    return max(per_col.values(), default=0) * spec.ci * spec.n_in / hw.links.memtile_to_core_bytes_per_s
