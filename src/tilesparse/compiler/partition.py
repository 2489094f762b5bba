"""Partition: which part of a layer's output each core computes, and in what per-iteration pieces.

Two decisions per layer:

1. **The grid** (``Grid``): how the output volume (channels × rows × columns) is cut across the
   ``rows × cols`` cores. Columns split space (the output width, or the height when the width is
   smaller than the number of columns), as in the paper: one MemTile per column serves its
   slice. Rows split output channels into ``oc_groups`` contiguous ranges of whole block rows,
   balanced by *kept* blocks (not by channel count), and — when there are not enough channel
   groups for all rows, or a prime row count would leave a large imbalance — also split space into
   ``sp_groups`` slices (``oc_groups × sp_groups ≤ rows``). A third layout (``col_axis="oc"``) spreads
   channels over the columns too, for layers with little space (the classifier). Uneven and prime
   splits are ordinary: every range is ``split_even`` or ``balanced_split`` of its extent.
2. **The sub-volume** (``SubVolume``): the per-core, per-iteration work unit — output channels per
   weight chunk, input channels per chunk, and an output tile of rows × columns. It must fit the
   core's buffers (``misfits``); the compiler picks the one with the lowest estimated time, or a
   ``chooser`` (the mapper) can impose one.

Every output element is computed by exactly one core (``check_coverage`` asserts it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import pairwise

import numpy as np

from tilesparse.compiler.cache import CompileCache, memo
from tilesparse.compiler.layers import LayerSpec
from tilesparse.compiler.splits import balanced_split, capped_split, greedy_fill, split_even
from tilesparse.errors import CapacityError
from tilesparse.hw import ArrayConfig
from tilesparse.program.geometry import WindowRules
from tilesparse.program.layout import (
    ACC_BYTES,
    acc_slot,
    acc_tiles,
    band_rows,
    band_rules,
    moved_positions,
    residual_capacity,
    ring_columns,
    slid_tiles,
    tile_grid,
)
from tilesparse.program.records import CoreWork, Grid, LayerPartition, SubVolume

__all__ = [
    "ACC_BYTES",
    "Chooser",
    "CoreWork",
    "Grid",
    "LayerPartition",
    "SubVolume",
    "acc_slot",
    "acc_tiles",
    "assign_cores",
    "check_coverage",
    "col_tiles",
    "max_tile_extent",
    "misfits",
    "moved_positions",
    "oc_chunks",
    "oc_units",
    "residual_capacity",
    "ring_columns",
    "slid_tiles",
    "tile_grid",
    "window_bands",
]

Chooser = Callable[[object, ArrayConfig], "SubVolume | None"]




def oc_units(spec: LayerSpec, hw: ArrayConfig) -> tuple[list[tuple[int, int]], np.ndarray]:
    """Indivisible output-channel units with their compute cost: block rows of a conv (cost = kept
    input channels × taps, so balance follows the non-zero blocks) or slabs of ``matmul N``
    channels for the other ops (cost = channels)."""
    if spec.kind == "conv":
        bo = spec.block[0]
        og = spec.co // spec.groups
        units = [(g * og + r, min(g * og + r + bo, (g + 1) * og))
                 for g in range(spec.groups) for r in range(0, og, bo)]
        kept = spec.kept_channels_per_block_row()
        cost = np.array([kept[a] * spec.taps + 1e-3 for a, _ in units])  # +eps: empty rows still cost a slot
        return units, cost
    n = hw.core.matmul_shape[2]
    units = [(a, min(a + n, spec.co)) for a in range(0, spec.co, n)]
    return units, np.array([b - a for a, b in units], dtype=np.float64)


def oc_chunks(spec: LayerSpec, oc0: int, oc1: int, oc_t: int, n_k: int,
              cache: CompileCache | None = None) -> tuple[int, ...]:
    """Boundaries of the ``n_k`` output-channel chunks of a core's channels [oc0, oc1), each at
    most ``oc_t`` wide (``n_k + 1`` values; trailing chunks may be empty).

    The cores of a column compute in lockstep, a step taking as long as its slowest core, so a
    (non-grouped) conv's chunks are balanced by *kept* work — whole block rows, the largest
    chunk's kept work as small as the width cap allows (``capped_split``) — rather than cut
    every ``oc_t`` channels, which leaves step k's chunks with random amounts of work under block
    sparsity. The cost of a block row is its kept input channels × taps (its kept blocks' MACs per
    position). Other layers, grouped convs and ranges not aligned to block rows: every ``oc_t``
    channels. ``cache``: the compile's memo (``compiler.cache``)."""
    return memo(cache, "oc_chunks", spec, (id(spec), oc0, oc1, oc_t, n_k),
                lambda: _oc_chunks_uncached(spec, oc0, oc1, oc_t, n_k))


def _oc_chunks_uncached(spec: LayerSpec, oc0: int, oc1: int, oc_t: int, n_k: int) -> tuple[int, ...]:
    bo = spec.block[0]
    if spec.kind == "conv" and spec.groups == 1 and spec.mask is None:
        raise ValueError(f"layer {spec.name!r}: a conv's chunks follow its block mask, and this spec has "
                         f"none (a program's chunks are in its chunk table)")
    if n_k == 1 and 0 < oc1 - oc0 <= oc_t:  # one chunk holds the whole range (either rule below)
        return (oc0, oc1)
    if spec.kind != "conv" or spec.groups != 1 or oc0 % bo or oc_t % bo or oc1 <= oc0:
        return tuple(min(oc0 + k * oc_t, oc1) if oc1 > oc0 else oc0 for k in range(n_k + 1))
    kept = spec.kept_channels_per_block_row()[oc0:oc1:bo] * spec.taps
    cuts = capped_split(kept.tolist(), n_k, oc_t // bo)
    return tuple(min(oc0 + i * bo, oc1) for i in cuts)


def _oc_ranges(spec: LayerSpec, hw: ArrayConfig, parts: int, per: int, cache: CompileCache | None
               ) -> list[tuple[int, int]]:
    return memo(cache, "oc_ranges", spec, (id(spec), parts, per, hw.core.matmul_shape),
                lambda: _oc_ranges_uncached(spec, hw, parts, per))


def _split_units(cost: np.ndarray, parts: int) -> list[int]:
    """``balanced_split`` of unit costs; among the splits with that bottleneck, the one with the
    narrowest widest range: the widest range sets the accumulator tile (sub.oc), so 4 block rows
    over 4 groups go 1, 1, 1, 1 even when 1, 1, 2, 0 costs the same."""
    b = balanced_split(cost, parts)
    cum = np.r_[0.0, np.cumsum(cost)]
    cap = max(cum[z] - cum[a] for a, z in pairwise(b)) * (1 + 1e-9)
    for width in range(-(-len(cost) // parts), max(np.diff(b))):
        fill = greedy_fill(cum, cap, width)
        if len(fill) - 1 <= parts:
            return fill + [len(cost)] * (parts + 1 - len(fill))
    return b


def _oc_ranges_uncached(spec: LayerSpec, hw: ArrayConfig, parts: int, per: int) -> list[tuple[int, int]]:
    """``parts`` balanced ranges of output channels. With ``per`` > 1 (``col_axis="oc"``: ``per``
    consecutive ranges share a row's weight channel) the ranges are also balanced ``per`` at a
    time — the row sums first, then each row's range over its cores — whenever that costs no
    core more: 64 block rows over 3 × 3 cores leave the busiest row 22 (⌈64 / 3⌉) and the
    busiest core 8, rather than eight cores of 8 and an idle one (busiest row 24)."""
    units, cost = oc_units(spec, hw)
    b = _split_units(cost, parts)
    if per > 1 and parts % per == 0:  # each row's range greedily filled up to the same bottleneck
        cum = np.r_[0.0, np.cumsum(cost)]
        cap = max(cum[z] - cum[a] for a, z in pairwise(b))
        two = [0]
        for a, z in pairwise(balanced_split(cost, parts // per)):
            fill = [a + i for i in greedy_fill(cum[a:z + 1] - cum[a], cap)[1:]]
            if len(fill) > per:
                break
            two += fill + [z] * (per - len(fill))
        else:
            b = two
    return [(units[b[i]][0], units[b[i + 1] - 1][1]) if b[i + 1] > b[i] else (0, 0)
            for i in range(parts)]


def assign_cores(spec: LayerSpec, hw: ArrayConfig, grid: Grid, cache: CompileCache | None = None
                 ) -> tuple[CoreWork, ...]:
    """The output sub-volume of every core under ``grid`` (see module doc; ``cache``: the
    compile's memo)."""
    rows, cols = hw.rows, hw.cols
    n_oc = grid.oc_groups * (cols if grid.col_axis == "oc" else 1)
    ocr = _oc_ranges(spec, hw, n_oc, cols if grid.col_axis == "oc" else 1, cache)
    if grid.col_axis == "hw":
        return _assign_2d(spec, hw, grid, ocr)
    if grid.col_axis == "w":
        col_sp, row_sp = split_even(spec.wo, cols), split_even(spec.ho, grid.sp_groups)
    elif grid.col_axis == "h":
        col_sp, row_sp = split_even(spec.ho, cols), split_even(spec.wo, grid.sp_groups)
    else:
        col_sp, row_sp = [0, spec.wo], split_even(spec.ho, grid.sp_groups)
    cores = []
    for r in range(rows):
        g, s = divmod(r, grid.sp_groups)
        for c in range(cols):
            if g >= grid.oc_groups:
                cores.append(CoreWork(r, c, 0, 0, 0, 0, 0, 0, -1, -1))
                continue
            ocg = g * cols + c if grid.col_axis == "oc" else g
            cs = 0 if grid.col_axis == "oc" else c
            a, b = (row_sp[s], row_sp[s + 1]), (col_sp[cs], col_sp[cs + 1])
            # row slices are heights and column slices widths, except when columns split height
            (h0, h1), (w0, w1) = (b, a) if grid.col_axis == "h" else (a, b)
            region = s * (len(col_sp) - 1) + cs
            o0, o1 = ocr[ocg]
            cores.append(CoreWork(r, c, o0, o1, h0, h1, w0, w1, ocg, region))
    return tuple(cores)


def col_tiles(ho: int, wo: int, cols: int, col_h: int) -> list[tuple[int, int, int, int]]:
    """``col_axis == "hw"``: the (h0, h1, w0, w1) map tile of every column. The map is cut into
    ``col_h`` horizontal bands holding ``split_even(cols, col_h)`` columns each, a band's width
    split evenly over its columns, and band heights chosen so that the busiest column has as few
    positions as possible: 17×17 over 8 columns as 2 bands of 4 columns (9×5 at most instead of
    17×3) or 3 bands of 3, 3 and 2 (42 positions at most); 8×8 over 7 columns as a 5-row band of 4
    columns 2 wide above a 3-row band of 3 columns 3, 3 and 2 wide (10 positions instead of 16)."""
    n = np.diff(split_even(cols, col_h))
    w = -(-wo // n)  # the widest column of each band

    def rows_under(cap: int) -> np.ndarray:
        return np.maximum(cap // w, 0)

    lo, hi = 1, int(ho * w.max())
    while lo < hi:  # the smallest busiest-column load whose bands can hold every row
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if rows_under(mid).sum() >= ho else (mid + 1, hi)
    rows = rows_under(lo)
    extra = int(rows.sum()) - ho
    for i in np.argsort(-rows * w, kind="stable"):  # hand back surplus rows, busiest bands first
        give = min(extra, int(rows[i]))
        rows[i] -= give
        extra -= give
    hb = np.r_[0, np.cumsum(rows)]
    out = []
    for i, k in enumerate(n):
        ws = split_even(wo, int(k))
        out += [(int(hb[i]), int(hb[i + 1]), ws[j], ws[j + 1]) for j in range(k)]
    return out


def _assign_2d(spec: LayerSpec, hw: ArrayConfig, grid: Grid, ocr) -> tuple[CoreWork, ...]:
    """``col_axis == "hw"``: column c serves map tile c of ``col_tiles``; the rows of a column
    split its tile's height into ``sp_groups`` slices."""
    tiles = col_tiles(spec.ho, spec.wo, hw.cols, grid.col_h)
    cores = []
    for r in range(hw.rows):
        g, s = divmod(r, grid.sp_groups)
        for c in range(hw.cols):
            h0, h1, w0, w1 = tiles[c]
            if g >= grid.oc_groups or h1 <= h0 or w1 <= w0:
                cores.append(CoreWork(r, c, 0, 0, 0, 0, 0, 0, -1, -1))
                continue
            sub = split_even(h1 - h0, grid.sp_groups)
            o0, o1 = ocr[g]
            cores.append(CoreWork(r, c, o0, o1, h0 + sub[s], h0 + sub[s + 1], w0, w1, g, s * hw.cols + c))
    return tuple(cores)


def check_coverage(spec: LayerSpec, cores: Sequence[CoreWork]) -> None:
    """Assert every output element of ``spec`` is computed by exactly one core."""
    count = np.zeros((spec.co, spec.ho, spec.wo), dtype=np.int32)
    for cw in cores:
        if not cw.empty:
            count[cw.oc0:cw.oc1, cw.h0:cw.h1, cw.w0:cw.w1] += 1
    if not (count == 1).all():
        bad = np.argwhere(count != 1)[0]
        raise AssertionError(f"layer {spec.name}: output {tuple(bad)} computed "
                             f"{count[tuple(bad)]} times")


def misfits(spec: LayerSpec, hw: ArrayConfig, sub: SubVolume, weight_chunk_bytes: int,
         n_q: int, tiles_per_group: int = 1) -> list[str]:
    """The reasons ``sub`` does not fit the core's buffers, one line each (empty if it fits).

    Input tiles and output tiles are double-buffered (ping-pong: half of each buffer per
    iteration; a sliding layer's ring of two windows' columns, ``ring_columns``, takes the same
    room); the int32 accumulators of the tiles that wait for further input-channel chunks stay
    resident (``acc_slot``: the output buffer, then ``core.res`` if no fused add uses it); a
    weight chunk fills the weight buffer alone; a fused add's int8 residual tile (output-shaped)
    fills half of ``core.res`` (``residual_capacity``).
    """
    core = hw.core
    why = []
    if spec.residual:
        res, room = sub.h * sub.w * sub.oc, residual_capacity(hw) // 2
        if res > room:
            why.append(f"residual tile {res} B > half of core.res ({room} B: data memory left after "
                       f"the input, output and weight buffers)")
    in_bytes = _input_bytes(spec, sub, n_q)
    if in_bytes > core.input_buffer_bytes // 2:
        why.append(f"input tile {in_bytes} B > half the input buffer ({core.input_buffer_bytes // 2} B)")
    need, room = (tiles_per_group if n_q > 1 else 1), acc_tiles(spec, hw, sub, n_q)
    if need > room:
        where = ("half the output buffer" if n_q == 1 else
                 "the output buffer" + ("" if spec.residual else " and core.res"))
        why.append(f"int32 accumulators of {need} tile(s) x {sub.h * sub.w * sub.oc * ACC_BYTES} B: only "
                   f"{room} fit in {where} ({core.output_buffer_bytes} B output buffer)")
    if weight_chunk_bytes > core.weight_buffer_bytes:
        why.append(f"weight chunk {weight_chunk_bytes} B > weight buffer ({core.weight_buffer_bytes} B)")
    return why


def _input_bytes(spec: LayerSpec, sub: SubVolume, n_q: int) -> int:
    """Bytes of the largest input tile a step brings: the tile's window, or for a pool run in
    window bands (``layout.splits_window``) its largest band's."""
    pos = widest_band(spec, n_q).window_positions(sub.h, sub.w)
    return spec.n_in * pos * min(sub.ci, spec.ci)


def widest_band(spec: LayerSpec, n_q: int) -> WindowRules:
    """The rules of the layer's widest window band of ``n_q`` (the layer itself without bands): a
    band's window positions depend only on its row count, so this one bounds them all."""
    widths = [b - a for a, b in (band_rows(spec, n_q, q) for q in range(n_q))]
    return band_rules(spec, n_q, int(np.argmax(widths))) if n_q > 1 and spec.bandable else spec


def window_bands(spec: LayerSpec, hw: ArrayConfig, sub: SubVolume) -> int:
    """Window-row bands of a layer that has no input-channel loop: 1 when the tile's window fits
    half of ``core.in`` or the layer cannot split it (``WindowRules.bandable``), else the fewest
    bands whose widest fits (at most one per kernel row: ``misfits`` then says why it does not)."""
    room = hw.core.input_buffer_bytes // 2
    if not spec.bandable or _input_bytes(spec, sub, 1) <= room:
        return 1
    return next((n for n in range(2, spec.kernel[0]) if _input_bytes(spec, sub, n) <= room), spec.kernel[0])


def max_tile_extent(spec: WindowRules, hw: ArrayConfig, oc: int, ci: int, other: int, axis: int) -> int:
    """The most output rows (``axis`` 0; ``other`` columns) or columns (axis 1; ``other`` rows)
    of a tile with ``oc`` × ``ci`` channels that fits the core's buffers with one input-channel
    chunk — ``misfits(spec, hw, sub, 0, 1)`` in closed form (0 if none): every limit grows with the
    tile, so each inverts. The tile search calls this instead of bisecting ``misfits``."""
    core = hw.core
    per_pos = other * oc  # output values per unit of extent
    lim = (core.output_buffer_bytes // 2) // (per_pos * ACC_BYTES)  # int32 accumulators: half core.out
    if spec.residual:
        lim = min(lim, (residual_capacity(hw) // 2) // per_pos)
    room = (core.input_buffer_bytes // 2) // (spec.n_in * min(ci, spec.ci))  # input positions
    if spec.reads_whole_plane:
        return lim if spec.hi * spec.wi <= room else 0
    o = 1 - axis
    span = room // spec.window_extent(other, o) if other > 0 else lim  # input rows/cols that fit
    ext = (spec.kernel[axis] - 1) * spec.dilation[axis] + 1
    if spec.stride[axis] >= ext:  # windows apart: each output reads ext rows (``window_extent``)
        n = span // ext
    else:  # overlapping windows: (n - 1) · stride + ext rows
        n = (span - ext) // spec.stride[axis] + 1 if span >= ext else 0
    return max(0, min(lim, n))


def min_fit_error(spec: LayerSpec, hw: ArrayConfig, sub: SubVolume, chunk: int) -> CapacityError:
    why = misfits(spec, hw, sub, chunk, window_bands(spec, hw, sub))
    return CapacityError(
        f"layer {spec.name!r} ({spec.kind}, {spec.ci}->{spec.co} ch, kernel {spec.kernel}): does not "
        f"fit a core even at the minimum sub-volume (oc={sub.oc}, ci={sub.ci}, 1x1 output): "
        + "; ".join(why) + f" (array {hw.label})")
