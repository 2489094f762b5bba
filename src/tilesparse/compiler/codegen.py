"""Code generation: packed weight chunks in DDR and the instruction stream of each layer.

Per step (s, k, q) of a layer (see ``steps``), in this order:

* ``LOADW``  DDR → MemTile weight slot ``j mod 2``: the step's chunks of every oc group,
  contiguous in DDR (skipped if the layer has no weights or the chunk is resident), one
  iteration per weight piece (piece i: the i-th byte range of every chunk, ``pack.piece_bounds``);
* ``LOADWM`` slot → every core's weight buffer (halts the cores), piece by piece; in a layer whose
  weight buffer is double-buffered (``LayerPlan.weight_half_bytes``), the m-th weighted step's
  chunk goes to half m mod 2 (``core.w@offset``) without halting, its COMPs read that half, and
  per-step locks ``core.w0/1`` hand each half between LOADWM and the last COMP that reads it;
* the pipeline, each instruction with ``iters`` = the step's tiles: ``LOAD`` (input buffer in DDR →
  MemTile staging), ``LOADFM`` (MemTile → core input ping/pong), ``COMP``, and in the last input-channel
  chunk ``WRITEFM`` (core output ping/pong → MemTile) and ``WRITE`` (MemTile staging → DDR) when the
  output buffer lives in DDR.

Which sub-volume each core moves or computes at iteration i is fixed by the layer record
(cores, sub-volume, loops) — docs/program.md gives the rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tilesparse.compiler.cache import CompileCache
from tilesparse.compiler.layers import LayerSpec
from tilesparse.compiler.planning import LayerPlan
from tilesparse.compiler.steps import Step, band_taps, core_chunk
from tilesparse.program import ChunkRow, CoreWork, Instr, Lock, Operand
from tilesparse.program.layout import moved_positions, tile_grid
from tilesparse.program.packing import chunk_geometry, pack_chunk, pack_parts_chunk, pack_table

__all__ = ["emit_layer", "pack_layer", "pack_table_layer"]


def pack_layer(plan: LayerPlan, w8: np.ndarray, bias: np.ndarray | None, image: bytearray,
               base: int, w_dense: np.ndarray | None = None, cache: CompileCache | None = None
               ) -> tuple[list[ChunkRow], dict[tuple[int, int], tuple[int, int]]]:
    """Append the layer's packed chunks to ``image`` (DDR address ``base`` + offset), ordered by
    (k, q, oc group). Returns the chunk table rows and, per (k, q), the (address, bytes) span.
    A layer in the ``parts`` format packs ``w8`` (its sparse part) and ``w_dense`` (its int4 part).
    ``cache``: the compile's memo (the chunk bounds the search cut)."""
    spec, part = plan.spec, plan.part
    assert spec.mask is not None
    reps: dict[int, CoreWork] = {}
    for cw in part.cores:
        if not cw.empty:
            reps.setdefault(cw.oc_group, cw)
    rows: list[ChunkRow] = []
    spans = {}
    bi = spec.block[1]
    sparse = plan.widx.sparse if plan.widx is not None else None  # the masked format's chunk description
    for k in range(part.n_k):
        for q in range(part.n_q):
            start = base + len(image)
            for g in sorted(reps):
                ch = core_chunk(spec, part, reps[g], k, q, cache)
                if ch is None:
                    continue
                o0, o1, c0, c1 = ch
                cb0, cb1 = (c0 // bi, math.ceil(c1 / bi)) if spec.groups == 1 else (0, spec.mask.shape[1])
                last = q == part.n_q - 1
                geo = chunk_geometry(spec, o0, o1, cb0, cb1)
                data = (pack_chunk(spec, w8, bias if last else None, geo, sparse) if w_dense is None else
                        pack_parts_chunk(spec, w8, w_dense, bias if last else None, geo, sparse))
                rows.append(ChunkRow(g, k, q, o0, o1, cb0, cb1, base + len(image), len(data), last))
                image.extend(data)
            spans[(k, q)] = (start, base + len(image) - start)
    return rows, spans


def pack_table_layer(plan: LayerPlan, table: np.ndarray, image: bytearray, base: int
                     ) -> tuple[list[ChunkRow], dict[tuple[int, int], tuple[int, int]]]:
    """A ``lut`` layer's table, once per oc group (each row of cores loads its own copy), as chunk
    (k, q) = (0, 0) covering the group's channels: loaded in the first step, resident after."""
    data = pack_table(table)
    start = base + len(image)
    rows: list[ChunkRow] = []
    for cw in plan.part.cores:
        if not cw.empty and all(r.oc_group != cw.oc_group for r in rows):
            rows.append(ChunkRow(cw.oc_group, 0, 0, cw.oc0, cw.oc1, 0, 0, base + len(image), len(data), False))
            image.extend(data)
    return rows, {(0, 0): (start, base + len(image) - start)}


def emit_layer(li: int, plan: LayerPlan, spans: dict[tuple[int, int], tuple[int, int]],
               in_src: Operand, out_dst: Operand, per_iter: list[np.ndarray], offset: int,
               chunks: list[ChunkRow] | None = None, cache: CompileCache | None = None) -> tuple[list[Instr], int]:
    """Instructions of layer ``li``. ``in_src``/``out_dst``: where the (first) input is read from
    and the output written to (a MemTile buffer, or DDR through MemTile staging); ``chunks``: the
    layer's chunk table (``pack_layer``). ``per_iter`` collects each instruction's per-iteration
    values; returns the new running offset. ``cache``: the compile's memo (the chunk bounds the
    search cut, asked again for every core in every step)."""
    out: list[Instr] = []
    sums = _region_sums(plan.spec, plan)
    chunk_bytes = {r.key: r.nbytes for r in chunks or []}
    steps = plan.table.steps()
    halves = _weight_halves(plan, steps)
    counts: dict[tuple[int, int], tuple[dict[int, tuple[int, int]], int]] = {}  # per chunk (k, q)
    for j, st in enumerate(steps):
        if (st.k, st.q) not in counts:
            counts[(st.k, st.q)] = _chunk_counts(plan.spec, plan.part, st.k, st.q, chunk_bytes, cache)
        totals = _totals(plan.spec, plan, st, sums, counts[(st.k, st.q)])
        for ins, vals in _step_instrs(li, j, st, plan, spans, in_src, out_dst, totals, halves[j]):
            out.append(Instr(**ins, offset=offset))
            per_iter.append(np.asarray(vals, dtype=np.float64))
            offset += len(vals)
    return out, offset


# Locks (docs/program.md, "Locks and ordering"): LOAD fills stage_in[i%2] for LOADFM, WRITEFM fills
# stage_out[i%2] for WRITE, LOADFM fills core.in[i%2] for COMP, COMP fills core.out[i%2] for WRITEFM;
# each pair hands the half over with an empty/full lock.
IN_FULL, IN_EMPTY = Lock.parity("core.in", "full"), Lock.parity("core.in", "empty")
OUT_FULL, OUT_EMPTY = Lock.parity("core.out", "full"), Lock.parity("core.out", "empty")
STAGE_IN_FULL, STAGE_IN_EMPTY = Lock.parity("stage_in", "full"), Lock.parity("stage_in", "empty")
STAGE_OUT_FULL, STAGE_OUT_EMPTY = Lock.parity("stage_out", "full"), Lock.parity("stage_out", "empty")
STAGE_IN, STAGE_OUT = Operand.staging("stage_in"), Operand.staging("stage_out")
CORE_IN, CORE_W, CORE_OUT = Operand.core("in"), Operand.core("w"), Operand.core("out")


@dataclass(frozen=True)
class _Half:
    """A step's half of a double-buffered weight buffer: which, at which offset of ``core.w``,
    whether the step loads it and whether its COMP is the last to read it."""

    half: int
    offset: int
    loads: bool
    frees: bool

    def lock(self, state: str) -> Lock:
        return Lock.step(f"core.w{self.half}", state)


def _weight_halves(plan: LayerPlan, steps: list[Step]) -> list[_Half | None]:
    """Per step its ``_Half`` (None without double-buffering): the m-th step that loads weights
    fills half m mod 2; the steps after it, up to the next that loads, read the same half."""
    if not plan.weight_half_bytes:
        return [None] * len(steps)
    out: list[_Half | None] = []
    m = -1
    for j, st in enumerate(steps):
        m += bool(st.loadw_total)
        h = max(m, 0) % 2
        frees = j == len(steps) - 1 or bool(steps[j + 1].loadw_total)
        out.append(_Half(h, h * plan.weight_half_bytes, bool(st.loadw_total), frees))
    return out


def _step_instrs(li, j, st: Step, plan: LayerPlan, spans, in_src: Operand, out_dst: Operand, totals,
                 half: _Half | None = None):
    base = {"layer": li, "step": j, "s": st.s, "k": st.k, "q": st.q}
    core_w = CORE_W if half is None else Operand("core", "w", half.offset)
    if st.loadw_total:  # one iteration per weight piece, each piece with its own lock pair
        slot = f"wslot{j % 2}"
        addr, nb = spans[(st.k, st.q)]
        n_p = len(st.loadw_bytes)
        full, empty = Lock.piece(slot, "full"), Lock.piece(slot, "empty")
        yield dict(op="LOADW", iters=n_p, src=(Operand.ddr(addr),), dst=(Operand.staging(slot),), nbytes=nb,
                   acquire=(empty,), release=(full,), **base), st.loadw_bytes
        wacq, wrel = ((half.lock("empty"),), (half.lock("full"),)) if half is not None else ((), ())
        yield dict(op="LOADWM", iters=n_p, src=(Operand.staging(slot),), dst=(core_w,), nbytes=totals["LOADWM"],
                   acquire=(full, *wacq), release=(empty, *wrel), halts=half is None, **base), st.loadwm_bytes
    last_q = st.q == plan.part.n_q - 1
    staged_in, staged_out = "LOAD" in st.pipe, "WRITE" in st.pipe
    for op, vals in st.pipe.items():
        src, dst, acq, rel = _pipe_operands(op, plan, in_src, out_dst, staged_in, staged_out, last_q)
        if op == "COMP" and half is not None:  # the step's half: taken by its first tile, freed by the last
            src = (CORE_IN, core_w)
            acq += (half.lock("full"),) * half.loads
            rel += (half.lock("empty"),) * half.frees
        yield dict(op=op, iters=st.iters, src=src, dst=dst, nbytes=totals[op], acquire=acq, release=rel,
                   **base), vals


def _pipe_operands(op: str, plan: LayerPlan, in_src: Operand, out_dst: Operand, staged_in: bool,
                   staged_out: bool, last_q: bool):
    """(src, dst, acquire, release) of a pipeline instruction."""
    if op == "LOAD":
        return (in_src,), (STAGE_IN,), (STAGE_IN_EMPTY,), (STAGE_IN_FULL,)
    if op == "LOADFM":
        stage = (STAGE_IN_FULL,), (STAGE_IN_EMPTY,)
        return (_loadfm_src(plan, in_src, staged_in), (CORE_IN,), (IN_EMPTY,) + stage[0] * staged_in,
                (IN_FULL,) + stage[1] * staged_in)
    if op == "COMP":
        return ((CORE_IN, CORE_W), (CORE_OUT,), (IN_FULL,) + (OUT_EMPTY,) * last_q,
                (IN_EMPTY,) + (OUT_FULL,) * last_q)
    if op == "WRITEFM":
        return ((CORE_OUT,), (STAGE_OUT if staged_out else out_dst,), (OUT_FULL,) + (STAGE_OUT_EMPTY,) * staged_out,
                (OUT_EMPTY,) + (STAGE_OUT_FULL,) * staged_out)
    return (STAGE_OUT,), (out_dst,), (STAGE_OUT_FULL,), (STAGE_OUT_EMPTY,)  # WRITE


def _loadfm_src(plan: LayerPlan, in_src: Operand, staged_in: bool) -> tuple[Operand, ...]:
    """Where LOADFM reads: the first input's MemTile buffer, MemTile staging, or both when some
    inputs (e.g. only a fused add's residual) come through staging from DDR."""
    if not staged_in:
        return (in_src,)
    if next(iter(plan.in_ddr), False):  # the first input lives in DDR
        return (STAGE_IN,)
    return (in_src, STAGE_IN)


def _region_sums(spec: LayerSpec, plan: LayerPlan) -> dict[tuple[int, int], tuple[int, int]]:
    """Per (region, spatial group): total output positions and input positions LOADFM moves
    (``partition.moved_positions``: sliding tiles move only their new columns)."""
    part = plan.part
    out: dict[tuple[int, int], tuple[int, int]] = {}
    g = part.tiles_per_group
    for cw in part.cores:
        if cw.empty or (cw.region, 0) in out:
            continue
        tiles = tile_grid(cw.h0, cw.h1, cw.w0, cw.w1, part.sub.h, part.sub.w)
        moved = moved_positions(spec, cw.h1 - cw.h0, cw.w1 - cw.w0, part.sub.h, part.sub.w, g)
        for s in range(part.n_s):
            ts = tiles[s * g:(s + 1) * g]
            out[(cw.region, s)] = (sum((b - a) * (d - c) for a, b, c, d in ts), int(moved[s * g:(s + 1) * g].sum()))
    return out


def _chunk_counts(spec: LayerSpec, part, k: int, q: int, chunk_bytes: dict, cache: CompileCache | None
                  ) -> tuple[dict[int, tuple[int, int]], int]:
    """Per region, the input channels its cores' windows carry in chunk (k, q) (a window read by
    several cores of a column moves once) and the output channels they write; and the LOADWM bytes
    (a chunk moves once per row channel). Every spatial group of the chunk has the same counts."""
    per_region: dict[int, tuple[int, int]] = {}
    seen, rows_seen = set(), set()
    loadwm = 0
    for cw in part.cores:
        ch = core_chunk(spec, part, cw, k, q, cache)
        if ch is None:
            continue
        n_in, n_out = per_region.get(cw.region, (0, 0))
        key = (cw.col, cw.region, ch[2], ch[3])
        if key not in seen:  # broadcast: a window read by several cores of a column moves once
            seen.add(key)
            n_in += ch[3] - ch[2]
        if (cw.row, cw.oc_group) not in rows_seen:  # a chunk moves once per row channel
            rows_seen.add((cw.row, cw.oc_group))
            loadwm += chunk_bytes.get((cw.oc_group, k, q), 0)
        per_region[cw.region] = (n_in, n_out + ch[1] - ch[0])
    return per_region, loadwm


def _totals(spec: LayerSpec, plan: LayerPlan, st: Step, sums, counts: tuple[dict[int, tuple[int, int]], int]
            ) -> dict[str, int]:
    """Total bytes of each transfer over all channels (MACs for COMP), for the listing: what the
    simulator counts channel by channel (docs/simulator.md, "Accounting"). ``counts``: the step's
    chunk's ``_chunk_counts``."""
    part, in_ddr = plan.part, plan.in_ddr
    n_ddr = sum(bool(d) for d in in_ddr[:spec.n_in])
    res_ddr = bool(spec.residual) and len(in_ddr) > spec.n_in and bool(in_ddr[spec.n_in])
    last_q = st.q == part.n_q - 1
    # a pool run in window bands moves, in step q, band q's rows of each (whole) window; others all rows
    band_h = int(band_taps(spec, part.n_q)[st.q] // spec.kernel[1])
    per_region, loadwm = counts
    win = out = 0
    for region, (n_in, n_out) in per_region.items():
        p, w = sums[(region, st.s)]
        win += w * band_h // spec.kernel[0] * n_in
        out += p * n_out
    res = out if spec.residual and last_q else 0  # each core its own residual tile (same positions, channels)
    return {"LOAD": win * n_ddr + res * res_ddr, "LOADFM": win * spec.n_in + res, "LOADWM": loadwm,
            "COMP": st.macs, "WRITEFM": out, "WRITE": out}
