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
3. **Iteration count 1**: a lone step's stages run in sequence; consecutive steps of a layer still
   form one pipeline (rule 4) — a deliberate deviation from the paper (docs/time-model.md).
4. **Iteration count n > 1**: the pipeline stages (LOAD, LOADFM, COMP, WRITEFM, WRITE) overlap
   (ping-pong buffers); time = Σ_i max_stage d[stage][i] + fill, where the fill is the first
   iteration of every stage but the slowest (Σ_stage d[stage][0] − max_stage d[stage][0]). With equal
   iterations this is the paper's max(stage) × n plus the pipeline fill/drain. The steps of one
   layer continue the same ping-pong pipeline (the buffer parity carries over), so the fill is
   paid once per layer.
5. **LOADWM halts the cores**: from its start to its end, a step's LOADWM is added to its first
   COMP iteration (the core cannot compute while its weight buffer refills); the DMA stages
   (LOADFM of the next tile, WRITEFM of the previous one) keep running on their own channels.
   Weights move in ``hw.memtile.weight_slot_pieces`` pieces with a lock pair each (cut-through):
   LOADWM starts once the cores are free and LOADW's piece 0 has arrived, and copies piece i once
   LOADW has delivered it. Likewise the layer's first input tile (LOAD, LOADFM of iteration 0)
   moves while its first weights arrive (LOADW 0, LOADWM 0): only COMP needs them (``_lead_s``).
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
    "estimate_program",
    "layer_time",
    "layer_time_arrays",
    "pipeline_s",
    "transfer_s",
]

TRANSFER_OPS = ("LOAD", "LOADW", "LOADFM", "LOADWM", "WRITEFM", "WRITE")
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
    """Rules 3–4: seconds of a pipeline whose stage ``op`` takes ``stages[op][i]`` s at iteration i."""
    vals = list(stages.values())
    n = len(vals[0]) if vals else 0
    if n == 0:
        return 0.0
    if n == 1:
        return float(sum(v[0] for v in vals))  # iteration count 1: in sequence
    d = np.stack(vals)
    fill = float(d[:, 0].sum() - d[:, 0].max())
    return float(d.max(axis=0).sum()) + fill


@dataclass(frozen=True)
class StepTime:
    loadw_s: float  # Σ over pieces
    loadwm_s: float
    pipe_s: float
    stage_busy_s: dict[str, float]  # seconds each pipeline stage is busy (for the timeline)
    start_s: float = 0.0  # LOADWM start (the cores halt) relative to the layer start
    loadw_start_s: float = 0.0
    lead_s: float = 0.0  # the first step's pipeline starts this much before its LOADWM ends
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


@dataclass(frozen=True)
class _Segments:
    """Per step j, the pipeline's seconds once its LOADWM has halted the cores for h seconds:
    ``rest + max(other, comp + h)`` from ``table[j] = (rest, other, comp)`` — the slowest stage
    summed over iterations ≥ 1; iteration 0's slowest transfer stage, which keeps going, and its
    COMP, which waits for the weights (rule 5). ``fill``: the layer's first iteration's stages
    but the slowest (rule 4)."""

    table: np.ndarray  # steps × 3
    fill: float


def _segments(d: np.ndarray, comp_row: int) -> _Segments:
    """Rules 4–5 for a layer whose steps' pipelines continue one another: ``d[j, op, i]`` stage
    seconds (zero-padded)."""
    table = np.zeros((d.shape[0], 3))
    if d.shape[0] == 0 or d.shape[2] == 0:
        return _Segments(table, 0.0)
    first = d[0, :, 0]
    table[:, 0] = d[:, :, 1:].max(axis=1).sum(axis=1)
    if comp_row < 0:  # no COMP: the halt delays the whole first iteration
        table[:, 2] = d[:, :, 0].max(axis=1)
    else:
        others = d[:, :, 0].copy()
        others[:, comp_row] = 0.0  # seconds are ≥ 0: the slowest transfer stage, 0 without one
        table[:, 1] = others.max(axis=1)
        table[:, 2] = d[:, comp_row, 0]
    return _Segments(table, float(first.sum() - first.max()))


INPUT_OPS = ("LOAD", "LOADFM")


def _lead_s(d: np.ndarray, ops: list[str], weights_s: float) -> float:
    """Rule 5, first step: seconds of the fill hidden because the first tile's input transfers
    run while the first weights arrive (``weights_s``: LOADW 0 and LOADWM 0, overlapped piece by
    piece). The fill counts them before the first COMP (which also waits for the weights); on
    their own channels they overlap those, so the first COMP starts at max(weights, input)
    instead of their sum: min(weights, the input stages of iteration 0 that the fill counts —
    all but the slowest stage)."""
    if d.shape[0] == 0 or d.shape[2] == 0:
        return 0.0
    first = d[0, :, 0]
    # the stage the fill leaves out (on a tie, not an input stage: the fill then holds the input)
    slowest = max(range(len(ops)), key=lambda o: (first[o], ops[o] not in INPUT_OPS))
    lead = sum(float(first[o]) for o, op in enumerate(ops) if op in INPUT_OPS and o != slowest)
    return min(weights_s, lead)


def _recurrence(lw: np.ndarray, lwm: np.ndarray, seg: _Segments,
                record: list | None = None) -> tuple[float, float]:
    """Rules 5–6 and the step order; ``lw[j, i]`` / ``lwm[j, i]``: seconds of weight piece i.
    Returns the layer's seconds before the first step's lead and when the first step's weights
    are in the cores; appends (LOADWM start, LOADW start, LOADWM end, pipeline seconds) per step
    to ``record``.

    LOADW j starts when LOADW j−1 is done and slot (j mod 2) was emptied by LOADWM j−2; its
    pieces arrive one after another, piece i at ``a_i``. LOADWM j starts when the cores are free
    and piece 0 has arrived, and copies piece i once it has arrived: it ends at
    ``max(start + Σ_i lwm_i, max_i (a_i + Σ_{m≥i} lwm_m))``."""
    if lw.shape[1] == 0:
        lw = lwm = np.zeros((len(lw), 1))
    cum = np.cumsum(lw, axis=1)
    tail = np.cumsum(lwm[:, ::-1], axis=1)[:, ::-1]  # Σ_{m≥i} lwm_m
    cols = np.concatenate([cum[:, -1:], lw[:, :1], tail[:, :1], (cum + tail).max(axis=1, keepdims=True),
                           seg.table], axis=1)
    w_done = core_free = 0.0
    prev = [0.0] * WEIGHT_SLOTS  # LOADWM ends of the last steps, oldest first
    first = None
    # plain floats: this loop runs for every candidate of the compiler's search
    for lw_all, lw_first, lwm_all, late, rest, other, comp in cols.tolist():
        lw0 = max(w_done, prev[0])
        w_done = lw0 + lw_all
        start = max(core_free, lw0 + lw_first)
        done = max(start + lwm_all, lw0 + late)
        seconds = rest + max(other, comp + done - start)
        core_free = start + seconds
        prev = prev[1:] + [done]
        if first is None:
            first = done
        if record is not None:
            record.append((start, lw0, done, seconds))
    return core_free + seg.fill, first or 0.0


def _pieces(x: np.ndarray, n_steps: int) -> np.ndarray:
    """Per-step weight values as steps × pieces (a 1-D array is one piece per step)."""
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(n_steps, -1) if x.size else np.zeros((n_steps, 1))


def _layer(lw: np.ndarray, lwm: np.ndarray, d: np.ndarray, ops: list[str],
           record: list | None = None) -> tuple[float, float]:
    """Rules 4–6 over stage seconds ``d`` and weight-piece seconds: (layer seconds, the first
    step's lead)."""
    total, weights_s = _recurrence(lw, lwm, _segments(d, ops.index("COMP") if "COMP" in ops else -1), record)
    lead = _lead_s(d, ops, weights_s)
    return total - lead, lead


def layer_time(steps: Sequence[tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]], hw: ArrayConfig) -> LayerTime:
    """Rules 1–6 over a layer's steps, each ``(loadw_bytes, loadwm_bytes, {op: per-iteration
    bytes or cycles})`` (weight bytes per piece); returns the layer's seconds and every step's
    timing."""
    secs = [{op: stage_seconds(op, v, hw) for op, v in pipe.items()} for _, _, pipe in steps]
    ops = list(dict.fromkeys(op for sc in secs for op in sc))
    t_max = max((len(v) for sc in secs for v in sc.values()), default=0)
    d = np.zeros((len(steps), len(ops), t_max))
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
    rec: list[tuple[float, float, float, float]] = []
    total, lead = _layer(lw, lwm, d, ops, rec)
    out = tuple(StepTime(float(lw[j].sum()), float(lwm[j].sum()), seconds,
                         {op: float(v.sum()) for op, v in secs[j].items()}, start, lw0,
                         lead if j == 0 else 0.0, done)
                for j, (start, lw0, done, seconds) in enumerate(rec))
    return LayerTime(total, out)


def layer_time_arrays(loadw_bytes: np.ndarray, loadwm_bytes: np.ndarray,
                      pipe: dict[str, np.ndarray], hw: ArrayConfig) -> float:
    """Rules 1–6 for a layer given as arrays (``pipe[op]``: steps × iterations; weights: steps ×
    pieces, or one value per step); seconds."""
    ops = list(pipe)
    d = np.stack([stage_seconds(op, v, hw) for op, v in pipe.items()], axis=1)
    n = d.shape[0]
    lw = transfer_s("LOADW", _pieces(loadw_bytes, n), hw)
    lwm = transfer_s("LOADWM", _pieces(loadwm_bytes, n), hw)
    return _layer(lw, lwm, d, ops)[0]


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
                    start, busy = st.ready_s - st.lead_s, st.stage_busy_s.get(ins.op, 0.0)
                out.append(InstrTime(i, t + start, busy, _why(ins.op, v, hw)))
        layers.append((rec.name, t, lt.total_s))
        t += lt.total_s
    return ProgramTime(t, tuple(layers), tuple(out))
