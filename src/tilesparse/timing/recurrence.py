"""Rules 3–6 of the time model: a layer's steps played out engine by engine, as the locks allow.

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
   Except in a layer whose weight buffer is double-buffered (``double``): the m-th weighted
   step's LOADWM fills half m mod 2 once the last COMP of weighted step m − 2 has left it, while
   the cores compute, and only the step's first COMP waits for it.
   Weights move in ``hw.memtile.weight_slot_pieces`` pieces with a lock pair each (cut-through):
   LOADWM starts once LOADW's piece 0 has arrived, and copies piece i once LOADW has delivered
   it. So the layer's first input tiles move while its first weights arrive.
6. **LOADW prefetch**: the weight channel streams the layer's chunks ahead of the cores into two
   MemTile slots: chunk j starts when chunk j−1 has arrived and slot (j mod 2) was emptied by LOADWM
   j−2 (all its pieces). Layers do not overlap each other (so a layer is never faster than its
   own lower bound) — except a prefetched first weight step (rule 7's exception,
   ``prefetch_start_s``), loaded into MemTile during the layer before.

The recurrence (``_run``) runs for every candidate of the compiler's search, so it works on plain
Python floats, one function call per step, not per iteration.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tilesparse.hw import TILESPARSE, ArrayConfig, RuleProfile
from tilesparse.timing.rules import PIPE_OPS, profile_of, stage_seconds, transfer_s

__all__ = ["LayerTime", "StepTime", "layer_time", "layer_time_arrays", "pipeline_s", "prefetch_start_s"]


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


class _Engines:
    """Where the recurrence stands: each pipeline engine's last end, per ping-pong half the end of
    the last iteration on it (what released its lock), the iterations so far (their parity picks
    the half), LOADW's last end and the LOADWM ends of the two steps before."""

    __slots__ = ("load", "fm", "comp", "wfm", "wr", "h_fm", "h_comp", "h_wfm", "h_wr", "g", "w_done", "lwm_ends",
                 "serial_end", "w_steps", "w_free", "slot_free")

    def __init__(self) -> None:
        self.load = self.fm = self.comp = self.wfm = self.wr = 0.0
        self.h_fm, self.h_comp, self.h_wfm, self.h_wr = [0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]
        self.g = 0
        self.w_done, self.lwm_ends = 0.0, [0.0, 0.0]
        self.serial_end = 0.0  # end of the layer's last serialised step (profile.serial_single_steps)
        self.w_steps = 0  # weighted steps so far: a double-buffered step m loads half m mod 2
        self.w_free = [0.0, 0.0]  # per weight half, the end of the last COMP that read it
        self.slot_free = [0.0, 0.0]  # per MemTile weight slot, the end of the last LOADWM that emptied it

    def all_done(self) -> float:
        """When every iteration so far has finished."""
        return max(self.load, self.fm, self.comp, self.wfm, self.wr, self.w_done, self.lwm_ends[1])


def _weight_times(lw: np.ndarray, lwm: np.ndarray, n: int) -> tuple[list, list, list, list, list]:
    """Per step: whether it moves weights, its LOADW seconds in all and for piece 0, its LOADWM
    seconds, and the latest (arrival of piece i + LOADWM of pieces i…) over its pieces."""
    if lw.shape[1] == 0:
        lw = lwm = np.zeros((n, 1))
    cum = np.cumsum(lw, axis=1)
    tail = np.cumsum(lwm[:, ::-1], axis=1)[:, ::-1]  # Σ_{m≥i} lwm_m
    weighted = (cum[:, -1] + tail[:, 0] > 0).tolist()
    late = (cum + tail).max(axis=1).tolist()  # piece i arrives, then LOADWM copies pieces i…
    return weighted, cum[:, -1].tolist(), lw[:, 0].tolist(), tail[:, 0].tolist(), late


def _stage_rows(d: np.ndarray, ops: Sequence[str]) -> tuple[list[tuple], bool, bool]:
    """Per step, the per-iteration seconds of LOAD, LOADFM, COMP, WRITEFM and WRITE (zeros for a
    stage not in ``ops``); whether there are LOAD and WRITE stages."""
    col = {op: k for k, op in enumerate(ops)}
    zeros = [0.0] * d.shape[2]
    ks = [col.get(op, -1) for op in PIPE_OPS]
    rows = [tuple(row[k] if k >= 0 else zeros for k in ks) for row in d.tolist()]
    return rows, ks[0] >= 0, ks[4] >= 0


def _weights_in(e: _Engines, w: tuple[list, list, list, list, list], j: int, profile: RuleProfile,
                serial: bool = False, double: bool = False, pre: float | None = None) -> tuple[float, float, float]:
    """Rule 6, then rule 5 for step j: LOADW once slot j mod 2 is free, LOADWM once the cores are
    free and piece 0 is in; the cores wait for its end. Returns (LOADWM start, LOADW start, end).
    Without ``profile.loadw_prefetch`` LOADW waits for everything before; without ``cut_through``
    LOADWM waits for the whole chunk; a ``serial`` step's LOADWM waits for everything before.
    ``double``: the weight buffer's halves (rule 5's exception) — the m-th weighted step's LOADWM
    waits for the last COMP on half m mod 2 (of weighted step m − 2), not for the cores, and the
    cores do not halt: its first COMP waits for its end only. ``pre``: the step's weights were
    prefetched into the MemTile area ``wpre`` by a LOADW that started at ``pre`` (relative to the
    layer; rule 7's exception), so no weight slot is involved."""
    _, lw_all, lw_first, lwm_all, late = w
    if pre is not None:
        lw0 = pre
    else:
        lw0 = max(e.w_done, e.slot_free[j & 1], e.serial_end)
        if not profile.loadw_prefetch:
            lw0 = max(lw0, e.all_done())
    if double:
        if e.w_steps:  # every COMP on the other half is queued: its last one frees that half
            e.w_free[(e.w_steps - 1) & 1] = e.comp
        before = max(e.w_free[e.w_steps & 1], e.all_done() if serial else 0.0)
    else:
        before = e.all_done() if serial else e.comp
    e.w_steps += 1
    e.w_done = lw0 + lw_all[j]
    if profile.cut_through and not serial:
        start = max(before, lw0 + lw_first[j], e.lwm_ends[1])
        ready = max(start + lwm_all[j], lw0 + late[j])
    else:
        start = max(before, lw0 + lw_all[j], e.lwm_ends[1])
        ready = start + lwm_all[j]
    e.lwm_ends = [e.lwm_ends[1], ready]
    if pre is None:
        e.slot_free[j & 1] = ready
    e.comp = max(e.comp, ready) if double else ready  # the halt: the step's first COMP waits for its weights
    return start, lw0, ready


def _iterate(e: _Engines, stages: tuple, n_it: int, writing: bool, staged_in: bool, staged_out: bool,
             want_first: bool) -> dict[str, float] | None:
    """Rules 3–4: one step's ``n_it`` iterations, each engine in order as its locks allow
    (WRITEFM and WRITE only if ``writing``); the first iteration's stage starts if ``want_first``."""
    load, fm, comp, wfm, wr = stages
    e_load, e_fm, e_comp, e_wfm, e_wr, g = e.load, e.fm, e.comp, e.wfm, e.wr, e.g
    h_fm, h_comp, h_wfm, h_wr = e.h_fm, e.h_comp, e.h_wfm, e.h_wr
    first = None
    for i in range(n_it):
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
        if first is None and want_first:
            first = {"LOAD": e_load - load[0], "LOADFM": s_fm, "COMP": s_comp, "WRITEFM": e_wfm - wfm[0],
                     "WRITE": e_wr - wr[0]}
    e.load, e.fm, e.comp, e.wfm, e.wr, e.g = e_load, e_fm, e_comp, e_wfm, e_wr, g
    return first


def _serial(e: _Engines, stages: tuple, writing: bool) -> dict[str, float]:
    """The paper's rule for a step of one iteration: its stages one after another, after everything
    before (its weights are in: ``e.comp``); everything after waits for its end. Returns each
    stage's start."""
    t = e.all_done()
    first = {}
    for op, v in zip(PIPE_OPS, stages, strict=True):
        if op in ("WRITEFM", "WRITE") and not writing:
            continue
        first[op] = t
        t += v[0]
    e.load = e.fm = e.comp = e.wfm = e.wr = e.serial_end = t
    h = e.g & 1
    e.h_fm[h] = e.h_comp[h] = e.h_wfm[h] = e.h_wr[h] = t
    e.g += 1
    return first


def _run(lw: np.ndarray, lwm: np.ndarray, d: np.ndarray, ops: Sequence[str], iters: Sequence[int],
         writes: Sequence[bool], record: list | None = None, profile: RuleProfile = TILESPARSE,
         double: bool = False, pre: float | None = None) -> float:
    """Rules 3–6: the layer's seconds, every engine running its iterations in order as the
    program's locks allow (docs/program.md, "Locks and ordering").

    ``d[j, o, i]``: seconds of stage ``ops[o]`` in iteration i of step j (step j runs ``iters[j]``
    iterations; WRITEFM and WRITE only where ``writes[j]``, the last input-channel chunk);
    ``lw[j, p]`` / ``lwm[j, p]``: seconds of weight piece p (a step without weight bytes keeps
    its chunk: no LOADW, no LOADWM). Iteration g counts across the steps; its ping-pong half is
    g mod 2 and "the last iteration on half h" is what released that half's lock. ``double``: the
    weight buffer is double-buffered; ``pre``: step 0's weights prefetched, their LOADW started at
    ``pre`` (``_weights_in``). Appends, per step, (LOADWM start, LOADW
    start, LOADWM end, {op: first iteration's start}) to ``record``."""
    weights = _weight_times(lw, lwm, d.shape[0])
    weighted, want = weights[0], record is not None
    rows, staged_in, staged_out = _stage_rows(d, ops)
    e = _Engines()
    for j, stages in enumerate(rows):
        start = lw0 = ready = 0.0
        serial = profile.serial_single_steps and iters[j] == 1
        if weighted[j]:
            start, lw0, ready = _weights_in(e, weights, j, profile, serial, double, pre if j == 0 else None)
        if serial:
            first: dict[str, float] | None = _serial(e, stages, writes[j])
        else:
            first = _iterate(e, stages, iters[j], writes[j], staged_in, staged_out, want)
        if record is not None:
            record.append((start, lw0, ready, first or {}))
    return max(e.load, e.fm, e.comp, e.wfm, e.wr, e.lwm_ends[1])


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


def _pieces(x: np.ndarray, n_steps: int) -> np.ndarray:
    """Per-step weight values as steps × pieces (a 1-D array is one piece per step)."""
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(n_steps, -1) if x.size else np.zeros((n_steps, 1))


def layer_time(steps: Sequence[tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]], hw: ArrayConfig,
               profile: RuleProfile | None = None, double: bool = False,
               prefetch_start_s: float | None = None) -> LayerTime:
    """Rules 1–6 over a layer's steps, each ``(loadw_bytes, loadwm_bytes, {op: per-iteration
    bytes or cycles})`` (weight bytes per piece; WRITEFM present in the steps that write), under
    the rule ``profile`` (default: ``hw.rules``'s), the weight buffer ``double``-buffered or not
    (rule 5), and step 0's weights prefetched by a LOADW that started ``prefetch_start_s`` after the
    layer's start (negative: during the layer before; None: not prefetched, rule 7); returns the
    layer's seconds and every step's timing."""
    profile = profile_of(hw, profile)
    secs = [{op: stage_seconds(op, v, hw, profile) for op, v in pipe.items()} for _, _, pipe in steps]
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
    total = _run(lw, lwm, d, ops, iters, ["WRITEFM" in sc for sc in secs], rec, profile, double, prefetch_start_s)
    out = tuple(StepTime(float(lw[j].sum()), float(lwm[j].sum()), {op: float(v.sum()) for op, v in secs[j].items()},
                         {op: first[op] for op in secs[j] if op in first}, start, lw0, ready)
                for j, (start, lw0, ready, first) in enumerate(rec))
    return LayerTime(total, out)


def layer_time_arrays(loadw_bytes: np.ndarray, loadwm_bytes: np.ndarray, pipe: dict[str, np.ndarray],
                      hw: ArrayConfig, iters: Sequence[int] | None = None,
                      writes: Sequence[bool] | None = None, profile: RuleProfile | None = None,
                      double: bool = False) -> float:
    """Rules 1–6 for a layer given as arrays (``pipe[op]``: steps × iterations, zero-padded past
    ``iters[j]``; weights: steps × pieces, or one value per step); seconds. ``iters`` / ``writes``
    default to the last non-zero iteration and to the steps with WRITEFM bytes; ``profile`` to
    ``hw.rules``'s (the compiler's search thus runs under the profile the description names);
    ``double``: the weight buffer double-buffered (rule 5)."""
    profile = profile_of(hw, profile)
    ops = [op for op in PIPE_OPS if op in pipe]
    d = np.stack([stage_seconds(op, pipe[op], hw, profile) for op in ops], axis=1)
    n = d.shape[0]
    if iters is None:
        nz = (d != 0).any(axis=1)
        iters = np.where(nz.any(axis=1), d.shape[2] - np.argmax(nz[:, ::-1], axis=1), 0).tolist()
    if writes is None:
        writes = ((pipe["WRITEFM"] != 0).any(axis=1) if "WRITEFM" in pipe else np.zeros(n, bool)).tolist()
    lw = transfer_s("LOADW", _pieces(loadw_bytes, n), hw)
    lwm = transfer_s("LOADWM", _pieces(loadwm_bytes, n), hw)
    return _run(lw, lwm, d, ops, iters, writes, profile=profile, double=double)


def prefetch_start_s(prev: LayerTime | None, prev_start_s: float, prev_prefetched: bool, start_s: float) -> float:
    """Rule 7's exception: when the prefetching LOADW of the layer starting at ``start_s`` starts,
    relative to ``start_s`` (negative: during the layer before). It runs beside the layer before
    (``prev``, which started at ``prev_start_s``): once that layer has started, the weight channel
    has delivered that layer's last chunk, and that layer's own prefetched first step (if
    ``prev_prefetched``) has left the prefetch area (its LOADWM's end)."""
    begin = prev_start_s
    if prev is not None:
        ends = [st.loadw_start_s + st.loadw_s for st in prev.steps if st.loadw_s > 0]
        begin = max([begin] + [prev_start_s + e for e in ends])
        if prev_prefetched and prev.steps:
            begin = max(begin, prev_start_s + prev.steps[0].ready_s)
    return begin - start_s
