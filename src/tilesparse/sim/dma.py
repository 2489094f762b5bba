"""The DMA instructions: LOADW, LOADWM, LOAD, LOADFM, WRITEFM, WRITE (docs/program.md).

``Staging`` owns the MemTile staging area of the running layer — above the activation capacity
of each column: ``wslot0``, ``wslot1`` (each as large as the layer's largest per-column LOADW),
``stage_in[0/1]`` (largest per-column LOADFM iteration) and ``stage_out[0/1]`` (largest per-column
WRITEFM iteration). Weight slots are striped evenly over the columns (``ceil(n / cols)`` per
column, so LOADW uses every column channel; piece after piece, each spread over the columns on
its own); ``stage_in``/``stage_out`` hold, per column, that
column's windows / output tiles for one iteration.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from tilesparse.program import ChunkRow, Operand
from tilesparse.program.packing import piece_bounds
from tilesparse.program.zero_compress import decode, encode
from tilesparse.sim import compute as C
from tilesparse.sim.memory import SimulationError, Where

__all__ = ["PRE", "Staging", "core_w_offset", "prefetch_space_error"]

PRE = 2  # the slot index the simulator gives the prefetch area wpre (wslot0/1 are 0/1)


def prefetch_space_error(program, li: int) -> str | None:
    """Why layer ``li``'s prefetch area (its LOADW into ``wpre``: offset and per-column bytes) is
    not free MemTile space, or None: it is written during layer li−1 and read in layer li, so it
    must lie above every MemTile activation buffer live in either and below either layer's staging
    (``meta["memtile_capacity"]``) (docs/program.md, "Prefetched weights")."""
    pre = [ins for ins in program.instrs if ins.layer == li and ins.prefetch]
    if not pre:
        return None
    ins = pre[0]
    name = program.layers[li].name
    if li == 0:
        return f"layer {name!r}: the first layer has no layer before it to prefetch its weights during"
    lo = ins.dst[0].addr
    hi = lo + int(np.ceil(program.iter_values(ins)).sum())
    caps = program.meta.get("memtile_capacity") or []
    cap = min((int(caps[t]) for t in (li - 1, li) if t < len(caps)), default=program.hw.memtile.bytes)
    if hi > cap:
        return (f"layer {name!r}: prefetch area [{lo}, {hi}) per column runs into the staging above {cap} B "
                f"(layers #{li - 1}, #{li})")
    for buf, b in program.buffers.items():
        live = b.get("live", [0, -1])
        if b["memory"] != "memtile" or live[1] < li - 1 or live[0] > li:
            continue
        if lo < b["offset"] + b["part_bytes"] and b["offset"] < hi:
            return (f"layer {name!r}: prefetch area [{lo}, {hi}) per column overlaps MemTile buffer {buf!r} "
                    f"[{b['offset']}, {b['offset'] + b['part_bytes']}), live in layers #{live[0]}-#{live[1]}")
    return None


def core_w_offset(ops: tuple[Operand, ...]) -> int:
    """Where in ``core.w`` an instruction's weights are: the offset of its ``core.w`` operand (0,
    or the second half of a double-buffered weight buffer, docs/program.md)."""
    return next((o.addr for o in ops if o.memory == "core" and o.buffer == "w"), 0)


def _ddr_addr(where: Where, ops: tuple[Operand, ...]) -> int:
    if len(ops) != 1 or ops[0].memory != "ddr":
        raise SimulationError(f"{where}: operand {'+'.join(map(str, ops))!r}, expected one DDR address (ddr@ADDRESS)")
    return ops[0].addr


def _slot_index(where: Where, ops: tuple[Operand, ...]) -> int:
    if len(ops) == 1 and ops[0].memory == "staging" and ops[0].buffer == "wpre":
        return PRE
    if len(ops) != 1 or ops[0].slot is None:
        raise SimulationError(f"{where}: operand {'+'.join(map(str, ops))!r}, expected memtile.wslot0, "
                              f"memtile.wslot1 or memtile.wpre")
    return ops[0].slot


class Staging:
    """DMA semantics over the memories of an ``Executor`` for one layer."""

    def __init__(self, ex, li: int, cap: int):
        self.ex, self.p, self.mem, self.v = ex, ex.p, ex.mem, ex.views[li]
        self.cols, self.mt = ex.hw.cols, ex.mem.mt_bytes
        vals = {op: 0 for op in ("LOADW", "LOADFM", "WRITEFM")}
        for step in ex.steps[li]:
            for idx in step:
                ins = self.p.instrs[idx]
                if ins.op in vals and ins.iters and not ins.prefetch:  # (wpre has its own area)
                    v = self.p.iter_values(ins)  # a weight slot holds all pieces of a LOADW
                    v = v.sum() if ins.op == "LOADW" else v.max()
                    vals[ins.op] = max(vals[ins.op], int(np.ceil(v)))
        self.w_bytes, self.in_bytes, self.out_bytes = vals["LOADW"], vals["LOADFM"], vals["WRITEFM"]
        self.base = cap
        end = cap + 2 * (self.w_bytes + self.in_bytes + self.out_bytes)
        if end > self.mt:
            raise SimulationError(f"layer {self.v.name!r}: staging (2 x {self.w_bytes} B weight slots, 2 x "
                                  f"{self.in_bytes} B in, 2 x {self.out_bytes} B out per column) does not fit "
                                  f"above the {cap} B of activations in a {self.mt} B MemTile")
        self.pre = (0, 0)  # the prefetch area wpre: offset and bytes per column
        for step in ex.steps[li]:
            for idx in step:
                ins = self.p.instrs[idx]
                if ins.prefetch:
                    err = prefetch_space_error(self.p, li)
                    if err:
                        raise SimulationError(err)
                    self.pre = (ins.dst[0].addr, int(np.ceil(self.p.iter_values(ins)).sum()))
        self.slot: dict[int, dict] = {}  # slot -> DDR span, pieces, filled pieces' column offsets
        self.core_in: dict[tuple[int, int], dict] = {}
        self.core_out: dict[tuple[int, int], tuple] = {}
        self.stage_in: dict[int, dict] = {0: {}, 1: {}}  # parity -> {(col, key): (offset, shape)}
        self.stage_out: dict[int, list] = {0: [], 1: []}
        self.phase = 0  # the layer's pipeline iterations before the current step, mod 2
        self.ring: dict[int, int] = {}  # sliding layer: columns each core has written to its input ring

    def half(self, i: int) -> int:
        """The ping-pong half of the step's iteration ``i``: ``[i%2]`` counts iterations across
        the layer's steps (docs/program.md, "Locks and ordering")."""
        return (self.phase + i) % 2

    def _where(self, idx: int, it: int = -1) -> Where:
        ins = self.p.instrs[idx]
        return Where(self.v.name, ins.op, ins.step, it, idx)

    def _area(self, kind: str, half: int) -> tuple[int, int]:
        """(offset, size) in each column of wslot / stage_in / stage_out ``half`` (weight slot
        ``PRE``: the prefetch area)."""
        if kind == "w" and half == PRE:
            return self.pre
        w, i, o = self.w_bytes, self.in_bytes, self.out_bytes
        off = {"w": 0, "in": 2 * w, "out": 2 * w + 2 * i}[kind]
        size = {"w": w, "in": i, "out": o}[kind]
        return self.base + off + half * size, size

    def _mt_range(self, where: Where, col: int, kind: str, half: int, off: int, n: int) -> slice:
        a, size = self._area(kind, half)
        if off + n > size:
            raise SimulationError(f"{where}: {n} B at offset {off} overflow {kind} staging {half} "
                                  f"({size} B per column)")
        return slice(col * self.mt + a + off, col * self.mt + a + off + n)

    def begin_iteration(self, i: int) -> None:
        self.stage_in[self.half(i)] = {}
        self.stage_out[self.half(i)] = []

    # ---- weights ----------------------------------------------------------------------------
    def _piece(self, rows: list[ChunkRow], i: int, n_p: int) -> list[tuple[ChunkRow, int, int, int]]:
        """Piece ``i`` of a step's chunks: (row, DDR address, bytes, offset in the chunk) per chunk,
        in DDR order — the i-th byte range of every chunk (``packing.piece_bounds``)."""
        out = []
        for r in sorted(rows, key=lambda r: r.ddr_addr):
            b = piece_bounds(r.nbytes, n_p)
            out.append((r, r.ddr_addr + int(b[i]), int(b[i + 1] - b[i]), int(b[i])))
        return out

    def loadw(self, idx: int, i: int) -> None:
        """LOADW piece ``i``: gather the i-th byte range of every chunk from DDR, spread evenly
        over the columns' slot areas after pieces 0 … i−1 (docs/program.md, "weight pieces")."""
        ins, where = self.p.instrs[idx], self._where(idx, i)
        addr, n, slot = _ddr_addr(where, ins.src), int(ins.nbytes), _slot_index(where, ins.dst)
        self.mem.ddr_check(where, addr, n, tuple(self.p.ddr["weights"]))
        rows = self.v.step_chunks.get((ins.k, ins.q), [])
        lo = min((r.ddr_addr for r in rows), default=addr)
        span = sum(r.nbytes for r in rows)
        if (addr, n) != (lo, span):
            raise SimulationError(f"{where}: copies DDR [{addr}, {addr + n}) but the weight chunks of "
                                  f"chunk (k={ins.k}, q={ins.q}) occupy [{lo}, {lo + span})")
        if i == 0:
            self.slot[slot] = {"addr": addr, "n": n, "pieces": ins.iters, "filled": {}, "off": 0}
        st = self.slot[slot]
        data = np.concatenate([self.mem.ddr[a:a + nb] for _, a, nb, _ in self._piece(rows, i, ins.iters)]
                              + [np.zeros(0, np.uint8)])
        part = math.ceil(len(data) / self.cols)
        for c in range(self.cols):
            a, b = c * part, min(len(data), (c + 1) * part)
            if b > a:
                self.mem.memtile[self._mt_range(where, c, "w", slot, st["off"], b - a)] = data[a:b]
                self.ex.acct.move(idx, i, c, b - a)
        st["filled"][i] = (st["off"], part)  # piece i's per-column offset and size
        st["off"] += part

    def loadwm(self, idx: int, i: int) -> None:
        """LOADWM piece ``i``: every core's range i of its chunk, slot → core.w at the same offset
        in the chunk; after the last piece the core decodes the chunk from its weight buffer."""
        ins, where = self.p.instrs[idx], self._where(idx, i)
        slot, st = self._filled_slot(where, ins, i)
        addr, n = st["addr"], st["n"]
        off_i, part = st["filled"][i]
        a0, _ = self._area("w", slot)
        rows = self.v.step_chunks.get((ins.k, ins.q), [])
        w0 = core_w_offset(ins.dst)
        pos, at = 0, {}
        for r, _, nb, in_chunk in self._piece(rows, i, st["pieces"]):  # each chunk's range in the piece
            at[r.key] = (pos, nb, in_chunk)
            pos += nb
        seen: dict[tuple[int, int], None] = {}  # (row, oc group) chunks already sent on a row channel
        for core, cw in enumerate(self.v.cores):
            ch = self.v.chunk(core, ins.k, ins.q)
            if ch is None:
                continue
            row = self.v.chunk_rows.get((cw.oc_group, ins.k, ins.q))
            if row is None:
                raise SimulationError(f"{where}: no weight chunk for oc group {cw.oc_group}, k={ins.k}, q={ins.q}")
            if row.ddr_addr < addr or row.ddr_addr + row.nbytes > addr + n:
                raise SimulationError(f"{where}: chunk of oc group {cw.oc_group} at DDR {row.ddr_addr} is not in "
                                      f"wslot{slot} (holds DDR [{addr}, {addr + n}))")
            p0, nb, in_chunk = at[row.key]
            lg = np.arange(p0, p0 + nb)
            col = lg // max(part, 1)
            self.mem.core_slice(where, core, "w", w0 + in_chunk, nb)[...] = \
                self.mem.memtile[col * self.mt + a0 + off_i + lg - col * part]
            if (core // self.cols, cw.oc_group) not in seen:
                self.ex.acct.move(idx, i, core // self.cols, nb)
                seen[(core // self.cols, cw.oc_group)] = None
            if i == 0:  # the bytes at w0 are being overwritten: so is every chunk that overlaps them
                self._forget(core, w0, row.nbytes)
            if i == ins.iters - 1:
                data = self.mem.core_slice(where, core, "w", w0, row.nbytes).copy()
                self.ex.wchunk[(core, w0)] = self._decode(where, core, row, ch, data, seen)

    def _forget(self, core: int, off: int, n: int) -> None:
        """Drop the decoded chunks of ``core`` whose bytes overlap ``core.w`` [off, off + n)."""
        for key, held in list(self.ex.wchunk.items()):
            if key[0] == core and key[1] < off + n and off < key[1] + held.row.nbytes:
                del self.ex.wchunk[key]

    def _filled_slot(self, where, ins, i: int) -> tuple[int, dict]:
        """The weight slot LOADWM ``ins`` reads and its state; refuses a piece no LOADW filled or
        another piece count than the LOADW's."""
        slot = _slot_index(where, ins.src)
        st = self.slot.get(slot)
        if st is None or i not in st["filled"]:
            raise SimulationError(f"{where}: reads piece {i} of wslot{slot} before any LOADW filled it")
        if ins.iters != st["pieces"]:
            raise SimulationError(f"{where}: copies {ins.iters} weight pieces, the LOADW that filled "
                                  f"wslot{slot} moved {st['pieces']}")
        return slot, st

    def _decode(self, where, core, row, ch, data, seen) -> C.Chunk | C.LutTable:
        if self.v.kind == "lut":
            try:
                return C.decode_table(data.tobytes(), row)
            except ValueError as e:
                raise SimulationError(f"{where}: lookup table of core {self.mem.core_name(core)} "
                                      f"(oc group {row.oc_group}) does not decode: {e}") from None
        key = (*row.key, ch[2], ch[3])
        hit = self.ex.decoded.get((self.v.index, key))
        if hit is not None and np.array_equal(hit[0], data):  # same bytes as a chunk already decoded
            return hit[1]
        try:
            chunk = C.decode_chunk(self.v.spec, data.tobytes(), row, ch[2], ch[3] - ch[2], self.p.hw.core.sparse_matmul,
                                   self.v.rec.attrs.get("parts_shifts"))
        except ValueError as e:
            raise SimulationError(f"{where}: weight chunk of core {self.mem.core_name(core)} "
                                  f"(oc group {row.oc_group}) does not decode: {e}") from None
        if self.v.n_s > 1:  # chunks are re-read only by later spatial groups
            self.ex.decoded[(self.v.index, key)] = (data.copy(), chunk)
        return chunk

    # ---- activations in -----------------------------------------------------------------------
    def _inputs(self):
        """(index, buffer, c_offset) of the window inputs."""
        return [(j, d.buffer, d.c_offset) for j, d in enumerate(self.v.rec.inputs[:self.v.n_win_inputs])]

    def _window(self, where, core, tile, ch, buf, coff, new_cols: int = 0, q: int = 0) -> np.ndarray:
        """The tile's input window in input chunk ``q`` (a pool's window band q: ``LayerView.window``),
        or its last ``new_cols`` columns (a sliding tile's)."""
        win = self.v.window(tile, q)
        cols = win.cols[-new_cols:] if new_cols else win.cols
        x, _ = self.ex.bufs.read(where, buf, win.rows, cols, coff + ch[2], coff + ch[3])
        return x

    def _new_cols(self, idx: int, i: int, core: int, tile) -> int:
        """Columns LOADFM moves for a sliding tile (``LayerView.moved_cols``), 0 when it moves the
        whole window (docs/program.md, "Sliding windows")."""
        if not (self.v.slide and self.v.slid(core, self.p.instrs[idx].s, i)):
            return 0
        return self.v.moved_cols(core, self.p.instrs[idx].s, i, tile)

    def _ring_put(self, where, core: int, tile, x: np.ndarray) -> tuple[list[int], tuple[int, int]]:
        """Append a sliding layer's moved columns to the core's input ring — ``ring_columns``
        slots of (window rows × sub.ci) bytes in ``core.in`` — and return where COMP finds the
        tile's window: the last (window width) columns written, oldest first."""
        v = self.v
        rows, n, ci = x.shape
        # one slot size for the whole layer (the most channels a step reads), so slot r is the
        # same bytes in every step and the ordering check's slots are the memory's
        slot = v.spec.window_extent(v.part.sub.h, 0) * min(v.part.sub.ci, v.spec.ci)
        cap = self.ex.hw.core.input_buffer_bytes
        if rows * ci > slot:
            raise SimulationError(f"{where}: core {self.mem.core_name(core)} window column of {rows} rows x "
                                  f"{ci} channels overflows its {slot} B ring slot (sub-volume {v.part.sub})")
        if v.ring_cols * slot > cap:
            raise SimulationError(f"{where}: core {self.mem.core_name(core)} input ring ({v.ring_cols} columns x "
                                  f"{slot} B) overflows core.in ({cap} B)")
        ptr = self.ring.get(core, 0)
        for j in range(n):
            off = ((ptr + j) % v.ring_cols) * slot
            self.mem.core_slice(where, core, "in", off, rows * ci)[...] = x[:, j].reshape(-1).view(np.uint8)
        self.ring[core] = ptr = ptr + n
        span = len(v.window(tile).cols)
        return [((ptr - span + j) % v.ring_cols) * slot for j in range(span)], (rows, ci)

    def ring_window(self, where, core: int, ring: tuple[list[int], tuple[int, int]]) -> np.ndarray:
        """The window COMP reads from a core's input ring (rows × columns × channels)."""
        offs, (rows, ci) = ring
        return np.stack([self.mem.core_slice(where, core, "in", o, rows * ci).view(np.int8).reshape(rows, ci)
                         for o in offs], axis=1)

    def _residual(self, where, tile, ch) -> np.ndarray:
        d = self.v.rec.inputs[-1]
        a, b, c, e = tile
        x, _ = self.ex.bufs.read(where, d.buffer, np.arange(a, b), np.arange(c, e),
                                 d.c_offset + ch[0], d.c_offset + ch[1])
        return x.reshape((b - a) * (e - c), ch[1] - ch[0])

    def _wants_residual(self, idx: int) -> bool:
        return bool(self.v.rec.fused_add) and self.v.last_q(self.p.instrs[idx].q)

    def load(self, idx: int, i: int, ctx) -> None:
        where, half = self._where(idx, i), self.half(i)
        fill = [0] * self.cols
        for core, tile, ch in ctx:
            col, reg = core % self.cols, self.v.cores[core].region
            items: list[tuple[tuple, tuple | None]] = [((j, reg, ch[2], ch[3]), (j, buf, coff))
                                                       for j, buf, coff in self._inputs() if self.ex.bufs.in_ddr(buf)]
            if self._wants_residual(idx) and self.ex.bufs.in_ddr(self.v.rec.inputs[-1].buffer):
                items.append((("res", core), None))
            for key, src in items:
                if (col, key) in self.stage_in[half]:
                    continue
                x = (self._residual(where, tile, ch) if src is None
                     else self._window(where, core, tile, ch, *src[1:], self._new_cols(idx, i, core, tile),
                                       self.p.instrs[idx].q))
                at = self._mt_range(where, col, "in", half, fill[col], x.size)
                self.mem.memtile[at] = x.reshape(-1).view(np.uint8)
                self.stage_in[half][(col, key)] = (fill[col], x.shape)
                self.ex.acct.move(idx, i, col, x.size)
                fill[col] += x.size

    def _staged(self, where, col, half, key) -> np.ndarray:
        if (col, key) not in self.stage_in[half]:
            raise SimulationError(f"{where}: reads {key} from stage_in[{half}] of column {col}, "
                                  f"which LOAD did not fill")
        off, shape = self.stage_in[half][(col, key)]
        n = int(np.prod(shape))
        return self.mem.memtile[self._mt_range(where, col, "in", half, off, n)].view(np.int8).reshape(shape)

    def _stream(self, idx: int, i: int, col: int, x: np.ndarray) -> np.ndarray:
        """``x`` as the core / MemTile receives it over instruction ``idx``'s stream: for a transfer
        its layer zero-compresses, encoded by the sending DMA, decoded by the receiving one (its
        compressed bytes counted, ``Accounting.stream``); else ``x`` itself."""
        if self.p.instrs[idx].op not in self.v.rec.compressed:
            return x
        c = self.ex.hw.dma_compression
        enc = encode(x, c.chunk_bytes, c.mask_bytes, c.word_bytes)
        self.ex.acct.stream(idx, enc.size)
        return decode(enc, x.size, c.chunk_bytes, c.mask_bytes, c.word_bytes).view(np.int8).reshape(x.shape)

    def loadfm(self, idx: int, i: int, ctx) -> None:
        where, half = self._where(idx, i), self.half(i)
        cap = self.ex.hw.core.input_buffer_bytes // 2
        sent: dict = {}  # (column, window) -> the window as the column's cores received it
        for core, tile, ch in ctx:
            col, reg = core % self.cols, self.v.cores[core].region
            parts = []
            for j, buf, coff in self._inputs():
                key = (j, reg, ch[2], ch[3])
                x = (self._staged(where, col, half, key) if self.ex.bufs.in_ddr(buf)
                     else self._window(where, core, tile, ch, buf, coff, self._new_cols(idx, i, core, tile),
                                       self.p.instrs[idx].q))
                if (col, key) not in sent:  # broadcast down the column: moves once
                    sent[(col, key)] = self._stream(idx, i, col, x)
                    self.ex.acct.move(idx, i, col, x.size)
                parts.append(sent[(col, key)])
            lay: dict[str, Any] = {"windows": [], "ring": None, "residual": None}
            off = 0
            if self.v.slide:  # one window input (``LayerSpec.slides``), kept in the ring
                lay["ring"] = self._ring_put(where, core, tile, parts[0])
                parts = []
            for x in parts:
                lay["windows"].append((half * cap + off, x.shape))
                off += self._put(where, core, half * cap + off, cap - off, x)
            if self._wants_residual(idx):
                rb = self.v.rec.inputs[-1].buffer
                r = (self._staged(where, col, half, ("res", core)) if self.ex.bufs.in_ddr(rb)
                     else self._residual(where, tile, ch))
                r = self._stream(idx, i, col, r)
                room = self.mem.region["res"][1] // 2
                if r.size > room:
                    raise SimulationError(f"{where}: residual tile {r.size} B overflows half of core.res "
                                          f"({room} B: data memory left after core.in/out/w)")
                self.mem.core_slice(where, core, "res", half * room, r.size)[...] = r.reshape(-1).view(np.uint8)
                lay["residual"] = half * room
                self.ex.acct.move(idx, i, col, r.size)
            self.core_in[(core, half)] = lay

    def _put(self, where, core, off, room, x) -> int:
        if x.size > room:
            raise SimulationError(f"{where}: core {self.mem.core_name(core)} input data "
                                  f"{x.size} B overflow its half of core.in ({room} B left of "
                                  f"{self.ex.hw.core.input_buffer_bytes // 2} B)")
        self.mem.core_slice(where, core, "in", off, x.size)[...] = x.reshape(-1).view(np.uint8)
        return x.size

    # ---- activations out ----------------------------------------------------------------------
    def writefm(self, idx: int, i: int, ctx) -> None:
        ins, where, half = self.p.instrs[idx], self._where(idx, i), self.half(i)
        out = self.v.rec.output
        to_ddr = self.ex.bufs.in_ddr(out.buffer)
        fill = [0] * self.cols
        for core, tile, ch in ctx:
            if (core, half) not in self.core_out:
                raise SimulationError(f"{where}: core {self.mem.core_name(core)} has no output tile (no COMP)")
            off, shape = self.core_out.pop((core, half))
            y = self.mem.core_slice(where, core, "out", off, int(np.prod(shape))).view(np.int8).reshape(shape)
            col = core % self.cols
            y = self._stream(idx, i, col, y)
            if to_ddr:
                rng = self._mt_range(where, col, "out", half, fill[col], y.size)
                self.mem.memtile[rng] = y.reshape(-1).view(np.uint8)
                self.stage_out[half].append((col, fill[col], shape, tile, int(out.channels(ch[0], ch[0] + 1)[0])))
                fill[col] += y.size
            else:
                self.ex.bufs.write(where, out.buffer, tile, int(out.channels(ch[0], ch[0] + 1)[0]), y, out.c_stride)
            self.ex.acct.move(idx, i, col, y.size)
        del ins

    def write(self, idx: int, i: int, ctx) -> None:
        where, half = self._where(idx, i), self.half(i)
        buf, stride = self.v.rec.output.buffer, self.v.rec.output.c_stride
        for col, off, shape, tile, ch0 in self.stage_out[half]:
            n = int(np.prod(shape))
            y = self.mem.memtile[self._mt_range(where, col, "out", half, off, n)].view(np.int8).reshape(shape)
            self.ex.bufs.write(where, buf, tile, ch0, y, stride)
            self.ex.acct.move(idx, i, col, n)
