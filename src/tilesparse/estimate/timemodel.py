"""The time model — every timing rule of tilesparse, in this one module (docs/time-model.md).

Rules:

1. **Transfers**: time = bytes on the busiest channel / that channel's bandwidth, from ``hw.links``:
   LOAD and LOADW at ``ddr_to_memtile_bytes_per_s`` (activations and weights on separate channels of
   each column), WRITE at ``memtile_to_ddr_bytes_per_s``, LOADFM / LOADWM / WRITEFM at
   ``memtile_to_core_bytes_per_s`` (one channel per column for activations in and out, one per row
   for weights).
2. **COMP**: cycles of the slowest core / ``clock_hz``. A core's cycles for a tile are
   ``ceil(positions / M) × Σ_slabs ceil(kept input channels × taps / K) + overhead`` with
   ``(M, K, N) = hw.core.matmul_shape`` (slabs of N output channels) and the per-call
   ``hw.core.kernel_call_overhead_cycles``: skipped blocks cost nothing, padding to the matmul shape
   is paid, and no core ever exceeds ``M·K·N`` MACs per cycle. Pools, adds and copies run one
   element operation per MAC slot (``macs_per_cycle`` per cycle).
3. **Iteration count 1**: a lone step's stages run in sequence (each waits for the one before);
   consecutive steps of a layer still form one pipeline (rule 4) — a deliberate deviation from
   the paper (docs/time-model.md).
4. **Iteration count n > 1**: the pipeline stages (LOAD, LOADFM, COMP, WRITEFM, WRITE) overlap
   through ping-pong buffers, each stage one engine running its iterations in order: iteration
   i of a stage starts when the stage's iteration i−1 is done, its input is ready (the previous
   stage's iteration i) and the buffer half it writes was released (by the next stage's last
   iteration on that half, i−2). With equal iterations this is the paper's max(stage) × n plus
   the pipeline fill and drain. The steps of one layer continue the same pipeline (the parity
   carries over, docs/program.md), so the fill is paid once per layer and the next step's first
   tiles stream in while the current one computes.
5. **LOADWM halts the cores**: a step's LOADWM starts when the cores are free (the previous COMP
   is done) and its first COMP waits for its end (the weight buffer is a single buffer); the DMA
   stages (LOAD, LOADFM, WRITEFM, WRITE) keep moving on their own channels, as their locks allow.
   Weights move in ``hw.memtile.weight_slot_pieces`` pieces with a lock pair each (cut-through):
   LOADWM starts once LOADW's piece 0 has arrived, and copies piece i once LOADW has delivered
   it. So the layer's first input tiles move while its first weights arrive.
6. **LOADW prefetch**: the weight channel streams the layer's chunks ahead of the cores into two
   MemTile slots: chunk j starts when chunk j−1 has arrived and slot (j mod 2) was emptied by LOADWM
   j−2 (all its pieces). Layers do not overlap each other (so a layer is never faster than its
   own lower bound).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tilesparse.hw import ArrayConfig

__all__ = [
    "InstrTime",
    "LayerTime",
    "ProgramTime",
    "StepTime",
    "bandwidth",
    "comp_s",
    "engine_bound_s",
    "estimate_program",
    "layer_time",
    "layer_time_arrays",
    "pipeline_s",
    "transfer_s",
]

TRANSFER_OPS = ("LOAD", "LOADW", "LOADFM", "LOADWM", "WRITEFM", "WRITE")
PIPE_OPS = ("LOAD", "LOADFM", "COMP", "WRITEFM", "WRITE")  # the order of an iteration's stages
WEIGHT_SLOTS = 2  # MemTile weight staging is double-buffered


def bandwidth(op: str, hw: ArrayConfig) -> float:
    """Bytes per second of one channel used by transfer instruction ``op``."""
    links = hw.links
    return {
        "LOAD": links.ddr_to_memtile_bytes_per_s,
        "LOADW": links.ddr_to_memtile_bytes_per_s,
        "WRITE": links.memtile_to_ddr_bytes_per_s,
        "LOADFM": links.memtile_to_core_bytes_per_s,
        "LOADWM": links.memtile_to_core_bytes_per_s,
        "WRITEFM": links.memtile_to_core_bytes_per_s,
    }[op]


def transfer_s(op: str, nbytes: float | np.ndarray, hw: ArrayConfig) -> np.ndarray:
    """Rule 1: seconds to move ``nbytes`` on the busiest channel of ``op``."""
    return np.asarray(nbytes, dtype=np.float64) / bandwidth(op, hw)


def comp_s(cycles: float | np.ndarray, hw: ArrayConfig) -> np.ndarray:
    """Rule 2: seconds of ``cycles`` on the slowest core."""
    return np.asarray(cycles, dtype=np.float64) / hw.clock_hz


def stage_seconds(op: str, per_iter: np.ndarray, hw: ArrayConfig) -> np.ndarray:
    return comp_s(per_iter, hw) if op == "COMP" else transfer_s(op, per_iter, hw)


def pipeline_s(stages: dict[str, np.ndarray]) -> float:
    """Rules 3–4: seconds of one step's pipeline without weights, stage ``op`` taking
    ``stages[op][i]`` s at iteration i (the paper's max(stage) × n plus fill and drain when the
    iterations are equal; in sequence for one iteration)."""
    ops = [op for op in PIPE_OPS if op in stages]
    n = max((len(v) for v in stages.values()), default=0)
    if n == 0:
        return 0.0
    d = np.zeros((1, len(ops), n))
    for o, op in enumerate(ops):
        d[0, o, :len(stages[op])] = stages[op]
    return _run(np.zeros((1, 1)), np.zeros((1, 1)), d, ops, [n], ["WRITEFM" in stages])


@dataclass(frozen=True)
class StepTime:
    loadw_s: float  # Σ over pieces
    loadwm_s: float
    stage_busy_s: dict[str, float]  # seconds each pipeline stage is busy (for the timeline)
    stage_start_s: dict[str, float]  # when each pipeline stage's first iteration starts
    start_s: float = 0.0  # LOADWM start (the cores halt), relative to the layer start
    loadw_start_s: float = 0.0
    ready_s: float = 0.0  # LOADWM end: the step's weights are in the cores


@dataclass(frozen=True)
class LayerTime:
    total_s: float
    steps: tuple[StepTime, ...]

    def busy_s(self, op: str) -> float:
        if op == "LOADW":
            return sum(s.loadw_s for s in self.steps)
        if op == "LOADWM":
            return sum(s.loadwm_s for s in self.steps)
        return sum(s.stage_busy_s.get(op, 0.0) for s in self.steps)


def _run(lw: np.ndarray, lwm: np.ndarray, d: np.ndarray, ops: Sequence[str], iters: Sequence[int],
         writes: Sequence[bool], record: list | None = None) -> float:
    """Rules 3–6: the layer's seconds, every engine running its iterations in order as the
    program's locks allow (docs/program.md, "Locks and ordering").

    ``d[j, o, i]``: seconds of stage ``ops[o]`` in iteration i of step j (step j runs ``iters[j]``
    iterations; WRITEFM and WRITE only where ``writes[j]``, the last input-channel chunk);
    ``lw[j, p]`` / ``lwm[j, p]``: seconds of weight piece p (a step without weight bytes keeps
    its chunk: no LOADW, no LOADWM). Iteration g counts across the steps; its ping-pong half is
    g mod 2 and "the last iteration on half h" is what released that half's lock. Appends, per
    step, (LOADWM start, LOADW start, LOADWM end, {op: first iteration's start}) to ``record``."""
    n = d.shape[0]
    if lw.shape[1] == 0:
        lw = lwm = np.zeros((n, 1))
    cum = np.cumsum(lw, axis=1)
    tail = np.cumsum(lwm[:, ::-1], axis=1)[:, ::-1]  # Σ_{m≥i} lwm_m
    weighted = (cum[:, -1] + tail[:, 0] > 0).tolist()
    lw_all, lw_first, lwm_all = cum[:, -1].tolist(), lw[:, 0].tolist(), tail[:, 0].tolist()
    late = (cum + tail).max(axis=1).tolist()  # piece i arrives, then LOADWM copies pieces i…
    col = {op: k for k, op in enumerate(ops)}
    rows = d.tolist()
    zeros = [0.0] * d.shape[2]
    k_load, k_fm, k_comp, k_wfm, k_wr = (col.get(op, -1) for op in PIPE_OPS)
    staged_in, staged_out = k_load >= 0, k_wr >= 0
    # plain floats: this loop runs for every candidate of the compiler's search
    e_load = e_fm = e_comp = e_wfm = e_wr = 0.0  # each engine's last end
    h_fm, h_comp, h_wfm, h_wr = [0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]  # … per half
    w_done, lwm_ends = 0.0, [0.0, 0.0]  # LOADW's last end; LOADWM ends of steps j−2, j−1
    g = 0
    for j in range(n):
        row = rows[j]
        load, fm, comp, wfm, wr = (row[k] if k >= 0 else zeros for k in (k_load, k_fm, k_comp, k_wfm, k_wr))
        ready = start = lw0 = 0.0
        if weighted[j]:  # rule 6, then rule 5: LOADWM once the cores are free and piece 0 is in
            lw0 = max(w_done, lwm_ends[0])
            w_done = lw0 + lw_all[j]
            start = max(e_comp, lw0 + lw_first[j], lwm_ends[1])
            ready = max(start + lwm_all[j], lw0 + late[j])
            lwm_ends = [lwm_ends[1], ready]
            e_comp = ready  # the halt: the step's first COMP waits for its weights
        writing = writes[j]
        first = None
        for i in range(iters[j]):
            h = g & 1
            g += 1
            if staged_in:  # stage_in[h] is free once LOADFM g−2 has copied it out
                e_load = max(e_load, h_fm[h]) + load[i]
                s_fm = max(e_fm, h_comp[h], e_load)
            else:
                s_fm = max(e_fm, h_comp[h])  # core.in[h] is free once COMP g−2 is done with it
            e_fm = h_fm[h] = s_fm + fm[i]
            if writing:  # core.out[h] is free once the last WRITEFM on it is done
                s_comp = max(e_comp, e_fm, h_wfm[h])
                e_comp = h_comp[h] = s_comp + comp[i]
                e_wfm = h_wfm[h] = max(e_wfm, e_comp, h_wr[h]) + wfm[i]
                if staged_out:
                    e_wr = h_wr[h] = max(e_wr, e_wfm) + wr[i]
            else:
                s_comp = max(e_comp, e_fm)
                e_comp = h_comp[h] = s_comp + comp[i]
            if first is None and record is not None:
                first = {"LOAD": e_load - load[0], "LOADFM": s_fm, "COMP": s_comp, "WRITEFM": e_wfm - wfm[0],
                         "WRITE": e_wr - wr[0]}
        if record is not None:
            record.append((start, lw0, ready, first or {}))
    return max(e_load, e_fm, e_comp, e_wfm, e_wr, lwm_ends[1])


def _pieces(x: np.ndarray, n_steps: int) -> np.ndarray:
    """Per-step weight values as steps × pieces (a 1-D array is one piece per step)."""
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(n_steps, -1) if x.size else np.zeros((n_steps, 1))


def layer_time(steps: Sequence[tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]], hw: ArrayConfig) -> LayerTime:
    """Rules 1–6 over a layer's steps, each ``(loadw_bytes, loadwm_bytes, {op: per-iteration
    bytes or cycles})`` (weight bytes per piece; WRITEFM present in the steps that write);
    returns the layer's seconds and every step's timing."""
    secs = [{op: stage_seconds(op, v, hw) for op, v in pipe.items()} for _, _, pipe in steps]
    ops = [op for op in PIPE_OPS if any(op in sc for sc in secs)]
    iters = [max((len(v) for v in sc.values()), default=0) for sc in secs]
    d = np.zeros((len(steps), len(ops), max(iters, default=0)))
    for j, sc in enumerate(secs):
        for o, op in enumerate(ops):
            if op in sc:
                d[j, o, :len(sc[op])] = sc[op]
    n_p = max((np.size(b) for b, _, _ in steps), default=1)
    lw = np.zeros((len(steps), n_p))
    lwm = np.zeros((len(steps), n_p))
    for j, (b, bm, _) in enumerate(steps):
        lw[j, :np.size(b)] = transfer_s("LOADW", np.ravel(b), hw)
        lwm[j, :np.size(bm)] = transfer_s("LOADWM", np.ravel(bm), hw)
    rec: list[tuple[float, float, float, dict[str, float]]] = []
    total = _run(lw, lwm, d, ops, iters, ["WRITEFM" in sc for sc in secs], rec)
    out = tuple(StepTime(float(lw[j].sum()), float(lwm[j].sum()), {op: float(v.sum()) for op, v in secs[j].items()},
                         {op: first[op] for op in secs[j] if op in first}, start, lw0, ready)
                for j, (start, lw0, ready, first) in enumerate(rec))
    return LayerTime(total, out)


def layer_time_arrays(loadw_bytes: np.ndarray, loadwm_bytes: np.ndarray, pipe: dict[str, np.ndarray],
                      hw: ArrayConfig, iters: Sequence[int] | None = None,
                      writes: Sequence[bool] | None = None) -> float:
    """Rules 1–6 for a layer given as arrays (``pipe[op]``: steps × iterations, zero-padded past
    ``iters[j]``; weights: steps × pieces, or one value per step); seconds. ``iters`` / ``writes``
    default to the last non-zero iteration and to the steps with WRITEFM bytes."""
    ops = [op for op in PIPE_OPS if op in pipe]
    d = np.stack([stage_seconds(op, pipe[op], hw) for op in ops], axis=1)
    n = d.shape[0]
    if iters is None:
        nz = (d != 0).any(axis=1)
        iters = np.where(nz.any(axis=1), d.shape[2] - np.argmax(nz[:, ::-1], axis=1), 0).tolist()
    if writes is None:
        writes = ((pipe["WRITEFM"] != 0).any(axis=1) if "WRITEFM" in pipe else np.zeros(n, bool)).tolist()
    lw = transfer_s("LOADW", _pieces(loadw_bytes, n), hw)
    lwm = transfer_s("LOADWM", _pieces(loadwm_bytes, n), hw)
    return _run(lw, lwm, d, ops, iters, writes)


def engine_bound_s(loadw_bytes: np.ndarray, loadwm_bytes: np.ndarray, pipe: dict[str, np.ndarray],
                   hw: ArrayConfig) -> float:
    """Seconds no schedule under rules 1–6 beats for these arrays (as ``layer_time_arrays``): each
    engine runs its iterations one at a time, and the cores never compute during a LOADWM
    (rule 5), so the layer takes at least the busiest engine's total, COMP plus LOADWM for the
    cores. Cheap: the compiler's search drops a candidate whose bound cannot beat its best."""
    busy = [float(stage_seconds(op, np.asarray(v, dtype=np.float64), hw).sum()) for op, v in pipe.items()
            if op != "COMP"]
    cores = float(transfer_s("LOADWM", np.asarray(loadwm_bytes, dtype=np.float64), hw).sum())
    if "COMP" in pipe:
        cores += float(comp_s(pipe["COMP"], hw).sum())
    return max(busy + [cores, float(transfer_s("LOADW", np.asarray(loadw_bytes, dtype=np.float64), hw).sum())])


@dataclass(frozen=True)
class InstrTime:
    """When one instruction runs and why it takes that long."""

    index: int  # into Program.instrs
    start_s: float
    busy_s: float
    why: str


@dataclass(frozen=True)
class ProgramTime:
    total_s: float
    layers: tuple[tuple[str, float, float], ...]  # (layer, start_s, seconds)
    instrs: tuple[InstrTime, ...]

    def busy_by_op(self, program) -> dict[str, float]:
        out: dict[str, float] = {}
        for it in self.instrs:
            op = program.instrs[it.index].op
            out[op] = out.get(op, 0.0) + it.busy_s
        return out


def _why(op: str, vals: np.ndarray, hw: ArrayConfig) -> str:
    if op == "COMP":
        return (f"{vals.sum():.0f} cycles on the slowest core ({len(vals)} iterations, "
                f"max {vals.max():.0f}) at {hw.clock_hz / 1e9:g} GHz")
    return (f"{vals.sum():.0f} B on the busiest channel ({len(vals)} iterations) at "
            f"{bandwidth(op, hw) / 1e9:g} GB/s")


def estimate_program(program) -> ProgramTime:
    """Rules 1–6 applied to a compiled ``Program``: per-instruction start and busy time with its
    explanation, per-layer and total latency (layers run one after another)."""
    hw = program.hw
    by_step: dict[tuple[int, int], list[int]] = {}
    for i, ins in enumerate(program.instrs):
        by_step.setdefault((ins.layer, ins.step), []).append(i)
    layers, out, t = [], [], 0.0
    for li, rec in enumerate(program.layers):
        keys = sorted(k for k in by_step if k[0] == li)
        steps = []
        for key in keys:
            lw = lwm = np.zeros(1)
            pipe: dict[str, np.ndarray] = {}
            for i in by_step[key]:
                ins = program.instrs[i]
                v = program.iter_values(ins)
                if ins.op == "LOADW":
                    lw = v  # per weight piece
                elif ins.op == "LOADWM":
                    lwm = v
                else:
                    pipe[ins.op] = v
            steps.append((lw, lwm, pipe))
        lt = layer_time(steps, hw)
        for key, st in zip(keys, lt.steps):
            for i in by_step[key]:
                ins = program.instrs[i]
                v = program.iter_values(ins)
                if ins.op == "LOADW":
                    start, busy = st.loadw_start_s, st.loadw_s
                elif ins.op == "LOADWM":
                    start, busy = st.start_s, st.loadwm_s
                else:
                    start, busy = st.stage_start_s.get(ins.op, st.ready_s), st.stage_busy_s.get(ins.op, 0.0)
                out.append(InstrTime(i, t + start, busy, _why(ins.op, v, hw)))
        layers.append((rec.name, t, lt.total_s))
        t += lt.total_s
    return ProgramTime(t, tuple(layers), tuple(out))
