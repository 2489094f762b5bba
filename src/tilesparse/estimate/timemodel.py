"""The time model applied to a compiled ``Program`` (docs/time-model.md): per instruction its start,
busy time and why; per layer and in total the latency. The rules themselves live below the
compiler, in ``tilesparse.timing`` (the compiler's search uses the same ones).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tilesparse.hw import ArrayConfig, RuleProfile, get_profile
from tilesparse.program import Instr, Program
from tilesparse.program.zero_compress import stream_values
from tilesparse.timing import LayerTime, StepTime, bandwidth, layer_time, prefetch_start_s

__all__ = ["InstrTime", "ProgramTime", "estimate_program"]


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

    def busy_by_op(self, program: Program) -> dict[str, float]:
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


def _step_values(program: Program, idx: list[int]) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """A step's (LOADW bytes per weight piece, LOADWM bytes per piece, {op: per-iteration values})
    from its instructions ``idx``: what ``timing.layer_time`` takes."""
    lw = lwm = np.zeros(1)
    pipe: dict[str, np.ndarray] = {}
    for i in idx:
        ins = program.instrs[i]
        v = stream_values(program, ins)  # compressed transfers: their expected stream bytes
        if ins.op == "LOADW":
            lw = v
        elif ins.op == "LOADWM":
            lwm = v
        else:
            pipe[ins.op] = v
    return lw, lwm, pipe


def _double_buffered(program: Program, idx: list[int]) -> bool:
    """Whether a layer's weight buffer is double-buffered: its LOADWMs do not halt the cores
    (docs/program.md, "Locks and ordering"; the compiler decides, rule 5)."""
    return any(program.instrs[i].op == "LOADWM" and not program.instrs[i].halts for i in idx)


def _zero_frac(program: Program, ins: Instr) -> float:
    from tilesparse.program.zero_compress import zero_frac_of

    return zero_frac_of(program.layers[ins.layer], ins.op)


def _instr_times(program: Program, idx: list[int], st: StepTime, t: float) -> list[InstrTime]:
    """When each instruction ``idx`` of a step timed ``st`` starts (the layer starting at ``t``),
    how long it is busy, and why."""
    out: list[InstrTime] = []
    for i in idx:
        ins = program.instrs[i]
        if ins.op == "LOADW":
            start, busy = st.loadw_start_s, st.loadw_s
        elif ins.op == "LOADWM":
            start, busy = st.start_s, st.loadwm_s
        else:
            start, busy = st.stage_start_s.get(ins.op, st.ready_s), st.stage_busy_s.get(ins.op, 0.0)
        why = _why(ins.op, stream_values(program, ins), program.hw)
        if ins.op in program.layers[ins.layer].compressed:
            why += (f", zero-compressed from {program.iter_values(ins).sum():.0f} B "
                    f"({_zero_frac(program, ins):.0%} zeros)")
        out.append(InstrTime(i, t + start, busy, why))
    return out


def estimate_program(program: Program, profile: RuleProfile | str | None = None) -> ProgramTime:
    """Rules 1–6 applied to a compiled ``Program`` under the rule ``profile`` (default: its
    array's ``hw.rules``, ``tilesparse`` unless the description says otherwise): per-instruction
    start and busy time with its explanation, per-layer and total
    latency (layers run one after another; the profile's fixed ``invocation_s`` added to the
    total)."""
    prof = get_profile(profile if profile is not None else program.hw.rules)
    by_step: dict[tuple[int, int], list[int]] = {}
    for i, ins in enumerate(program.instrs):
        by_step.setdefault((ins.layer, ins.step), []).append(i)
    layers, out, t = [], [], 0.0
    prev: tuple[LayerTime | None, float, bool] = (None, 0.0, False)
    for li, rec in enumerate(program.layers):
        keys = sorted(k for k in by_step if k[0] == li)
        idx = [i for key in keys for i in by_step[key]]
        # a mechanism the profile does not allow is played by its rules (``paper`` timing a program
        # compiled under ``tilesparse``: every LOADWM halts, a prefetched LOADW runs in its own layer)
        pre = (prefetch_start_s(*prev, t) if prof.allows("weight_prefetch")
               and any(program.instrs[i].prefetch for i in idx) else None)
        lt = layer_time([_step_values(program, by_step[key]) for key in keys], program.hw, prof,
                        double=prof.allows("weight_double_buffer") and _double_buffered(program, idx),
                        prefetch_start_s=pre)
        for key, st in zip(keys, lt.steps, strict=True):
            out += _instr_times(program, by_step[key], st, t)
        layers.append((rec.name, t, lt.total_s))
        prev = (lt, t, pre is not None)
        t += lt.total_s
    return ProgramTime(t + prof.measured.invocation_s, tuple(layers), tuple(out))
