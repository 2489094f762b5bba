"""Clocked replay of a ``Program``: a discrete-event simulation of its engines (docs/replay.md).

Written from the program's own instructions and locks (docs/program.md, "Locks and ordering") and
from the rule text of docs/time-model.md, **without** the time model: this module imports nothing
from ``tilesparse.timing`` or ``tilesparse.estimate`` (tests/test_import_boundaries.py), so a
latency both give is computed twice, two ways.

* **Engines.** Every channel kind and the cores are one engine that runs its instruction
  iterations in program order, one at a time: ``LOADW`` (the DDR→MemTile weight channels),
  ``LOAD`` (DDR→MemTile activations), ``LOADFM`` (MemTile→core, column channels), ``LOADWM``
  (MemTile→core weights, row channels), ``COMP`` (the cores, in lockstep), ``WRITEFM`` (core→MemTile)
  and ``WRITE`` (MemTile→DDR). The program states per iteration the bytes on the busiest channel
  (the channel that decides when the transfer ends) and the cycles of the slowest core, so each
  engine stands for its busiest member.
* **Durations.** bytes / that channel's bandwidth (``hw.links``), cycles / ``hw.clock_hz``.
* **Locks.** ``X.empty`` starts with one token, ``X.full`` with none; an iteration takes one token
  of every lock it acquires when it starts and gives one to every lock it releases when it ends
  (``[i%2]``: the ping-pong half, i counted across the layer's steps; ``[i]``: the weight piece).
* **Halting.** An instruction that halts the cores (``Instr.halts``, LOADWM) takes the cores from its
  first piece's start to its last piece's end, in program order with the COMPs: it starts after
  every earlier COMP, and the later COMPs start after it. A LOADWM into a half of a
  double-buffered weight buffer does not halt; its per-step locks (``core.w0/1``, taken by the
  first piece or tile, given by the last) order it with the COMPs.
* **Prefetch.** A LOADW into the prefetch area ``wpre`` (``Instr.prefetch``) waits only for the
  layers before the one before its own: it runs beside that layer, as its locks and the weight
  channel allow (docs/time-model.md, rule 7).
* **Clock.** Events (iteration ends) are taken from a heap in time order; at each event time every
  engine whose next iteration is allowed starts it. Nothing is decided by a formula: a latency is
  the time of the last event.

The rules the time model's profiles may change are explicit ``ReplayRules`` fields, today's
behaviour the default: one-iteration steps serialised (``serial_single_steps``), LOADW prefetch
(``loadw_prefetch``), weight cut-through (``cut_through``), when a weight slot counts as emptied
(``slot_release``) and layers one after another (``layer_barrier``; without it, whether a layer still
waits for the layers whose data it reads or overwrites, ``layer_data_deps``).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from tilesparse.hw import PROFILES as RULE_PROFILES
from tilesparse.hw import ArrayConfig, RuleProfile
from tilesparse.program import Instr, Program
from tilesparse.program.zero_compress import stream_values
from tilesparse.sim.memory import SimulationError

__all__ = ["ENGINES", "PROFILES", "LayerSpan", "ReplayError", "ReplayResult", "ReplayRules", "engine_seconds", "replay"]

# engine -> what it stands for (one engine per channel kind, the cores one engine in lockstep)
ENGINES = {
    "LOADW": "DDR→MemTile weight channels",
    "LOAD": "DDR→MemTile activation channels",
    "LOADFM": "MemTile→core activation channels (one per column)",
    "LOADWM": "MemTile→core weight channels (one per row)",
    "COMP": "the cores (lockstep)",
    "WRITEFM": "core→MemTile channels (one per column)",
    "WRITE": "MemTile→DDR channels",
}
PIPE = ("LOAD", "LOADFM", "COMP", "WRITEFM", "WRITE")
CORES = "COMP"  # the engine LOADWM's halt holds


class ReplayError(SimulationError):
    """The program cannot be replayed: a deadlock (a lock no instruction releases) or a malformed
    stream (names the instruction)."""


@dataclass(frozen=True)
class ReplayRules:
    """The timing rules the replay applies; the defaults are docs/time-model.md's (tilesparse's)."""

    serial_single_steps: bool = False  # True: a step of one iteration runs its instructions in sequence,
    # after everything before it and before anything after it (the paper's rule; ours: rule 3's deviation)
    loadw_prefetch: bool = True  # False: LOADW of a step waits until every earlier step has finished
    cut_through: bool = True  # False: LOADWM's first piece waits for LOADW's last (the whole chunk)
    slot_release: str = "slot"  # "slot": LOADW j waits for LOADWM j−2's last piece (rule 6);
    # "piece": piece i waits only for LOADWM j−2's piece i (what the per-piece locks allow)
    layer_barrier: bool = True  # rule 7; False: a layer waits only for the layers whose buffers it
    # reads (its LOAD / LOADFM) or overwrites (its WRITEFM / WRITE); locks and cores order the rest
    layer_data_deps: bool = True  # False (with layer_barrier False): not even those — no schedule, the
    # ceiling of any cross-layer overlap (tile by tile through MemTile) of the program's per-layer plans
    weight_double_buffer: bool = True  # False: every LOADWM halts the cores (rule 5), whatever halves
    # the program names (a profile without the mechanism, e.g. ``paper``, playing a tilesparse program)
    weight_prefetch: bool = True  # False: a prefetching LOADW runs in its own layer, after the one before
    kernel_efficiency: float = 1.0  # a COMP iteration takes its cycles / this (the measured profile)
    invocation_s: float = 0.0  # a fixed cost per call, added once to the latency (the measured profile)

    def __post_init__(self) -> None:
        if self.slot_release not in ("slot", "piece"):
            raise ValueError(f"ReplayRules.slot_release {self.slot_release!r}: expected 'slot' or 'piece'")

    @classmethod
    def from_profile(cls, profile: RuleProfile) -> ReplayRules:
        """The replay's rules under a time-model profile (``tilesparse.hw.profiles``): the same
        value the time model reads, so the two cannot disagree on which rules apply."""
        return cls(serial_single_steps=profile.serial_single_steps, loadw_prefetch=profile.loadw_prefetch,
                   cut_through=profile.cut_through, layer_barrier=profile.layer_barrier,
                   weight_double_buffer=profile.allows("weight_double_buffer"),
                   weight_prefetch=profile.allows("weight_prefetch"),
                   kernel_efficiency=profile.measured.kernel_efficiency,
                   invocation_s=profile.measured.invocation_s)


# The time model's profiles (``tilesparse.hw.profiles``) as far as they concern the replay; the
# paper's other rules (adds and pools as layers of their own, no kernel scratch as a buffer) change
# the compiled program, not how it is played out. ``measured`` figures change durations, not rules.
PROFILES = {name: ReplayRules.from_profile(p) for name, p in RULE_PROFILES.items()}


@dataclass(frozen=True)
class LayerSpan:
    name: str
    start_s: float  # its first iteration's start
    end_s: float  # its last iteration's end

    @property
    def seconds(self) -> float:
        return self.end_s - self.start_s


@dataclass(frozen=True)
class ReplayResult:
    """Per layer its span, in total the latency; per engine its busy seconds; the seconds the cores
    stood halted by LOADWM; per instruction its first start and last end."""

    total_s: float
    layers: tuple[LayerSpan, ...]
    busy_s: dict[str, float]
    halted_s: float
    instr_start_s: np.ndarray
    instr_end_s: np.ndarray
    rules: ReplayRules = field(default_factory=ReplayRules)


def engine_seconds(op: str, values: np.ndarray, hw: ArrayConfig, kernel_efficiency: float = 1.0) -> np.ndarray:
    """Seconds of each iteration: the slowest core's cycles at the clock (COMP; at the kernel
    efficiency), or the busiest channel's bytes at that channel's bandwidth (docs/time-model.md,
    rule 1; ``hw.links``)."""
    v = np.asarray(values, dtype=np.float64)
    if op == "COMP":
        s = v / hw.clock_hz
        return s if kernel_efficiency == 1.0 else s / kernel_efficiency
    links = hw.links
    bw = {"LOAD": links.ddr_to_memtile_bytes_per_s, "LOADW": links.ddr_to_memtile_bytes_per_s,
          "WRITE": links.memtile_to_ddr_bytes_per_s}.get(op, links.memtile_to_core_bytes_per_s)
    return v / bw


@dataclass(eq=False, slots=True)
class _Task:
    """One iteration of one instruction."""

    idx: int  # instruction
    it: int
    engine: str
    dur: float
    acquire: tuple[str, ...]
    release: tuple[str, ...]
    after: int  # every instruction with a lower index must have finished
    layers: tuple[int, ...] = ()  # these layers must have finished (no layer barrier)
    takes_cores: bool = False  # first piece of a halting instruction
    frees_cores: bool = False  # its last piece
    start: float = 0.0


def _locks(ins: Instr, it: int, half: int, which: str, gang: bool) -> tuple[str, ...]:
    """Concrete lock names of iteration ``it``; ``gang``: the first piece takes every piece's lock
    and the later pieces none (a slot emptied, or a chunk delivered, as a whole)."""
    locks = getattr(ins, which)
    if not gang:
        return tuple(lk.resolve(it, half) for lk in locks if lk.applies(it, ins.iters, which))
    if it:
        return ()
    return tuple(lk.resolve(p, half) for lk in locks for p in (range(ins.iters) if lk.per == "piece" else (0,)))


class _Plan:
    """The program cut into tasks, per engine in program order, with the fixed orders the rules add
    (layer barrier, serial steps, no prefetch, halting)."""

    def __init__(self, program: Program, rules: ReplayRules):
        self.program, self.rules = program, rules
        self.queues: dict[str, list[_Task]] = {e: [] for e in ENGINES}
        self.layer_first: list[int] = []
        self.layer_of: list[int] = [ins.layer for ins in program.instrs]
        self._check_order()
        self._build()

    def _check_order(self) -> None:
        prog, last = self.program, -1
        for i, ins in enumerate(prog.instrs):
            if ins.layer >= len(prog.layers) or ins.layer < last:
                raise ReplayError(f"instruction #{i} ({ins.op}) names layer {ins.layer}: instructions must come "
                                  f"layer by layer, in the order of the {len(prog.layers)} layer records")
            while len(self.layer_first) <= ins.layer:
                self.layer_first.append(i)
            last = ins.layer
        while len(self.layer_first) < len(prog.layers):
            self.layer_first.append(len(prog.instrs))

    def _steps(self) -> list[list[int]]:
        """Consecutive instructions of the same (layer, step)."""
        out: list[list[int]] = []
        key = None
        for i, ins in enumerate(self.program.instrs):
            if (ins.layer, ins.step) != key:
                out.append([])
                key = (ins.layer, ins.step)
            out[-1].append(i)
        return out

    def _build(self) -> None:
        prog, rules = self.program, self.rules
        done, layer, serial_end = 0, -1, 0  # iterations of the layer's earlier steps; end of the last serial step
        for step in self._steps():
            li = prog.instrs[step[0]].layer
            if li != layer:
                layer, done = li, 0
                serial_end = self.layer_first[li] if rules.layer_barrier else 0
            iters = max((prog.instrs[i].iters for i in step if prog.instrs[i].op in PIPE), default=0)
            serial = rules.serial_single_steps and iters == 1
            for i in step:
                self._add(i, done, self._after(i, step[0], serial, serial_end))
            done += iters
            if serial:
                serial_end = step[-1] + 1

    def _after(self, i: int, step_first: int, serial: bool, serial_end: int) -> int:
        """The instruction index below which everything must have finished before ``i`` starts (a
        prefetching LOADW: everything before the layer before, which it runs beside)."""
        ins = self.program.instrs[i]
        op = ins.op
        if ins.prefetch and self.rules.weight_prefetch and self.rules.layer_barrier and ins.layer > 0:
            return self.layer_first[ins.layer - 1]
        if op == "LOADW":
            return serial_end if self.rules.loadw_prefetch else max(serial_end, step_first)
        return i if serial else serial_end

    def _data_layers(self, li: int, op: str) -> tuple[int, ...]:
        """Without the layer barrier: the earlier layers whose output ``op`` of layer ``li`` reads
        (LOAD, LOADFM) or whose buffers it overwrites (WRITEFM, WRITE)."""
        rules = self.rules
        if rules.layer_barrier or not rules.layer_data_deps or op not in ("LOAD", "LOADFM", "WRITEFM", "WRITE"):
            return ()
        layers = self.program.layers
        rec = layers[li]
        if op in ("LOAD", "LOADFM"):
            reads = {t.buffer for t in rec.inputs}
            return tuple(m for m in range(li) if layers[m].output.buffer in reads)
        out = rec.output.buffer
        return tuple(m for m in range(li) if layers[m].output.buffer == out
                     or any(t.buffer == out for t in layers[m].inputs))

    def _add(self, i: int, done: int, after: int) -> None:
        prog, rules = self.program, self.rules
        ins = prog.instrs[i]
        durs = engine_seconds(ins.op, stream_values(prog, ins), prog.hw, rules.kernel_efficiency).tolist()
        gang_acq = ((ins.op == "LOADW" and rules.slot_release == "slot")
                    or (ins.op == "LOADWM" and not rules.cut_through))
        data = self._data_layers(ins.layer, ins.op)
        halts = _halts(ins, rules)
        for it in range(ins.iters):
            half = (done + it) % 2 if ins.op in PIPE else 0
            t = _Task(i, it, ins.op, durs[it], _locks(ins, it, half, "acquire", gang_acq),
                      _locks(ins, it, half, "release", False), after, data,
                      takes_cores=halts and it == 0, frees_cores=halts and it == ins.iters - 1)
            self.queues[ins.op].append(t)
            if t.takes_cores:
                self.queues[CORES].append(t)  # the halt, in program order with the COMPs


class _Clock:
    """The discrete-event run: engine heads and busy flags, lock tokens, finished instructions."""

    def __init__(self, plan: _Plan):
        self.plan = plan
        prog = plan.program
        n = len(prog.instrs)
        self.head = dict.fromkeys(ENGINES, 0)
        self.busy = dict.fromkeys(ENGINES, False)
        self.tokens: dict[str, int] = {}
        self.left = [ins.iters for ins in prog.instrs]  # iterations not yet finished
        self.layer_left = [0] * len(prog.layers)
        for ins in prog.instrs:
            self.layer_left[ins.layer] += ins.iters
        self.prefix = 0  # every instruction below this index has finished
        self.events: list[tuple[float, int, _Task]] = []
        self.seq = 0
        self.first = np.full(n, np.nan)
        self.last = np.full(n, np.nan)
        self.busy_s = dict.fromkeys(ENGINES, 0.0)
        self._advance_prefix()

    def _count(self, lock: str) -> int:
        return self.tokens.get(lock, 1 if lock.endswith(".empty") else 0)

    def _ready(self, t: _Task) -> bool:
        if t.after > self.prefix or any(self.layer_left[m] for m in t.layers):
            return False
        if t.takes_cores:
            cq = self.plan.queues[CORES]
            if self.busy[CORES] or self.head[CORES] >= len(cq) or cq[self.head[CORES]] is not t:
                return False
        need: dict[str, int] = {}
        for lk in t.acquire:
            need[lk] = need.get(lk, 0) + 1
        return all(self._count(lk) >= k for lk, k in need.items())

    def _start(self, t: _Task, now: float) -> None:
        for lk in t.acquire:
            self.tokens[lk] = self._count(lk) - 1
        self.busy[t.engine] = True
        self.head[t.engine] += 1
        if t.takes_cores:
            self.busy[CORES] = True
            self.head[CORES] += 1
        t.start = now
        if np.isnan(self.first[t.idx]):
            self.first[t.idx] = now
        self.busy_s[t.engine] += t.dur
        heapq.heappush(self.events, (now + t.dur, self.seq, t))
        self.seq += 1

    def _finish(self, t: _Task, now: float) -> None:
        self.busy[t.engine] = False
        if t.frees_cores:
            self.busy[CORES] = False
        for lk in t.release:
            self.tokens[lk] = self._count(lk) + 1
        self.left[t.idx] -= 1
        self.layer_left[self.plan.layer_of[t.idx]] -= 1
        self.last[t.idx] = now
        self._advance_prefix()

    def _advance_prefix(self) -> None:
        while self.prefix < len(self.left) and self.left[self.prefix] == 0:
            self.prefix += 1

    def _start_ready(self, now: float) -> None:
        """Start every iteration allowed at ``now`` (an engine whose head is a halt's marker waits
        for the halting instruction to start on its own channel)."""
        progress = True
        while progress:
            progress = False
            for e, q in self.plan.queues.items():
                if self.busy[e] or self.head[e] >= len(q):
                    continue
                t = q[self.head[e]]
                if t.engine == e and self._ready(t):
                    self._start(t, now)
                    progress = True

    def run(self) -> float:
        now = 0.0
        self._start_ready(now)
        while self.events:
            now = self.events[0][0]
            while self.events and self.events[0][0] == now:
                self._finish(heapq.heappop(self.events)[2], now)
            self._start_ready(now)
        if self.prefix < len(self.left):
            raise ReplayError(self._deadlock())
        return now

    def _deadlock(self) -> str:
        prog = self.plan.program
        stuck = [q[self.head[e]] for e, q in self.plan.queues.items() if self.head[e] < len(q)]
        t = stuck[0]
        ins = prog.instrs[t.idx]
        missing = [lk for lk in t.acquire if self._count(lk) < 1] or ["an earlier instruction or the cores"]
        return (f"deadlock: {ins.op} #{t.idx} (layer {prog.layers[ins.layer].name!r} step {ins.step} iteration "
                f"{t.it}) waits for {missing[0]}, which no instruction will release")


def replay(program: Program, rules: ReplayRules | RuleProfile | str | None = None) -> ReplayResult:
    """Replay ``program`` on its array's clock: per layer its start and end, the latency (plus the
    rules' fixed ``invocation_s``), and every engine's busy seconds. ``rules``: the replay's rules,
    or a time-model profile (value or name) to take them from (default: the profile named by the
    program's ``hw.rules``). ``ReplayError`` on a deadlock."""
    if rules is None:
        rules = program.hw.rules
    if isinstance(rules, str):
        if rules not in PROFILES:
            raise ValueError(f"unknown rule profile {rules!r}: expected one of {', '.join(PROFILES)}")
        rules = PROFILES[rules]
    elif isinstance(rules, RuleProfile):
        rules = ReplayRules.from_profile(rules)
    plan = _Plan(program, rules)
    clock = _Clock(plan)
    total = clock.run() + rules.invocation_s
    spans = _layer_spans(program, plan, clock.first, clock.last)
    halted = sum(float(clock.last[i] - clock.first[i]) for i, ins in enumerate(program.instrs)
                 if _halts(ins, rules) and ins.iters)
    return ReplayResult(total, spans, clock.busy_s, halted, clock.first, clock.last, rules)


def _halts(ins: Instr, rules: ReplayRules) -> bool:
    """Whether ``ins`` halts the cores under ``rules``: as the program says, but every LOADWM when
    the rules do not double-buffer the weight buffer."""
    return ins.halts or (ins.op == "LOADWM" and not rules.weight_double_buffer)


def _layer_spans(program: Program, plan: _Plan, first: np.ndarray, last: np.ndarray) -> tuple[LayerSpan, ...]:
    """Each layer from its first start to its last end (a layer without iterations: an empty span
    where the previous one ended); a prefetching LOADW, which runs during the layer before, does not
    start its layer."""
    out: list[LayerSpan] = []
    bounds: Sequence[int] = [*plan.layer_first, len(program.instrs)]
    prev = 0.0
    for li, rec in enumerate(program.layers):
        a, b = bounds[li], bounds[li + 1]
        ran = ~np.isnan(first[a:b]) & ~np.array([ins.prefetch and plan.rules.weight_prefetch
                                                  for ins in program.instrs[a:b]], dtype=bool)
        if not ran.any():
            out.append(LayerSpan(rec.name, prev, prev))
            continue
        s, e = float(first[a:b][ran].min()), float(last[a:b][ran].max())
        out.append(LayerSpan(rec.name, s, e))
        prev = e
    return tuple(out)
