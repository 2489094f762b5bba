"""The steps of a partitioned layer and what each of their instructions moves or computes.

A layer runs as ``n_s × n_k × n_q`` *steps* (spatial group s, output-channel chunk k, input-channel
chunk q, in that loop order). A step is: LOADW (its weight chunks DDR → MemTile), LOADWM (MemTile →
cores, skipped while the same chunk is still resident), then a pipeline over the group's tiles
(LOAD if the input lives in DDR, LOADFM, COMP, WRITEFM and WRITE if the output lives in DDR; WRITEFM
and WRITE only in the last input-channel chunk). This module computes, per step and per
iteration, the bytes on the busiest channel of every transfer and the cycles of the slowest core
for COMP — the numbers the time model turns into seconds (``tilesparse.timing``, which also
holds the COMP cycle rule, ``timing.comp_cycles``).

Channel accounting (docs/time-model.md): LOADFM/LOAD/WRITEFM/WRITE use one channel per column (a
window read by several cores of a column is broadcast once); LOADWM one channel per row (a chunk
shared by several cores of a row is broadcast once); LOADW spreads the step's distinct chunks over
all column channels. LOADW and LOADWM move the weights in ``hw.memtile.weight_slot_pieces``
pieces (piece i: the i-th byte range of every chunk, ``pack.piece_bounds``), one value per piece.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from tilesparse.compiler.cache import CompileCache, memo
from tilesparse.compiler.layers import LayerSpec
from tilesparse.compiler.pack import piece_bounds
from tilesparse.compiler.partition import (
    ACC_BYTES,
    CoreWork,
    LayerPartition,
    moved_positions,
    oc_chunks,
)
from tilesparse.hw import ArrayConfig
from tilesparse.program.layout import band_rows, chunk_with_inputs, splits_window
from tilesparse.program.packing import LUT_TABLE_BYTES, packed_nbytes
from tilesparse.program.sparse_format import MASKED, PARTS
from tilesparse.program.zero_compress import charged_raw
from tilesparse.timing import (
    PIPE_OPS,
    WEIGHT_HALVES,
    comp_cycles,
    element_cycles,
    part_matmul_shapes,
    transfer_s,
    weight_double_buffer_on,
)

__all__ = ["Step", "WeightIndex", "band_taps", "chunk_with_inputs", "core_chunk", "layer_steps", "steps_within"]


class WeightIndex:
    """Prefix sums over a conv's kept-block mask, for O(1) chunk sizes and COMP work."""

    def __init__(self, spec: LayerSpec, hw: ArrayConfig | None = None):
        assert spec.mask is not None
        self.spec = spec
        # the masked format's sizes need the array's sparse multiply (``program.packing.packed_nbytes``)
        sparse = spec.weight_format in (MASKED, PARTS)
        if sparse and hw is None:
            raise ValueError(f"layer {spec.name}: the {spec.weight_format} weight format needs the array description")
        self.sparse = hw.core.sparse_matmul if sparse and hw is not None else None
        bo, bi = spec.block
        og, ig = spec.co // spec.groups, spec.ci // spec.groups
        self.n_cb = spec.mask.shape[1]
        col_w = np.minimum(bi, ig - np.arange(self.n_cb) * bi)
        o = np.arange(spec.co)
        g, r = np.divmod(o, og)
        self.row_of = g * math.ceil(og / bo) + r // bo  # mask block row of each channel
        per_ch = spec.mask[self.row_of] * col_w[None, :]  # kept input channels, channel × block col
        self.cum = np.zeros((spec.co + 1, self.n_cb + 1), dtype=np.int64)
        self.cum[1:, 1:] = per_ch.cumsum(0).cumsum(1)
        new_row = np.r_[True, self.row_of[1:] != self.row_of[:-1]]
        self.row_starts = np.r_[0, np.cumsum(new_row)]  # block rows starting before channel o
        self.memo: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        self.ch_cum = np.diff(self.cum, axis=0)  # per channel: kept input channels up to block col

    def chunk_bytes(self, oc0: int, oc1: int, cb0: int, cb1: int, with_bias: bool) -> int:
        """Packed bytes (bitmap + kept blocks + bias, in the layer's weight format) — what
        ``program.packing.pack_chunk`` writes."""
        if oc1 <= oc0:
            return 0
        return int(self.chunk_bytes_many(np.array([oc0]), np.array([oc1]), np.array([cb0]),
                                         np.array([cb1]), np.array([with_bias]))[0])

    def chunk_bytes_many(self, oc0, oc1, cb0, cb1, with_bias) -> np.ndarray:
        """Vectorised ``chunk_bytes`` over arrays of chunk bounds."""
        c = self.cum
        blocks = (c[oc1, cb1] - c[oc0, cb1] - c[oc1, cb0] + c[oc0, cb0]) * self.spec.taps
        n_rows = self.row_starts[oc1] - self.row_starts[np.minimum(oc0 + 1, self.spec.co)] + 1
        bitmap = -(-(n_rows * (cb1 - cb0)) // 8)
        total = self.packed(bitmap, blocks, ACC_BYTES * (oc1 - oc0) * with_bias)
        return np.where(oc1 > oc0, total, 0)

    def packed(self, bitmap, blocks, bias) -> np.ndarray:
        """Packed bytes of chunks from their bitmap, kept-block and bias bytes (the layer's format)."""
        return packed_nbytes(self.spec.weight_format, bitmap, blocks, bias, self.sparse)

    def q_tables_many(self, cb0: np.ndarray, cb1: np.ndarray, n: int, k: int) -> np.ndarray:
        """Prefix sums over slabs of ``n`` output channels of the matmul steps per ``M`` positions
        (a slab costs ceil(its largest kept input channels / k) × taps: K padded per tap), for several block-column
        ranges at once: array (slabs+1, Q)."""
        key = ("many", tuple(cb0.tolist()), tuple(cb1.tolist()), n, k)
        if key not in self.memo:
            ch = self.ch_cum
            if self.spec.groups == 1 and n % self.spec.block[0] == 0:
                # every slab starts a block row, whose channels all keep the same input channels:
                # a slab's largest count is the largest over its block rows' first channels
                firsts = ch[::self.spec.block[0]]
                kept = firsts[:, cb1] - firsts[:, cb0]
                n_rows = n // self.spec.block[0]
            else:
                kept, n_rows = ch[:, cb1] - ch[:, cb0], n  # co × Q
            pad = (-len(kept)) % n_rows
            kp = np.concatenate([kept, np.zeros((pad, kept.shape[1]), kept.dtype)])
            slabs = kp.reshape(-1, n_rows, kept.shape[1]).max(axis=1)
            steps = -(-slabs // k) * self.spec.taps  # rule 2: K padded per tap
            zero = np.zeros((1, kept.shape[1]), np.int64)
            self.memo[key] = np.concatenate([zero, np.cumsum(steps, 0)])
        return self.memo[key]

    def kept_many(self, oc0, oc1, cb0, cb1) -> np.ndarray:
        """Kept (input channel, output channel) pairs of chunks, from the 2-D prefix sums."""
        c = self.cum
        return c[oc1, cb1] - c[oc0, cb1] - c[oc1, cb0] + c[oc0, cb0]


@dataclass
class Step:
    """One (s, k, q) step of a layer: per-iteration busiest-channel bytes (transfers) or slowest-core
    cycles (COMP), in ``pipe``; LOADW / LOADWM bytes per weight piece; executed MACs."""

    s: int
    k: int
    q: int
    loadw_bytes: np.ndarray  # per piece, busiest column channel
    loadw_total: int  # all channels and pieces (0: chunk already resident)
    loadwm_bytes: np.ndarray  # per piece, busiest row channel
    pipe: dict[str, np.ndarray] = field(default_factory=dict)
    macs: int = 0

    @property
    def iters(self) -> int:
        return len(self.pipe["COMP"])


def core_chunk(spec: LayerSpec, part: LayerPartition, cw: CoreWork, k: int, q: int,
               cache: CompileCache | None = None) -> tuple[int, int, int, int] | None:
    """(oc0, oc1, ci0, ci1) core ``cw`` works on in chunk (k, q), or None if it idles
    (output channels: ``partition.oc_chunks``; ``cache``: the compile's memo, where code
    generation, which asks for every core in every step, finds the bounds the search cut)."""
    if cw.empty:
        return None
    o0, o1 = oc_chunks(spec, cw.oc0, cw.oc1, part.sub.oc, part.n_k, cache)[k:k + 2]
    return chunk_with_inputs(spec, part, o0, o1, q)


def _group_chunks(spec: LayerSpec, part: LayerPartition, reps: list[CoreWork], cache: CompileCache | None):
    """Per (k, group): output-channel chunk bounds; per (k, q, group): input-channel chunk bounds."""
    b = np.array([oc_chunks(spec, c.oc0, c.oc1, part.sub.oc, part.n_k, cache) for c in reps], dtype=np.int64).T
    oc0, oc1 = b[:-1], b[1:]  # K × G, empty (oc0 == oc1) where the group has fewer chunks
    if spec.kind == "conv" and spec.groups == 1:
        c0 = part.sub.ci * np.arange(part.n_q)
        c1 = np.minimum(c0 + part.sub.ci, spec.ci)
        ci0 = np.broadcast_to(c0[None, :, None], (part.n_k, part.n_q, len(reps)))
        ci1 = np.broadcast_to(c1[None, :, None], ci0.shape)
    else:
        lo = np.zeros_like(oc0)
        hi = np.zeros_like(oc0)
        for idx in np.ndindex(oc0.shape):
            if oc1[idx] > oc0[idx]:
                lo[idx], hi[idx] = spec.ci_range(int(oc0[idx]), int(oc1[idx]))
        # every q reads the same channels (one q, or a pool's window bands: ``layout.splits_window``)
        shape = (part.n_k, part.n_q, len(reps))
        ci0, ci1 = np.broadcast_to(lo[:, None, :], shape), np.broadcast_to(hi[:, None, :], shape)
    return oc0, oc1, ci0, ci1


def _chunk_work(spec, hw, widx, oc0, oc1, ci0, ci1, last_q):
    """Per (k, q, group): COMP work (matmul steps per M positions for a conv, element ops per
    position otherwise), executed MACs per position, packed weight bytes."""
    o0 = np.broadcast_to(oc0[:, None, :], ci0.shape)
    o1 = np.broadcast_to(oc1[:, None, :], ci0.shape)
    if spec.kind != "conv":  # taps per q: the window's, or each window band's (``band_taps``)
        ops = (o1 - o0) * band_taps(spec, ci0.shape[1])[None, :, None] * spec.n_in
        nbytes = np.zeros(ops.shape, dtype=np.int64)
        if spec.kind == "lut":  # the table: one chunk per oc group, loaded in the first step, then resident
            nbytes[0, 0] = np.where(o1[0, 0] > o0[0, 0], LUT_TABLE_BYTES, 0)
        return ops, ops, nbytes
    bi = spec.block[1]
    cb0 = ci0 // bi if spec.groups == 1 else np.zeros_like(ci0)
    cb1 = -(-ci1 // bi) if spec.groups == 1 else np.full_like(ci0, widx.n_cb)
    qb0, qb1 = cb0[0, :, 0], cb1[0, :, 0]
    qi = np.arange(ci0.shape[1])[None, :, None]
    shapes = part_matmul_shapes(hw, spec.weight_format)  # rule 2: K per weight part (masked: doubled)
    work = sum(_part_work(spec, widx, o0, o1, cb0, cb1, qb0, qb1, qi, kd, n) for _, kd, n in shapes)
    mpp = widx.kept_many(o0, o1, qb0[qi], qb1[qi]) * spec.taps * len(shapes)  # every part multiplies
    nbytes = widx.chunk_bytes_many(o0, o1, cb0, cb1, np.broadcast_to(last_q[None, :, None], o0.shape))
    return work, mpp, nbytes


def band_taps(spec: LayerSpec, n_q: int) -> np.ndarray:
    """Taps of each q of a layer without an input-channel loop: the window's (``n_q`` = 1), or
    those of each window band of a pool run in bands (``layout.splits_window``), which sum to them."""
    if not splits_window(spec, n_q):
        return np.full(n_q, spec.taps, np.int64)
    return np.array([(b - a) * spec.kernel[1] for a, b in (band_rows(spec, n_q, q) for q in range(n_q))], np.int64)


def _part_work(spec, widx, o0, o1, cb0, cb1, qb0, qb1, qi, kd: int, n: int) -> np.ndarray:
    """Matmul steps per M positions of one weight part at rule 2's (K, N) = (``kd``, ``n``)."""
    # per q (block-column range uniform over groups): slab steps and kept channels, prefix-summed
    slab_cum = widx.q_tables_many(qb0, qb1, n, kd)  # (slabs+1, Q)
    work = np.where(o1 > o0, slab_cum[-(-o1 // n), qi] - slab_cum[o0 // n, qi], 0)  # empty chunks idle
    # slabs start at the chunk: recount chunks not aligned to N at either end (the table's slabs
    # are aligned, and its last slab would take channels of the next chunk)
    for idx in zip(*np.nonzero(((o0 % n != 0) | ((o1 % n != 0) & (o1 < spec.co))) & (o1 > o0)), strict=True):
        kept = widx.ch_cum[o0[idx]:o1[idx], cb1[idx]] - widx.ch_cum[o0[idx]:o1[idx], cb0[idx]]
        kept = np.concatenate([kept, np.zeros((-len(kept)) % n, kept.dtype)]).reshape(-1, n).max(axis=1)
        work[idx] = int((-(-kept // kd)).sum()) * spec.taps
    return work


def _chunks_of(spec, hw, part: LayerPartition, reps: list[CoreWork], widx, last_q, cache: CompileCache | None):
    """``_group_chunks`` and ``_chunk_work`` of a partition and its chunks' weight pieces (K × Q ×
    groups × pieces bytes), shared by the candidates of a search that differ only in their tile
    shape (same groups' channels, chunk sizes and counts)."""
    def compute():
        oc0, oc1, ci0, ci1 = _group_chunks(spec, part, reps, cache)
        work, mpp, nbytes = _chunk_work(spec, hw, widx, oc0, oc1, ci0, ci1, last_q)
        pieces = np.diff(piece_bounds(nbytes, hw.memtile.weight_slot_pieces), axis=-1)
        out = (oc0, oc1, ci0, ci1, work, mpp, nbytes, pieces)
        for a in out:
            a.flags.writeable = False  # shared between evaluations
        return out

    key = (id(spec), id(widx), id(hw), tuple((c.oc0, c.oc1) for c in reps), part.sub.oc, part.sub.ci,
           part.n_k, part.n_q)
    return memo(cache, "chunk_work", (spec, widx, hw), key, compute)


class _Layout:
    """Incidence of a partition: oc groups × regions × rows/columns, and per-region tiles."""

    def __init__(self, spec: LayerSpec, hw: ArrayConfig, part: LayerPartition):
        live = [cw for cw in part.cores if not cw.empty]
        reps: dict[int, CoreWork] = {}
        for cw in live:
            reps.setdefault(cw.oc_group, cw)
        self.reps = [reps[g] for g in sorted(reps)]
        regions = sorted({cw.region for cw in live})
        gi = {g: i for i, g in enumerate(sorted(reps))}
        ri = {r: i for i, r in enumerate(regions)}
        self.col_rg = np.zeros((hw.cols, len(regions), len(reps)))  # cores per (column, region, group)
        self.row_g = np.zeros((hw.rows, len(reps)))
        for cw in live:
            self.col_rg[cw.col, ri[cw.region], gi[cw.oc_group]] += 1
            self.row_g[cw.row, gi[cw.oc_group]] = 1
        self.rg = self.col_rg.sum(axis=0)
        self.p = np.zeros((len(regions), part.n_tiles))
        self.win = np.zeros((len(regions), part.n_tiles))  # input positions LOADFM moves
        th, tw = part.sub.h, part.sub.w
        by_size: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        done = set()
        for cw in live:
            if cw.region in done:
                continue
            done.add(cw.region)
            size = (cw.h1 - cw.h0, cw.w1 - cw.w0)
            if size not in by_size:  # regions of one size have the same tiles
                # the tiles of ``tile_grid``, row-major: every row of tiles has the same widths
                hs = np.minimum(th, size[0] - np.arange(0, size[0], th))
                ws = np.minimum(tw, size[1] - np.arange(0, size[1], tw))
                by_size[size] = (np.outer(hs, ws).ravel(),
                                 moved_positions(spec, *size, th, tw, part.tiles_per_group))
            p, win = by_size[size]
            self.p[ri[cw.region], :len(p)] = p
            self.win[ri[cw.region], :len(p)] = win
        for a in (self.col_rg, self.row_g, self.rg, self.p, self.win):
            a.flags.writeable = False  # shared between evaluations (``of``)

    @staticmethod
    def of(spec: LayerSpec, hw: ArrayConfig, part: LayerPartition, cache: CompileCache | None) -> _Layout:
        """The layout of ``part``, shared by the partitions of a search that differ only in their
        channel chunks (same cores and tile shape)."""
        key = (id(spec), id(part.cores), part.sub.h, part.sub.w, part.n_tiles, part.tiles_per_group, id(hw))
        return memo(cache, "layout", (spec, part.cores, hw), key, lambda: _Layout(spec, hw, part))


def _first_readers(lay: _Layout, ci0: np.ndarray, ci1: np.ndarray, cilen: np.ndarray) -> np.ndarray:
    """(j, column, region, group) 1 where the group's input window is charged in step j: the group
    has cores there and no earlier group of that column and region reads the same channel range
    (broadcast down a column, it moves once: a grouped conv's oc groups can share their inputs,
    e.g. the two output channels of a depthwise channel multiplier 2 on two rows)."""
    n_k, n_g = ci0.shape[0], cilen.shape[1]
    lo, hi = (np.broadcast_to(a, (n_k, cilen.shape[0] // n_k, n_g)).reshape(cilen.shape) for a in (ci0, ci1))
    same = (lo[:, :, None] == lo[:, None, :]) & (hi[:, :, None] == hi[:, None, :]) & (cilen[:, None, :] > 0)
    same &= np.tri(n_g, k=-1, dtype=bool)[None]  # same[j, g, h]: an earlier group h reads g's range
    present = lay.col_rg > 0  # (column, region, group)
    dup = np.einsum("jgh,crh->jcrg", same.astype(np.int64), present.astype(np.int64)) > 0
    return (present[None] & ~dup).astype(float)


class StepTable:
    """Every step of a layer as arrays (step j = (s, k, q) in loop order): LOADW bytes on the
    busiest column channel (steps × pieces) and in total, LOADWM bytes on the busiest row channel
    (steps × pieces), and per pipeline
    op a (steps × iterations) array of busiest-channel bytes or slowest-core cycles (zero-padded
    past a step's ``iters``; an op that does not run in a step is all zero there)."""

    def __init__(self, n_s: int, n_k: int, n_q: int, t_max: int):
        self.n_s, self.n_k, self.n_q, self.t_max = n_s, n_k, n_q, t_max
        self.parts: list[tuple] = []
        self.ops: tuple[str, ...] = PIPE_OPS
        self.max_chunk = 0  # packed bytes of the largest weight chunk a core loads

    def double_buffered(self, hw: ArrayConfig) -> bool:
        """Whether the layer's weight buffer is double-buffered (time-model rule 5): the array and
        its rule profile allow it (``timing.weight_double_buffer_on``), more than one step loads
        weights, and every chunk fits half of ``core.weight_buffer_bytes``."""
        weighted = int((self.loadw.sum(axis=1) > 0).sum()) if self.parts else 0
        return (weighted > 1 and WEIGHT_HALVES * self.max_chunk <= hw.core.weight_buffer_bytes
                and weight_double_buffer_on(hw))

    def add(self, s, loadw, loadw_total, loadwm, pipe, macs, iters) -> None:
        self.parts.append((s, loadw, loadw_total, loadwm, pipe, macs, iters))

    def _cat(self, f) -> np.ndarray:
        return np.concatenate([f(p) for p in self.parts])

    @property
    def loadw(self) -> np.ndarray:
        return self._cat(lambda p: p[1])

    @property
    def loadwm(self) -> np.ndarray:
        return self._cat(lambda p: p[3])

    @property
    def iters(self) -> list[int]:
        """Pipeline iterations of every step."""
        return [p[6] for p in self.parts for _ in range(len(p[1]))]

    @property
    def writes(self) -> list[bool]:
        """Whether each step writes its outputs (WRITEFM, WRITE): its last input-channel chunk."""
        return [j % self.n_q == self.n_q - 1 for p in self.parts for j in range(len(p[1]))]

    def pipe(self) -> dict[str, np.ndarray]:
        """op -> (steps × t_max) array."""
        def pad(a: np.ndarray) -> np.ndarray:
            if a.shape[1] == self.t_max:
                return a
            out = np.zeros((a.shape[0], self.t_max))
            out[:, :a.shape[1]] = a
            return out
        return {op: np.concatenate([pad(p[4][op]) for p in self.parts]) for op in self.ops}

    def steps(self) -> list[Step]:
        """The steps as objects (for code generation and reports)."""
        out = []
        for s, lw, lwt, lwm, pipe, macs, iters in self.parts:
            for j in range(len(lw)):
                k, q = divmod(j, self.n_q)
                ops = {op: pipe[op][j, :iters] for op in self.ops
                       if op not in ("WRITEFM", "WRITE") or q == self.n_q - 1}
                out.append(Step(s, k, q, lw[j].astype(np.int64), int(lwt[j]), lwm[j].astype(np.int64), ops,
                                int(macs[j])))
        return out


def layer_steps(spec: LayerSpec, hw: ArrayConfig, part: LayerPartition, in_ddr: tuple[bool, ...],
                out_ddr: bool, widx: WeightIndex | None, cache: CompileCache | None = None) -> StepTable:
    """Every step of the layer in execution order (module doc; ``cache``: the compile's memo)."""
    tab = steps_within(spec, hw, part, in_ddr, out_ddr, widx, cache)
    assert tab is not None  # no cutoff: never cut
    return tab


CUT_MARGIN = 1e-9  # relative: a LOADFM cut needs this much more than the cutoff (summation order)


def steps_within(spec: LayerSpec, hw: ArrayConfig, part: LayerPartition, in_ddr: tuple[bool, ...],
                 out_ddr: bool, widx: WeightIndex | None, cache: CompileCache | None = None,
                 cutoff_s: float = math.inf) -> StepTable | None:
    """``layer_steps``, or None once the layer's LOADFM alone takes longer than ``cutoff_s``: the
    search drops such a candidate (``timing.engine_bound_s`` counts every engine's busy time),
    and most candidates it drops are LOADFM bound, so the rest of the table is not computed for
    them. Only where LOADFM is charged raw (``planning.charged_pipe``: no input zero fraction)."""
    lay = _Layout.of(spec, hw, part, cache)
    n_k, n_q, n_g = part.n_k, part.n_q, len(lay.reps)
    last_q = np.arange(n_q) == n_q - 1
    oc0, oc1, ci0, ci1, work, mpp, nbytes, pieces = _chunks_of(spec, hw, part, lay.reps, widx, last_q, cache)
    kq = n_k * n_q
    work, mpp, nbytes = (x.reshape(kq, n_g) for x in (work, mpp, nbytes))
    pieces = pieces.reshape(kq, n_g, -1)
    oclen = np.broadcast_to((oc1 - oc0)[:, None, :], (n_k, n_q, n_g)).reshape(kq, n_g)
    cilen = np.broadcast_to(ci1 - ci0, (n_k, n_q, n_g)).reshape(kq, n_g) * (oclen > 0)
    active = (oclen > 0).astype(float)
    g = part.tiles_per_group
    # every tile of the layer at once (t axis), then one slice per spatial group
    p, win = lay.p, lay.win
    if spec.kind == "conv" and spec.groups == 1:  # all groups read the same channels: one window
        cr = (np.matmul(lay.col_rg, active.T).transpose(2, 0, 1) > 0).astype(float)  # (j, c, r)
        fm = np.matmul(cr, win) * cilen.max(axis=1)[:, None, None]
    else:  # each group reads its own channels (once per column and region for equal ranges)
        fm = np.einsum("jcrg,jg,rt->jct", _first_readers(lay, ci0, ci1, cilen), cilen, win)
        if splits_window(spec, n_q):  # step q moves band q's rows of every window (whole windows:
            # its share of the window positions, exactly)
            rows = np.tile(band_taps(spec, n_q) // spec.kernel[1], n_k)
            fm = fm * rows[:, None, None] / spec.kernel[0]
    fm = fm * spec.n_in
    last = last_q[np.arange(kq) % n_q][:, None]
    wr_c = np.matmul(np.matmul(lay.col_rg, oclen.T).transpose(2, 0, 1), p) * last[:, :, None]  # (j, c, t)
    # a fused add: the other operand's output-shaped tile comes in with the last chunk
    fm_busiest = (fm + wr_c if spec.residual else fm).max(axis=1)
    if cutoff_s < math.inf and _raw_loadfm(spec, hw, fm_busiest):
        if float(transfer_s("LOADFM", fm_busiest, hw).sum()) > cutoff_s * (1 + CUT_MARGIN):
            return None
    rwork = np.where(lay.rg[None] > 0, work[:, None, :], 0).max(axis=2)
    loadw = nbytes.sum(axis=1)
    loadw_piece = np.ceil(pieces.sum(axis=1) / hw.cols)  # each piece spread over the columns
    loadwm = np.matmul(lay.row_g, pieces).max(axis=1)  # busiest row channel, per piece
    n_in_ddr = sum(in_ddr[:spec.n_in])
    any_ddr = any(in_ddr[:spec.n_in + bool(spec.residual)])
    tab = StepTable(part.n_s, n_k, n_q, g)
    tab.max_chunk = int(nbytes.max(initial=0))
    comp = comp_cycles(spec.kind, hw, rwork, p)
    win_ddr = fm * (in_ddr[0] if spec.n_in == 1 else n_in_ddr / spec.n_in)  # per column
    wr = wr_c.max(axis=1)  # outputs leave after the last ci chunk
    if spec.residual:  # the fused add's element operations in the last chunk
        add_ops = element_cycles(p[None] * oclen.max(axis=1)[:, None, None], hw)
        comp = comp + add_ops.max(axis=1) * last
    # LOAD brings, per column, the windows of inputs in DDR and the residual tiles if the
    # residual is in DDR (never the residual twice, nor one that lives in MemTile)
    res_ddr = bool(spec.residual) and len(in_ddr) > spec.n_in and in_ddr[spec.n_in]
    load = (win_ddr + wr_c * res_ddr).max(axis=1)
    pipe_all = {"LOAD": load, "LOADFM": fm_busiest, "COMP": comp, "WRITEFM": wr, "WRITE": wr * out_ddr}
    macs_per_pos = (lay.rg[None] * mpp[:, None, :]).sum(axis=2)  # (kq, regions)
    for s in range(part.n_s):
        sl = slice(s * g, min((s + 1) * g, part.n_tiles))
        macs = macs_per_pos @ p[:, sl].sum(axis=1)
        # the only chunk (a lut's table: its one chunk whatever the steps) is still in the weight buffer
        resident = (kq == 1 or spec.kind == "lut") and s > 0
        tab.add(s, np.zeros_like(loadw_piece) if resident else loadw_piece,
                np.zeros(kq) if resident else loadw, np.zeros_like(loadwm) if resident else loadwm,
                {op: a[:, sl] for op, a in pipe_all.items()}, macs, sl.stop - sl.start)
    tab.ops = tuple(op for op in PIPE_OPS if (op != "LOAD" or any_ddr) and (op != "WRITE" or out_ddr))
    return tab


def _raw_loadfm(spec: LayerSpec, hw: ArrayConfig, fm: np.ndarray) -> bool:
    """Whether LOADFM is charged its raw bytes ``fm`` (``planning.charged_pipe``): no activation
    compression, or ``zero_compress.charged_raw``."""
    return spec.act_zero_fracs is None or charged_raw(fm, spec.act_zero_fracs[0], hw.dma_compression.mask_bytes)
