"""Choose each layer's grid and sub-volume: enumerate the legal ones, time each with the time model,
keep the fastest (or the one a ``chooser`` imposes, validated).

Legal means: the input tile, the accumulators and the largest packed weight chunk fit the core's
buffers (``partition.misfits``), and the MemTile staging the layer needs (two weight slots, two
activation tiles each way) stays within ``MAX_STAGING_FRACTION`` of a MemTile, leaving the rest for
activations that live between layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from tilesparse.compiler.cache import CompileCache
from tilesparse.compiler.floor import GridFloor
from tilesparse.compiler.layers import LayerSpec
from tilesparse.compiler.partition import (
    ACC_BYTES,
    Chooser,
    CoreWork,
    Grid,
    LayerPartition,
    SubVolume,
    acc_tiles,
    assign_cores,
    col_tiles,
    max_tile_extent,
    min_fit_error,
    misfits,
    oc_chunks,
    oc_units,
    widest_band,
    window_bands,
)
from tilesparse.compiler.steps import StepTable, WeightIndex, layer_steps, steps_within
from tilesparse.errors import CapacityError, ConfigError
from tilesparse.hw import ArrayConfig
from tilesparse.program.geometry import WindowRules
from tilesparse.program.records import COMPRESSIBLE_OPS
from tilesparse.program.zero_compress import charged_sizes, hw_format
from tilesparse.timing import WEIGHT_HALVES, WEIGHT_SLOTS, engine_bound_s, layer_time_arrays

__all__ = ["MAX_STAGING_FRACTION", "LayerPlan", "charged_pipe", "chunk_blocks", "plan_layer", "plan_with", "replan"]

MAX_STAGING_FRACTION = 0.5  # weight slots + tile staging may use at most half of a MemTile
PING_PONG = 2  # activation staging buffers per direction


@dataclass
class LayerPlan:
    spec: LayerSpec
    part: LayerPartition
    table: StepTable
    time_s: float
    widx: WeightIndex | None
    staging_bytes: int  # per column: weight slots + activation tile staging (reserved in MemTile)
    in_ddr: tuple[bool, ...] = ()
    out_ddr: bool = False
    weight_half_bytes: int = 0  # a double-buffered weight buffer's half (0: one buffer, LOADWM halts)


def _grids(spec: LayerSpec, hw: ArrayConfig) -> list[Grid]:
    out = []
    # columns split the height when the width is too narrow, or the kernel wider than tall
    # (a 1×7 window re-reads 6 columns at every vertical cut, none at a horizontal one)
    by_h = spec.ho > 1 and ((spec.wo < hw.cols and spec.ho > spec.wo) or spec.kernel[1] > spec.kernel[0])
    axes = ["w"] + (["h"] if by_h else []) + ["oc"]
    n_units = len(oc_units(spec, hw)[0])
    for ax in axes:
        for g_o in range(1, hw.rows + 1):
            g_s = hw.rows // g_o
            # a grid idling g_s or more rows is dominated by one with a row group more
            if g_o * (hw.cols if ax == "oc" else 1) > max(n_units, 1) and not (g_o == 1 and _spreads(spec, hw, ax)):
                continue
            if hw.rows - g_o * g_s < g_s:
                out.append(Grid(g_o, g_s, ax))
            # ...except for channel-wise ops (pools, adds, copies): a spatial cut re-reads the
            # window's halo, and their cores have compute to spare, so idle rows can win
            if spec.kind != "conv" and g_s > 1:
                out.append(Grid(g_o, 1, ax))
    # a width that does not divide over the columns (17 over 8: 3 vs 2.1 on average) balances
    # better as a tiling of the map in bands over the columns (col_tiles: 42 vs 36 on average)
    one_d = spec.ho * -(-spec.wo // hw.cols)  # the busiest column's positions, width split
    if spec.wo % hw.cols and spec.ho > 1:
        busiest = {col_h: max((b - a) * (d - c) for a, b, c, d in col_tiles(spec.ho, spec.wo, hw.cols, col_h))
                   for col_h in range(2, min(hw.cols, spec.ho + 1))}
        # only tilings that balance the columns' positions clearly better; the best two
        bands = sorted((n, col_h) for col_h, n in busiest.items() if n <= 0.95 * one_d)[:BAND_CHOICES]
        for _, col_h in bands:
            for g_o in range(1, hw.rows + 1):
                g_s = hw.rows // g_o
                if hw.rows - g_o * g_s < g_s and g_o <= max(n_units, 1):
                    out.append(Grid(g_o, g_s, "hw", col_h))
    return out or [Grid(1, hw.rows, "w")]


def _spreads(spec: LayerSpec, hw: ArrayConfig, ax: str) -> bool:
    """Whether a pool that runs in window bands (docs/program.md, "Window bands") may spread its
    channel units over the columns though they are fewer than the columns: its whole plane streams
    over the column channels, so each unit on a column of its own moves its bands in parallel
    (mobilenet_v3_small's 56 × 56 global pool of 16 channels: two columns instead of one)."""
    unit = hw.core.matmul_shape[2]
    return ax == "oc" and spec.bandable and window_bands(spec, hw, SubVolume(unit, unit, 1, 1)) > 1


BAND_CHOICES = 2  # band counts of the column tiling tried per layer (the two most balanced)


def _unit(spec: LayerSpec, hw: ArrayConfig) -> int:
    return spec.block[0] if spec.kind == "conv" else hw.core.matmul_shape[2]


def _chunk_bounds(spec: LayerSpec, cores: tuple[CoreWork, ...], oc_t: int, cache: CompileCache | None
                  ) -> list[tuple[int, int]]:
    """Every distinct non-empty output-channel chunk of the cores (``oc_chunks``)."""
    ranges = sorted({(cw.oc0, cw.oc1) for cw in cores if not cw.empty})
    n_k = max((-(-(b - a) // oc_t) for a, b in ranges), default=0)
    out = []
    for a0, a1 in ranges:
        b = oc_chunks(spec, a0, a1, oc_t, n_k, cache)
        out += [(a, z) for a, z in pairwise(b) if z > a]
    return out


def _max_chunk(widx: WeightIndex, bounds: list[tuple[int, int]], nb: int) -> int:
    cbs = np.array(list(range(0, widx.n_cb, nb)) + [widx.n_cb])
    ob = np.array(bounds)
    oc0, oc1 = ob[:, :1], ob[:, 1:]  # every output-channel chunk × every input-channel chunk
    cb0, cb1 = cbs[None, :-1], cbs[None, 1:]
    return int(widx.chunk_bytes_many(oc0, oc1, cb0, cb1, cb1 == widx.n_cb).max())


def _ci_blocks(spec, hw, widx, bounds, oc_t) -> int | None:
    """Largest number of input-channel blocks per chunk whose chunks all fit the weight buffer
    (the same byte count as ``WeightIndex.chunk_bytes``, for every chunk at once). A grouped
    conv's chunk holds all of its groups' input blocks: None if one of those does not fit."""
    if widx is None:
        return 1
    cap = hw.core.weight_buffer_bytes
    if spec.groups > 1:
        return widx.n_cb if not bounds or _max_chunk(widx, bounds, widx.n_cb) <= cap else None
    ob = np.array(bounds)
    vcum = (widx.cum[ob[:, 1]] - widx.cum[ob[:, 0]]) * spec.taps  # kept bytes up to each block col
    rows = (widx.row_starts[ob[:, 1]] - widx.row_starts[np.minimum(ob[:, 0] + 1, spec.co)] + 1)[:, None]
    bias = (ACC_BYTES * (ob[:, 1] - ob[:, 0]))[:, None]

    def worst(nb: int) -> int:
        cbs = np.r_[np.arange(0, widx.n_cb, nb), widx.n_cb]
        blocks = vcum[:, cbs[1:]] - vcum[:, cbs[:-1]]
        bitmap = -(-(rows * np.diff(cbs)[None, :]) // 8)
        last = np.zeros(blocks.shape, np.int64)
        last[:, -1] = bias[:, 0]
        return int(widx.packed(bitmap, blocks, last).max())

    if worst(widx.n_cb) <= cap:  # every input channel at once (most layers of a large array)
        return widx.n_cb
    lo, hi = 0, widx.n_cb - 1
    while lo < hi:  # chunk size grows with the number of blocks: bisect the largest that fits
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if worst(mid) <= cap else (lo, mid - 1)
    return lo or None


def _tiles(spec: WindowRules, hw: ArrayConfig, oc_t: int, ci_t: int, hc: int, wc: int) -> list[tuple[int, int]]:
    """Tile candidates (rows, cols) that fit: the widest (then tallest) one, and the one that
    re-reads the least input — for each width as many rows as fit, keeping the most output
    positions per input position moved (neighbouring tiles re-read a k×k window's halo) — and,
    for a sliding layer (``LayerSpec.slides``: a tile row moves each input column once), the
    tallest tiles of a few narrow widths, which re-read the fewest halo rows."""
    def rows(tw: int) -> int:  # the most rows that fit (at least one: a caller checks 1 × 1 fits)
        return max(1, min(hc, max_tile_extent(spec, hw, oc_t, ci_t, tw, 0)))
    widest = max(1, min(wc, max_tile_extent(spec, hw, oc_t, ci_t, 1, 1)))
    first = (rows(widest), widest)
    best = (-1.0, 0, 1, 1)
    widths = sorted({widest} | {max(1, widest // d) for d in TILE_WIDTH_DIVISORS})
    for tw in widths:
        th = rows(tw)
        p = th * tw
        score = (p / spec.window_positions(th, tw), p, th, tw)
        best = max(best, score)
    narrow = {(rows(tw), tw) for tw in SLIDING_TILE_WIDTHS if tw < widest} if spec.slides else set()
    return sorted({first, (best[2], best[3])} | narrow)


TILE_WIDTH_DIVISORS = (1, 2, 3, 4, 6, 8, 12, 16)  # tile widths tried: the widest that fits / d
SLIDING_TILE_WIDTHS = (1, 2, 4)  # narrow widths also tried for sliding layers (their tallest tiles)


@dataclass(frozen=True)
class _Live:
    """What a sub-volume's loop counts need from a grid's cores (computed once per grid)."""

    cores: tuple[CoreWork, ...]  # the non-empty ones
    oc_max: int  # widest output-channel range
    sizes: frozenset[tuple[int, int]]  # distinct region (height, width)

    @staticmethod
    def of(cores) -> _Live:
        live = tuple(c for c in cores if not c.empty)
        return _Live(live, max((c.oc1 - c.oc0 for c in live), default=0),
                     frozenset((c.h1 - c.h0, c.w1 - c.w0) for c in live))


def _partition(spec, hw, grid, cores, sub, widx, live: _Live | None = None) -> LayerPartition | None:
    live = live if live is not None else _Live.of(cores)
    if not live.cores:
        return None
    n_k = math.ceil(live.oc_max / sub.oc)
    ci_need = spec.ci if spec.kind == "conv" and spec.groups == 1 else 0
    n_q = math.ceil(ci_need / sub.ci) if ci_need else window_bands(spec, hw, sub)
    n_tiles = max(-(-h // sub.h) * -(-w // sub.w) for h, w in live.sizes)
    g = n_tiles if n_q == 1 else max(1, min(n_tiles, acc_tiles(spec, hw, sub, n_q)))
    return LayerPartition(spec.name, grid, cores, sub, n_k, n_q, g, n_tiles)


def _staging(tab: StepTable, pipe: dict[str, np.ndarray]) -> int:
    """MemTile bytes per column the layer reserves: two weight slots and, for activations that
    stream through DDR, two tiles each way (reserved for every layer: spills are decided later)."""
    w = float(tab.loadw.sum(axis=1).max(initial=0)) * WEIGHT_SLOTS  # a slot holds every piece
    fm = float(pipe["LOADFM"].max(initial=0))
    wr = float(pipe["WRITEFM"].max(initial=0))
    return int(w + PING_PONG * (fm + wr))


def _evaluate(spec, hw, part, in_ddr, out_ddr, widx, cache: CompileCache, cutoff_s: float = math.inf
              ) -> LayerPlan | None:
    """The plan of ``part`` with its time, or None if its staging does not fit MemTile or it
    cannot beat ``cutoff_s`` (its engines' busy time already reaches it; LOADFM's alone is
    checked before the rest of its steps are computed, ``steps_within``)."""
    tab = steps_within(spec, hw, part, in_ddr, out_ddr, widx, cache, cutoff_s)
    if tab is None:
        return None
    pipe = tab.pipe()
    staging = _staging(tab, pipe)  # MemTile holds the activations uncompressed
    if staging > hw.memtile.bytes * MAX_STAGING_FRACTION:
        return None
    pipe = charged_pipe(spec, hw, pipe)
    double = tab.double_buffered(hw)
    if cutoff_s < math.inf and engine_bound_s(tab.loadw, tab.loadwm, pipe, hw, double=double) >= cutoff_s:
        return None
    total = layer_time_arrays(tab.loadw, tab.loadwm, pipe, hw, tab.iters, tab.writes, double=double)
    return LayerPlan(spec, part, tab, total, widx, staging, in_ddr, out_ddr, _half(hw, double))


def _half(hw: ArrayConfig, double: bool) -> int:
    """``LayerPlan.weight_half_bytes``: the offset of the weight buffer's second half, or 0."""
    return hw.core.weight_buffer_bytes // WEIGHT_HALVES if double else 0


def charged_pipe(spec: LayerSpec, hw: ArrayConfig, pipe: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``pipe`` with LOADFM / WRITEFM as the time model will charge them when activation compression
    is on (``spec.act_zero_fracs``): compressed at the layer's zero fraction where that saves bytes
    (``zero_compress.charged_sizes``, the rule ``decide`` applies to the program)."""
    if spec.act_zero_fracs is None:
        return pipe
    fmt = hw_format(hw)
    z = dict(zip(COMPRESSIBLE_OPS, spec.act_zero_fracs, strict=True))
    return {op: charged_sizes(v, z[op], *fmt) if op in z else v for op, v in pipe.items()}


def _subvolumes(spec, hw, live: _Live, widx, cache: CompileCache) -> list[SubVolume]:
    """The candidate sub-volumes of a grid (tile shapes shared by the layers of one geometry)."""
    memo = cache.memo("tiles", None, (_geometry(spec), hw.model_dump_json()), dict)
    if not live.cores:
        return []
    unit = _unit(spec, hw)
    oc_max = live.oc_max
    hc = max(h for h, _ in live.sizes)
    wc = max(w for _, w in live.sizes)
    # powers of two of the unit, and the balanced chunk for every chunk count (no ragged last chunk)
    ocs = sorted({min(oc_max, unit * 2 ** i) for i in range(12)} | {oc_max}
                 | {unit * -(-oc_max // (n * unit)) for n in range(1, MAX_OC_CHUNKS + 1)})
    subs = []
    for oc_t in ocs:
        for ci_t in _chunk_cis(spec, hw, live.cores, widx, oc_t, cache):
            bands = _bands(spec, hw, SubVolume(oc_t, ci_t, 1, 1))  # a pool's window in bands of rows
            key = (oc_t, ci_t, hc, wc, bands)
            if key not in memo:  # tiles whose windows fit in that many bands (the widest band's rules)
                memo[key] = _tiles(widest_band(spec, bands), hw, oc_t, ci_t, hc, wc)
            subs += [SubVolume(oc_t, ci_t, th, tw) for th, tw in memo[key]]
    return subs


def _chunk_cis(spec, hw, cores, widx, oc_t: int, cache: CompileCache) -> tuple[int, ...]:
    """The input channels per chunk tried with output-channel chunks of ``oc_t`` on these (live)
    cores: the most blocks whose chunks all fit the weight buffer (``_ci_blocks``), and fewer (none
    if not even one block fits), each with a 1 × 1 tile fitting the core. The grids that split the
    channels alike (they differ in space only) share them."""
    ranges = tuple(sorted({(c.oc0, c.oc1) for c in cores}))
    return cache.memo("chunk_ci", (spec, widx, hw), (id(spec), id(widx), id(hw), ranges, oc_t),
                      lambda: _chunk_cis_uncached(spec, hw, cores, widx, oc_t, cache))


def _chunk_cis_uncached(spec, hw, cores, widx, oc_t: int, cache: CompileCache) -> tuple[int, ...]:
    bounds = _chunk_bounds(spec, cores, oc_t, cache)
    nb = _ci_blocks(spec, hw, widx, bounds, oc_t)
    if nb is None:
        return ()
    full_ci = spec.kind == "conv" and spec.groups == 1
    # fewer input channels per chunk buy larger tiles (more positions per weight load); a
    # smaller chunk need not fit where nb does (its boundaries, and so the last chunk's kept
    # blocks beside the bias, move), so each is checked
    n_q = -(-widx.n_cb // nb) if full_ci else 1
    nbs = sorted(n for n in {max(1, nb // d) for d in CI_DIVISORS} | {-(-widx.n_cb // q) for q in (n_q, n_q + 1)}
                 if n == nb or _max_chunk(widx, bounds, n) <= hw.core.weight_buffer_bytes) if full_ci else [nb]
    cis = [min(spec.ci, n * spec.block[1]) if full_ci else spec.chunk_ci(oc_t) for n in nbs]
    return tuple(ci_t for ci_t in cis
                 if not misfits(spec, hw, one := SubVolume(oc_t, ci_t, 1, 1), 0, _bands(spec, hw, one)))


def _bands(spec, hw, sub: SubVolume) -> int:
    """The window-row bands of ``sub`` (``partition.window_bands``; 1 for a conv, whose q loop
    splits its input channels, if any)."""
    return 1 if spec.kind == "conv" else window_bands(spec, hw, sub)


MAX_OC_CHUNKS = 8  # balanced output-channel chunk sizes tried: the core's share / 1 … / 8
CI_DIVISORS = (1, 2, 4)  # input-channel chunk = the largest that fits, a half or a quarter (larger tiles)


def plan_layer(spec: LayerSpec, hw: ArrayConfig, in_ddr: tuple[bool, ...], out_ddr: bool,
               chooser: Chooser | None = None, node: object = None, cache: CompileCache | None = None
               ) -> LayerPlan:
    """The fastest legal (grid, sub-volume) of ``spec`` under the time model.

    Branch and bound over every grid and sub-volume: grids in the order of their floor
    (``GridFloor``), each sub-volume skipped when its floor already loses to the best plan so
    far. A ``chooser``'s sub-volume replaces the enumeration (validated). ``cache``: the
    compile's memo (``compiler.cache``; a fresh one if None), where a layer of the same geometry,
    mask, array and activation homes finds the choice of the first one.
    """
    cache = CompileCache() if cache is None else cache
    _check_table(spec, hw)
    widx = WeightIndex(spec, hw) if spec.kind == "conv" else None
    forced = chooser(node, hw) if chooser is not None else None
    key = _plan_key(spec, hw, in_ddr, out_ddr) if chooser is None else None
    if key is not None and (hit := cache.get("plans", key)) is not None:  # planned already: same choice
        grid, sub = hit
        plan = _try(spec, hw, grid, assign_cores(spec, hw, grid, cache), sub, in_ddr, out_ddr, widx, cache)
        if plan is not None:
            return plan
    best = _search(spec, hw, in_ddr, out_ddr, forced, widx, cache)
    if key is not None:
        cache.put("plans", key, (best.part.grid, best.part.sub))
    return best


def _check_table(spec: LayerSpec, hw: ArrayConfig) -> None:
    """A lut layer's table must fit the core's weight buffer as the core lays it out."""
    c = hw.core
    if spec.kind == "lut" and c.lut_table_bytes > c.weight_buffer_bytes:
        raise CapacityError(f"layer {spec.name!r}: its lookup table takes core.lut_table_bytes = "
                            f"{c.lut_table_bytes} B, the weight buffer holds {c.weight_buffer_bytes} B "
                            f"(array {hw.label})")


def clear_caches() -> None:
    """Nothing to forget: the compiler keeps no state between compiles (every ``compile_graph``
    starts with a fresh ``CompileCache``). Kept for callers that time cold compiles."""


def _geometry(spec: LayerSpec) -> tuple:
    return (spec.kind, len(spec.inputs), spec.ci, spec.hi, spec.wi, spec.co, spec.ho, spec.wo, spec.kernel,
            spec.stride, spec.padding, spec.dilation, spec.groups, spec.block, bool(spec.residual))


def _plan_key(spec: LayerSpec, hw: ArrayConfig, in_ddr: tuple[bool, ...], out_ddr: bool) -> tuple:
    """Everything the choice depends on — the geometry, the mask, the array, the activation
    homes — and nothing it does not (names, buffer offsets): repeated blocks plan once."""
    mask = (None if spec.mask is None
            else (spec.mask.shape, spec.mask.dtype.str, np.ascontiguousarray(spec.mask).tobytes()))
    return _geometry(spec), mask, hw.model_dump_json(), tuple(in_ddr), bool(out_ddr), spec.act_zero_fracs


def _search(spec, hw, in_ddr, out_ddr, forced, widx, cache: CompileCache) -> LayerPlan:
    grids = []
    for grid in _grids(spec, hw):
        cores = assign_cores(spec, hw, grid, cache)
        if forced is not None:
            _validate_forced(spec, hw, cores, forced, widx, cache)
        floor = GridFloor(spec, hw, cores, widx, cache)
        grids.append((floor.s, len(grids), grid, cores, floor))
    grids.sort(key=lambda x: x[:2])
    # every partition of the grids whose floor can still win, then the time model on them in
    # the order of their own floors until the floor loses to the best plan (or the budget ends)
    cands: list[tuple[float, int, LayerPartition]] = []
    grid_floor: dict[int, GridFloor] = {}  # each candidate's grid floor, by its index
    best: LayerPlan | None = None
    n_evals = 0
    for gi, (floor_s, _, grid, cores, floor) in enumerate(grids):
        if best is not None and floor_s >= best.time_s:
            break
        live = _Live.of(cores)
        subs = [forced] if forced is not None else _subvolumes(spec, hw, live, widx, cache)
        for sub in subs:
            part = _partition(spec, hw, grid, cores, sub, widx, live)
            if part is not None:
                grid_floor[len(grid_floor)] = floor  # indices unique across the slicing below
                cands.append((floor.of(part), len(grid_floor) - 1, part))
        if gi == 0 and cands:  # a first plan, so that hopeless grids are not enumerated at all
            cands.sort(key=lambda c: c[:2])
            best, n_evals = _best_of(spec, hw, in_ddr, out_ddr, widx, cands, None, 0, cache)
            cands = cands[n_evals:]
    cands.sort(key=lambda c: c[:2])
    done: set[int] = set()
    if grids and grids[0][4].double and cands:
        # Double-buffering lowers the floors of partitions whose chunks fit half the weight buffer,
        # often far below their time, so the budget can end among them before the partitions the
        # halting search would time. Time those first, in the order of their halting floors
        # (what the search did without the mechanism), then the rest by the true floors.
        by_halt = sorted(((grid_floor[i].of(p, halting=True), i, p) for _, i, p in cands), key=lambda c: c[:2])
        best, n_evals = _best_of(spec, hw, in_ddr, out_ddr, widx, by_halt, best, n_evals, cache, done)
        n_evals = 0  # a fresh budget for the true floors
    best, _ = _best_of(spec, hw, in_ddr, out_ddr, widx, cands, best, n_evals, cache, done)
    if best is None:
        raise _no_fit(spec, hw, widx)
    return best


def _best_of(spec, hw, in_ddr, out_ddr, widx, cands, best: LayerPlan | None, n: int, cache: CompileCache,
             done: set[int] | None = None) -> tuple[LayerPlan | None, int]:
    """The fastest of ``cands`` (sorted by floor) and ``best``, and the timings done so far
    (``n`` before): stops at the first floor that cannot win, or once ``MAX_EVALS`` timings
    have cost ``MAX_WORK`` pipeline iterations (small layers are timed exhaustively). ``done``:
    indices of candidates timed already (skipped), to which this call adds its own."""
    work = 0
    for floor_s, i, part in cands:
        if best is not None and (floor_s >= best.time_s or (n >= MAX_EVALS and work >= MAX_WORK)):
            break
        if done is not None:
            if i in done:
                continue
            done.add(i)
        n += 1
        work += part.n_tiles * part.n_k * part.n_q
        plan = _evaluate(spec, hw, part, in_ddr, out_ddr, widx, cache, best.time_s if best is not None else math.inf)
        if plan is not None and (best is None or plan.time_s < best.time_s):
            best = plan
    return best, n


MAX_EVALS = 48  # time-model evaluations per layer at least, in the order of the candidates' floors
MAX_WORK = 3_000  # ... and at least this many pipeline iterations timed (the cost of an evaluation)


def _try(spec, hw, grid, cores, sub, in_ddr, out_ddr, widx, cache: CompileCache) -> LayerPlan | None:
    part = _partition(spec, hw, grid, cores, sub, widx)
    return _evaluate(spec, hw, part, in_ddr, out_ddr, widx, cache) if part is not None else None


def plan_with(spec: LayerSpec, hw: ArrayConfig, grid: Grid, sub: SubVolume, in_ddr: tuple[bool, ...],
              out_ddr: bool, cache: CompileCache | None = None) -> LayerPlan | None:
    """The plan of ``spec`` with this grid and sub-volume (its channel ranges and chunks cut from
    ``spec``'s mask), or None if a weight chunk or the MemTile staging does not fit."""
    cache = CompileCache() if cache is None else cache
    _check_table(spec, hw)
    widx = WeightIndex(spec, hw) if spec.kind == "conv" else None
    cores = assign_cores(spec, hw, grid, cache)
    if _largest_chunk(spec, cores, sub, widx, cache) > hw.core.weight_buffer_bytes:
        return None
    return _try(spec, hw, grid, cores, sub, in_ddr, out_ddr, widx, cache)


def chunk_blocks(spec: LayerSpec, sub: SubVolume) -> int:
    """Input-channel blocks per chunk of a (non-grouped) conv under ``sub``."""
    return max(1, math.ceil(min(sub.ci, spec.ci) / spec.block[1]))


def _largest_chunk(spec: LayerSpec, cores, sub: SubVolume, widx: WeightIndex | None, cache: CompileCache) -> int:
    """Packed bytes of the largest weight chunk the cores load under ``sub`` (0 without weights)."""
    live = tuple(c for c in cores if not c.empty)
    if widx is None or not live:
        return 0
    nb = chunk_blocks(spec, sub) if spec.groups == 1 else widx.n_cb
    return _max_chunk(widx, _chunk_bounds(spec, live, sub.oc, cache), nb)


def replan(plan: LayerPlan, hw: ArrayConfig, in_ddr: tuple[bool, ...], out_ddr: bool,
           cache: CompileCache | None = None) -> LayerPlan:
    """The same partition with different activation homes (after MemTile allocation spilled some)."""
    tab = layer_steps(plan.spec, hw, plan.part, in_ddr, out_ddr, plan.widx, cache)
    double = tab.double_buffered(hw)
    total = layer_time_arrays(tab.loadw, tab.loadwm, charged_pipe(plan.spec, hw, tab.pipe()), hw, tab.iters,
                              tab.writes, double=double)
    return LayerPlan(plan.spec, plan.part, tab, total, plan.widx, plan.staging_bytes, in_ddr, out_ddr,
                     _half(hw, double))


def _validate_forced(spec, hw, cores, sub, widx, cache: CompileCache) -> None:
    if not isinstance(sub, SubVolume):
        raise ConfigError("chooser", [(f"layer {spec.name}: chooser returned {type(sub).__name__}, "
                                       f"expected SubVolume or None")])
    errs = [f"layer {spec.name}: sub-volume field {f} = {getattr(sub, f)} must be a positive integer"
            for f in ("oc", "ci", "h", "w") if not isinstance(getattr(sub, f), int) or getattr(sub, f) < 1]
    unit = _unit(spec, hw)
    if not errs and sub.oc % unit:
        errs.append(f"layer {spec.name}: sub-volume oc = {sub.oc} must be a multiple of {unit}")
    if not errs and spec.kind == "conv" and spec.groups == 1 and sub.ci < spec.ci and sub.ci % spec.block[1]:
        errs.append(f"layer {spec.name}: sub-volume ci = {sub.ci} must be a multiple of {spec.block[1]} "
                    f"or at least {spec.ci}")
    if errs:
        raise ConfigError("chooser", errs)
    why = misfits(spec, hw, sub, _largest_chunk(spec, cores, sub, widx, cache), _bands(spec, hw, sub))
    if why:
        raise CapacityError(f"layer {spec.name!r}: chooser's sub-volume {sub} does not fit: " + "; ".join(why))


def _no_fit(spec: LayerSpec, hw: ArrayConfig, widx: WeightIndex | None) -> CapacityError:
    unit = _unit(spec, hw)
    oc = min(unit, spec.co)
    ci = min(spec.block[1], spec.ci) if spec.kind == "conv" and spec.groups == 1 else spec.chunk_ci(oc)
    chunk = 0
    if widx is not None:
        nb = 1 if spec.groups == 1 else widx.n_cb
        chunk = _max_chunk(widx, [(a, min(a + oc, spec.co)) for a in range(0, spec.co, oc)], nb)
    one = SubVolume(oc, ci, 1, 1)
    err = min_fit_error(spec, hw, one, chunk)
    if not misfits(spec, hw, one, chunk, _bands(spec, hw, one)):
        return CapacityError(f"layer {spec.name!r}: every sub-volume needs more MemTile staging than "
                             f"{MAX_STAGING_FRACTION:.0%} of {hw.memtile.bytes} B (array {hw.label})")
    return err
