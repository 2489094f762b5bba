"""Interpret a ``Program`` instruction by instruction over explicit memories (docs/program.md).

Steps run in order; in a step LOADW and then LOADWM run piece by piece, then the pipeline instructions run
iteration-major (LOAD i, LOADFM i, COMP i, WRITEFM i, WRITE i for i = 0, 1, …), which is the
order the ping-pong locks allow. Every DMA copies bytes between the memories; COMP computes from
the bytes in the core's data memory only (``tilesparse.sim.compute``).
"""

from __future__ import annotations

import math

import numpy as np

from tilesparse.program.layout import acc_slot, band_rules
from tilesparse.quant import rounding as R
from tilesparse.sim import compute as C
from tilesparse.sim.accounting import Accounting
from tilesparse.sim.buffers import BufferMap
from tilesparse.sim.dma import Staging, core_w_offset
from tilesparse.sim.layer import LayerView
from tilesparse.sim.memory import Memories, SimulationError, Where

__all__ = ["PIPE_ORDER", "Executor"]

PIPE_ORDER = ("LOAD", "LOADFM", "COMP", "WRITEFM", "WRITE")


class Executor:
    """Runs a program; ``outputs`` holds each layer's output slice right after the layer ran."""

    def __init__(self, program):
        p = self.p = program
        if not p.quantized:
            raise SimulationError(f"program for {p.graph} was compiled from a float graph (weights packed "
                                  f"with a stand-in scale): it has sizes but no int8 semantics; recompile quantized")
        self.hw = p.hw
        top = max((a + n for a, n in p.ddr.values()), default=0)
        self.mem = Memories(p.hw, top)
        wa, wn = p.ddr.get("weights", (0, 0))
        if wn != p.weights.nbytes:
            raise SimulationError(f"DDR region 'weights' is {wn} B, the program's weight image {p.weights.nbytes} B")
        self.mem.ddr[wa:wa + wn] = p.weights
        self.bufs = BufferMap(p, self.mem)
        self.views = [LayerView(i, r) for i, r in enumerate(p.layers)]
        self.acct = Accounting(p)
        self.steps: list[list[list[int]]] = [[] for _ in p.layers]
        last = None
        for idx, ins in enumerate(p.instrs):
            if not 0 <= ins.layer < len(p.layers):
                raise SimulationError(f"instruction #{idx} ({ins.op}): layer index {ins.layer} out of range")
            if (ins.layer, ins.step) != last:
                self.steps[ins.layer].append([])
                last = (ins.layer, ins.step)
            self.steps[ins.layer][-1].append(idx)
        self.outputs: dict[str, np.ndarray] = {}
        # per (core, offset in core.w): the chunk decoded from the bytes the last LOADWM put there
        # (offset 0, or a double-buffered buffer's second half: the operand core.w@OFFSET)
        self.wchunk: dict[tuple[int, int], C.Chunk | C.LutTable] = {}
        self.decoded: dict[tuple, tuple[np.ndarray, C.Chunk]] = {}  # decoded chunks, by layer and row
        self.stage: Staging = None  # type: ignore[assignment]  # set by run_layer
        self._divs: dict[int, np.ndarray] = {}

    # ---- program ---------------------------------------------------------------------------
    def load_input(self, x: np.ndarray) -> str:
        written = {r.output.buffer for r in self.p.layers}
        ins = [n for n, b in self.p.buffers.items() if b.get("graph_io") and n not in written]
        if len(ins) != 1:
            raise SimulationError(f"program has {len(ins)} graph inputs ({ins}); the simulator runs one")
        shape = tuple(self.p.buffers[ins[0]]["shape"])
        x = np.asarray(x)
        if x.dtype != np.int8 or int(np.prod(x.shape)) != int(np.prod(shape)):
            raise SimulationError(f"input must be int8 with {shape} elements (C, H, W), got {x.dtype} {x.shape}")
        self.bufs.store(ins[0], x)
        return ins[0]

    def run_layer(self, li: int) -> None:
        v = self.views[li]
        self.bufs.cap = self._capacity(li)
        self.stage = Staging(self, li, self.bufs.cap)
        self.decoded.clear()  # chunks are only re-read within a layer
        done = 0  # pipeline iterations of the layer so far: the ping-pong parity carries over
        for step in self.steps[li]:
            pipe = []
            for idx in step:
                op = self.p.instrs[idx].op
                if op in ("LOADW", "LOADWM"):  # one iteration per weight piece
                    for i in range(self.p.instrs[idx].iters):
                        getattr(self.stage, op.lower())(idx, i)
                elif op in PIPE_ORDER:
                    pipe.append(idx)
                else:
                    raise SimulationError(f"instruction #{idx}: unknown op {op!r}")
            self.stage.phase = done % 2
            done += self._pipeline(v, sorted(pipe, key=lambda i: PIPE_ORDER.index(self.p.instrs[i].op)))
        out = v.rec.output
        snap = self.bufs.snapshot(out.buffer, out.c_offset, out.c_offset + (v.spec.co - 1) * out.c_stride + 1)
        self.outputs[v.name] = snap[::out.c_stride] if out.c_stride > 1 else snap

    def _capacity(self, li: int) -> int:
        caps = self.p.meta.get("memtile_capacity")
        return int(caps[li]) if caps and li < len(caps) else self.mem.mt_bytes

    # ---- pipeline --------------------------------------------------------------------------
    def _pipeline(self, v: LayerView, pipe: list[int]) -> int:
        """Run one step's pipeline; returns its iteration count."""
        if not pipe:
            return 0
        ins0 = self.p.instrs[pipe[0]]
        iters = {self.p.instrs[i].iters for i in pipe}
        if len(iters) != 1:
            raise SimulationError(f"layer {v.name!r} step {ins0.step}: pipeline instructions disagree on "
                                  f"the iteration count ({sorted(iters)})")
        st = self.stage
        for i in range(ins0.iters):
            ctx = [(c, v.tile(c, ins0.s, i), v.chunk(c, ins0.k, ins0.q)) for c in range(len(v.cores))]
            ctx = [(c, t, ch) for c, t, ch in ctx if t is not None and ch is not None]
            st.begin_iteration(i)
            for idx in pipe:
                op = self.p.instrs[idx].op
                if op == "COMP":
                    self._comp(v, idx, i, ctx)
                else:
                    getattr(st, op.lower())(idx, i, ctx)
        return ins0.iters

    def _comp(self, v: LayerView, idx: int, i: int, ctx) -> None:
        ins = self.p.instrs[idx]
        where = Where(v.name, "COMP", ins.step, i, idx)
        worst, extra = 0, 0
        for core, tile, ch in ctx:
            macs, cyc, oc_t, p = self._comp_core(v, where, ins, i, core, tile, ch)
            worst = max(worst, cyc)
            if v.rec.fused_add and v.last_q(ins.q):
                extra = max(extra, math.ceil(p * oc_t / self.hw.macs_per_cycle("int8")))
            self.acct.compute(idx, i, macs, 0)
        self.acct.compute(idx, i, 0, worst + extra)

    def _comp_core(self, v, where, ins, i, core, tile, ch):
        a, b, c, d = tile
        p, oc_t = (b - a) * (d - c), ch[1] - ch[0]
        lay = self.stage.core_in.get((core, self.stage.half(i)))
        if lay is None:
            raise SimulationError(f"{where}: core {self.mem.core_name(core)} has no input window (no LOADFM)")
        xs = ([self.stage.ring_window(where, core, lay["ring"])] if lay["ring"] is not None else
              [self._core_array(where, core, "in", off, shape) for off, shape in lay["windows"]])
        win = v.window(tile, ins.q)
        if v.kind == "conv":
            y, macs, cyc = self._conv(v, where, ins, i, core, tile, ch, xs[0], lay)
        elif v.kind == "lut":
            y, macs, cyc = self._lookup(v, where, ins, core, xs[0])
        else:
            if v.banded:
                y, macs = self._pool_band(v, where, ins, i, core, tile, ch, xs[0], win)
            else:
                y, macs = self._elementwise(v, where, tile, ch, xs, win)
            cyc = (math.ceil(macs / self.hw.macs_per_cycle("int8")) + self.hw.core.kernel_call_overhead_cycles
                   if macs else 0)
        if y is not None:
            self._store_out(where, v, core, i, y)
        return macs, cyc, oc_t, p

    def _core_array(self, where, core, region, off, shape, dtype=np.int8) -> np.ndarray:
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return self.mem.core_slice(where, core, region, off, n).view(dtype).reshape(shape)

    def _out_slots(self, v: LayerView, i: int) -> tuple[tuple[str, int], int]:
        """((region, accumulator offset), int8 tile offset in core.out) for iteration ``i``
        (``layout.acc_slot``; docs/program.md)."""
        out = self.hw.core.output_buffer_bytes
        sub = v.part.sub
        h = self.stage.half(i)
        slot = acc_slot(v.spec, self.hw, sub, v.n_q, h if v.n_q == 1 else i)  # n_q > 1: tile i of the group
        if slot is None:
            raise SimulationError(f"layer {v.name!r}: the int32 accumulators of tile {i} "
                                  f"({sub.h * sub.w * sub.oc * 4} B each) fit neither core.out nor core.res")
        if v.n_q == 1:
            return slot, slot[1]
        t8 = sub.h * sub.w * sub.oc
        return slot, out - 2 * t8 + h * t8

    def _held(self, ins, core: int):
        """The chunk core ``core`` holds in the part of ``core.w`` COMP ``ins`` reads."""
        return self.wchunk.get((core, core_w_offset(ins.src)))

    def _lookup(self, v, where, ins, core, x):
        """A lut layer: every element through the table the core loaded (its chunk (0, 0)); the core
        reads ``lut_lookups_per_cycle`` entries per cycle."""
        cw = v.cores[core]
        lut = self._held(ins, core)
        want = v.chunk_rows.get((cw.oc_group, 0, 0))
        if not isinstance(lut, C.LutTable) or want is None or lut.row != want:
            held = None if lut is None else lut.row.key
            raise SimulationError(f"{where}: core {self.mem.core_name(core)} holds weight chunk {held}, "
                                  f"not the lookup table of oc group {cw.oc_group}")
        y = C.lookup_tile(x.reshape(-1, x.shape[2]), lut)
        n = int(y.size)
        cyc = math.ceil(n / self.hw.core.lut_lookups_per_cycle) + self.hw.core.kernel_call_overhead_cycles if n else 0
        return y, n, cyc

    def _conv(self, v, where, ins, i, core, tile, ch, x, lay):
        cw = v.cores[core]
        chunk = self._held(ins, core)
        want = v.chunk_rows.get((cw.oc_group, ins.k, ins.q))
        if chunk is None or want is None or chunk.row != want:
            raise SimulationError(f"{where}: core {self.mem.core_name(core)} holds weight chunk "
                                  f"{None if chunk is None else chunk.row.key}, "
                                  f"step needs {(cw.oc_group, ins.k, ins.q)}")
        a, b, c, d = tile
        p, oc_t = (b - a) * (d - c), ch[1] - ch[0]
        part, macs = C.conv_tile(x, v.spec, v.window(tile).stride, (b - a, d - c), chunk)
        (acc_region, acc_off), _ = self._out_slots(v, i)
        acc_mem = self._core_array(where, core, acc_region, acc_off, (p, oc_t), np.int32)
        acc = part if ins.q == 0 else acc_mem.astype(np.int64) + part
        cyc = C.conv_cycles(chunk, p, v.spec.taps, self.hw, v.spec.weight_format)
        if not v.last_q(ins.q):
            acc_mem[...] = self._int32(where, acc)
            return None, macs, cyc
        if chunk.bias is None:
            raise SimulationError(f"{where}: last input-channel chunk carries no bias")
        acc = acc + chunk.bias.astype(np.int64)[None, :]
        acc_mem[...] = self._int32(where, acc)
        y = R.requantize(acc, self._shifts(v, ch), tuple(v.rec.attrs["clamp"]))
        if v.rec.fused_add:
            res = self._core_array(where, core, "res", lay["residual"], (p, oc_t))
            y = self._fused_add(v, y, res.astype(np.int64))
        return y, macs, cyc

    def _int32(self, where, acc: np.ndarray) -> np.ndarray:
        if acc.size and (acc.max() > R.INT32_MAX or acc.min() < R.INT32_MIN):
            raise SimulationError(f"{where}: int32 accumulator overflow ({int(np.abs(acc).max())})")
        return acc.astype(np.int32)

    def _shifts(self, v: LayerView, ch) -> np.ndarray:
        s = v.rec.attrs.get("shift")
        if s is not None:
            return np.asarray(int(s), np.int64)
        key = f"{v.name}.shifts"
        if key not in self.p.params:
            raise SimulationError(f"layer {v.name!r}: no 'shift' attr and no per-channel param {key!r}")
        return self.p.params[key].astype(np.int64)[ch[0]:ch[1]][None, :]

    def _fused_add(self, v: LayerView, y: np.ndarray, res: np.ndarray) -> np.ndarray:
        add = v.rec.attrs["add"]
        s = dict(zip(add["inputs"], add["input_shifts"], strict=True))
        s_conv, s_res = s.get(v.name), s.get(v.rec.residual)
        if s_conv is None or s_res is None:
            raise SimulationError(f"layer {v.name!r}: fused add inputs {add['inputs']} do not name the conv "
                                  f"and its residual {v.rec.residual!r}")
        return R.saturate(R.shift_round(y, s_conv) + R.shift_round(res, s_res), *add["clamp"])

    def _elementwise(self, v, where, tile, ch, xs, win):
        """Pools, adds, activations, copies, flatten on one tile → (positions × channels, ops)."""
        a, b, c, d = tile
        n_out, oc_t = (b - a, d - c), ch[1] - ch[0]
        p = n_out[0] * n_out[1]
        k, attrs = v.kind, v.rec.attrs
        if k in ("maxpool", "avgpool"):
            valid = ((win.rows >= 0) & (win.rows < v.spec.hi))[:, None] & \
                ((win.cols >= 0) & (win.cols < v.spec.wi))[None, :]
            y = C.pool_tile(xs[0], valid, k, v.spec, win.stride, n_out).reshape(p, -1)
            if k == "avgpool":
                div = self._divisors(v)[a:b, c:d].reshape(-1, 1)
                y = R.avg_round(y, div)
            return y, p * oc_t * v.spec.taps
        if k == "adaptive_avgpool":  # the whole plane is in the core: each window's exact sum and size
            y = C.adaptive_pool_tile(xs[0], (v.spec.ho, v.spec.wo), tile)
            return y, p * oc_t * v.spec.taps
        x = [t.reshape(-1, t.shape[2]).astype(np.int64) for t in xs]
        if k == "add":
            s0, s1 = attrs["input_shifts"]
            y = R.saturate(R.shift_round(x[0], s0) + R.shift_round(x[1], s1), *attrs["clamp"])
        elif k == "mul":  # int8 x int8, requantized by the node's shift
            y = R.requantize(x[0] * x[1], int(attrs["shift"]), tuple(attrs["clamp"]))
        elif k in ("relu", "relu6"):
            y = R.saturate(x[0], *attrs["clamp"])
        elif k == "copy":  # into the concat's exponent, as quant's concat does
            if "shift" not in attrs:
                raise SimulationError(f"{where}: copy layer has no 'shift' attr (program from an older compiler)")
            y = R.saturate(R.shift_round(x[0], int(attrs["shift"])), *attrs.get("clamp", (R.INT8_MIN, R.INT8_MAX)))
        elif k == "flatten":
            hw_ = v.spec.hi * v.spec.wi
            o = np.arange(ch[0], ch[1])
            c0 = ch[2]
            y = xs[0][(o % hw_) // v.spec.wi, o % v.spec.wi, o // hw_ - c0].astype(np.int64)[None, :]
        else:
            raise SimulationError(f"{where}: COMP of kind {k!r} is not defined")
        return y, p * oc_t * v.spec.taps * len(xs)

    def _pool_band(self, v: LayerView, where, ins, i, core, tile, ch, x, win):
        """One window band of an average pool run in bands (docs/program.md, "Window bands"): the
        band's window sums added to the tile's int32 accumulators (resident across q, as a conv's
        partial sums); the last band divides the whole sums as the unsplit pool does."""
        a, b, c, d = tile
        n_out, oc_t = (b - a, d - c), ch[1] - ch[0]
        p = n_out[0] * n_out[1]
        band = band_rules(v.spec, v.n_q, ins.q)
        sums = C.pool_tile(x, np.ones(x.shape[:2], bool), "avgpool", band, win.stride, n_out).reshape(p, -1)
        (acc_region, acc_off), _ = self._out_slots(v, i)
        acc_mem = self._core_array(where, core, acc_region, acc_off, (p, oc_t), np.int32)
        acc = sums if ins.q == 0 else acc_mem.astype(np.int64) + sums
        acc_mem[...] = self._int32(where, acc)
        ops = p * oc_t * band.taps
        if not v.last_q(ins.q):
            return None, ops
        return R.avg_round(acc, self._divisors(v)[a:b, c:d].reshape(-1, 1)), ops

    def _divisors(self, v: LayerView) -> np.ndarray:
        if v.index not in self._divs:
            a = v.rec.attrs
            self._divs[v.index] = R.pool_divisors((v.spec.hi, v.spec.wi), (v.spec.ho, v.spec.wo), v.spec.kernel,
                                                  v.spec.stride, v.spec.padding, bool(a.get("count_include_pad", True)))
        return self._divs[v.index]

    def _store_out(self, where, v: LayerView, core: int, i: int, y: np.ndarray) -> None:
        _, y_off = self._out_slots(v, i)
        y8 = y.astype(np.int8)
        self._core_array(where, core, "out", y_off, y8.shape)[...] = y8
        self.stage.core_out[(core, self.stage.half(i))] = (y_off, y8.shape)

