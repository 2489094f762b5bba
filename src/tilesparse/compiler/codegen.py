"""Code generation: packed weight chunks in DDR and the instruction stream of each layer.

Per step (s, k, q) of a layer (see ``stages``), in this order:

* ``LOADW``  DDR → MemTile weight slot ``j mod 2``: the step's chunks of every oc group,
  contiguous in DDR (skipped if the layer has no weights or the chunk is resident), one
  iteration per weight piece (piece i: the i-th byte range of every chunk, ``pack.piece_bounds``);
* ``LOADWM`` slot → every core's weight buffer (halts the cores), piece by piece;
* the pipeline, each instruction with ``iters`` = the step's tiles: ``LOAD`` (input buffer in DDR →
  MemTile staging), ``LOADFM`` (MemTile → core input ping/pong), ``COMP``, and in the last input-channel
  chunk ``WRITEFM`` (core output ping/pong → MemTile) and ``WRITE`` (MemTile staging → DDR) when the
  output buffer lives in DDR.

Which sub-volume each core moves or computes at iteration i is fixed by the layer record
(cores, sub-volume, loops) — docs/program.md gives the rule.
"""

from __future__ import annotations

import math

import numpy as np

from tilesparse.compiler.layers import LayerSpec
from tilesparse.compiler.pack import chunk_geometry, pack_chunk
from tilesparse.compiler.partition import CoreWork, moved_positions, tile_grid
from tilesparse.compiler.program import Instr
from tilesparse.compiler.stages import Step, core_chunk
from tilesparse.compiler.tiling import LayerPlan

__all__ = ["emit_layer", "pack_layer"]


def pack_layer(plan: LayerPlan, w8: np.ndarray, bias: np.ndarray | None, image: bytearray,
               base: int) -> tuple[list[list[int]], dict[tuple[int, int], tuple[int, int]]]:
    """Append the layer's packed chunks to ``image`` (DDR address ``base`` + offset), ordered by
    (k, q, oc group). Returns the chunk table rows and, per (k, q), the (address, bytes) span."""
    spec, part = plan.spec, plan.part
    assert spec.mask is not None
    reps: dict[int, CoreWork] = {}
    for cw in part.cores:
        if not cw.empty:
            reps.setdefault(cw.oc_group, cw)
    rows, spans = [], {}
    bi = spec.block[1]
    for k in range(part.n_k):
        for q in range(part.n_q):
            start = base + len(image)
            for g in sorted(reps):
                ch = core_chunk(spec, part, reps[g], k, q)
                if ch is None:
                    continue
                o0, o1, c0, c1 = ch
                cb0, cb1 = (c0 // bi, math.ceil(c1 / bi)) if spec.groups == 1 else (0, spec.mask.shape[1])
                last = q == part.n_q - 1
                data = pack_chunk(spec, w8, bias if last else None, chunk_geometry(spec, o0, o1, cb0, cb1))
                rows.append([g, k, q, o0, o1, cb0, cb1, base + len(image), len(data), int(last)])
                image.extend(data)
            spans[(k, q)] = (start, base + len(image) - start)
    return rows, spans


def emit_layer(li: int, plan: LayerPlan, spans: dict[tuple[int, int], tuple[int, int]],
               in_src: str, out_dst: str, per_iter: list[np.ndarray], offset: int,
               chunks: list[list[int]] | None = None) -> tuple[list[Instr], int]:
    """Instructions of layer ``li``. ``in_src``/``out_dst``: where the (first) input is read from
    and the output written to (a MemTile buffer, or DDR through MemTile staging); ``chunks``: the
    layer's chunk table (``pack_layer``). ``per_iter`` collects each instruction's per-iteration
    values; returns the new running offset."""
    out: list[Instr] = []
    sums = _region_sums(plan.spec, plan)
    chunk_bytes = {(r[0], r[1], r[2]): r[8] for r in chunks or []}
    for j, st in enumerate(plan.table.steps()):
        totals = _totals(plan.spec, plan, st, sums, chunk_bytes)
        for ins, vals in _step_instrs(li, j, st, plan, spans, in_src, out_dst, totals):
            out.append(Instr(**ins, offset=offset))
            per_iter.append(np.asarray(vals, dtype=np.float64))
            offset += len(vals)
    return out, offset


# Staging locks (docs/program.md, "Locks and ordering"): LOAD fills stage_in[i%2] for LOADFM,
# WRITEFM fills stage_out[i%2] for WRITE; each pair hands the half over with an empty/full lock.
STAGE_IN_FULL, STAGE_IN_EMPTY = "stage_in[i%2].full", "stage_in[i%2].empty"
STAGE_OUT_FULL, STAGE_OUT_EMPTY = "stage_out[i%2].full", "stage_out[i%2].empty"


def _step_instrs(li, j, st: Step, plan: LayerPlan, spans, in_src, out_dst, totals):
    base = {"layer": li, "step": j, "s": st.s, "k": st.k, "q": st.q}
    slot = f"wslot{j % 2}"
    if st.loadw_total:  # one iteration per weight piece, each piece with its own lock pair
        addr, nb = spans[(st.k, st.q)]
        n_p = len(st.loadw_bytes)
        yield dict(op="LOADW", iters=n_p, src=f"ddr@{addr}", dst=f"memtile.{slot}", nbytes=nb,
                   acquire=f"{slot}[i].empty", release=f"{slot}[i].full", **base), st.loadw_bytes
        yield dict(op="LOADWM", iters=n_p, src=f"memtile.{slot}", dst="core.w", nbytes=totals["LOADWM"],
                   acquire=f"{slot}[i].full; cores halted", release=f"{slot}[i].empty", **base), st.loadwm_bytes
    n = st.iters
    last_q = st.q == plan.part.n_q - 1
    staged_in, staged_out = "LOAD" in st.pipe, "WRITE" in st.pipe
    for op, vals in st.pipe.items():
        if op == "LOAD":
            src, dst, acq, rel = in_src, "memtile.stage_in", STAGE_IN_EMPTY, STAGE_IN_FULL
        elif op == "LOADFM":
            src = _loadfm_src(plan, in_src, staged_in)
            dst, acq, rel = "core.in", "core.in[i%2].empty", "core.in[i%2].full"
            if staged_in:
                acq, rel = f"{acq}; {STAGE_IN_FULL}", f"{rel}; {STAGE_IN_EMPTY}"
        elif op == "COMP":
            src, dst = "core.in+core.w", "core.out"
            acq = "core.in[i%2].full; core.out[i%2].empty" if last_q else "core.in[i%2].full"
            rel = "core.in[i%2].empty; core.out[i%2].full" if last_q else "core.in[i%2].empty"
        elif op == "WRITEFM":
            dst = "memtile.stage_out" if staged_out else out_dst
            src, acq, rel = "core.out", "core.out[i%2].full", "core.out[i%2].empty"
            if staged_out:
                acq, rel = f"{acq}; {STAGE_OUT_EMPTY}", f"{rel}; {STAGE_OUT_FULL}"
        else:  # WRITE
            src, dst, acq, rel = "memtile.stage_out", out_dst, STAGE_OUT_FULL, STAGE_OUT_EMPTY
        yield dict(op=op, iters=n, src=src, dst=dst, nbytes=totals[op], acquire=acq, release=rel,
                   **base), vals


def _loadfm_src(plan: LayerPlan, in_src: str, staged_in: bool) -> str:
    """Where LOADFM reads: the first input's MemTile buffer, MemTile staging, or both (``+``)
    when some inputs (e.g. only a fused add's residual) come through staging from DDR."""
    if not staged_in:
        return in_src
    if plan.in_ddr and plan.in_ddr[0]:
        return "memtile.stage_in"
    return f"{in_src}+memtile.stage_in"


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


def _totals(spec: LayerSpec, plan: LayerPlan, st: Step, sums, chunk_bytes: dict) -> dict[str, int]:
    """Total bytes of each transfer over all channels (MACs for COMP), for the listing: what the
    simulator counts channel by channel (docs/simulator.md, "Accounting")."""
    part, in_ddr = plan.part, plan.in_ddr
    n_ddr = sum(bool(d) for d in in_ddr[:spec.n_in])
    res_ddr = bool(spec.residual) and len(in_ddr) > spec.n_in and bool(in_ddr[spec.n_in])
    last_q = st.q == part.n_q - 1
    win = win_ddr = out = res = loadwm = 0
    seen, rows_seen = set(), set()
    for cw in part.cores:
        ch = core_chunk(spec, part, cw, st.k, st.q)
        if ch is None:
            continue
        p, w = sums[(cw.region, st.s)]
        key = (cw.col, cw.region, ch[2], ch[3])
        if key not in seen:  # broadcast: a window read by several cores of a column moves once
            seen.add(key)
            win += w * (ch[3] - ch[2]) * spec.n_in
            win_ddr += w * (ch[3] - ch[2]) * n_ddr
        if (cw.row, cw.oc_group) not in rows_seen:  # a chunk moves once per row channel
            rows_seen.add((cw.row, cw.oc_group))
            loadwm += chunk_bytes.get((cw.oc_group, st.k, st.q), 0)
        out += p * (ch[1] - ch[0])
        if spec.residual and last_q:  # each core its own residual tile (same positions, channels)
            res += p * (ch[1] - ch[0])
    return {"LOAD": win_ddr + res * res_ddr, "LOADFM": win + res, "LOADWM": loadwm, "COMP": st.macs,
            "WRITEFM": out, "WRITE": out}
