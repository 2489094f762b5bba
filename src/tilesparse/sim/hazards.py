"""Ordering check: do the program's locks make every read wait for its producer and every overwrite
wait for the last reader? (docs/program.md, "Locks and ordering").

Each op is one engine (the LOADW channel, LOADWM, LOAD, LOADFM, the cores' COMP, WRITEFM, WRITE)
that runs its iterations in program order (LOADW and LOADWM: one per weight piece, each piece
of a slot its own buffer). A lock ``X.empty`` starts with one token, ``X.full`` with none; an
iteration takes one token of every lock it acquires and, when done, gives one to every lock it
releases (``[i%2]`` in a lock name: the parity of the iteration counted across the layer's
steps; ``[i]``: the iteration, i.e. the weight piece). Two fixed
rules add order: an instruction that halts the cores (``Instr.halts``: LOADWM) starts after every
earlier COMP and the step's COMPs start after its last piece (a LOADWM into a half of a
double-buffered weight buffer does not halt: its per-step locks ``core.w0/1`` alone order it
with the COMPs, and each half is its own buffer, ``core.w`` at its offset); the DMA stages (LOAD, LOADFM,
WRITEFM, WRITE) are not halted and follow their locks only; layers run one after another. The
check runs the engines as far as the locks allow, tracking happens-before with vector clocks,
then walks the accesses in the sequential reference order (per step: LOADW, LOADWM, then LOAD i,
LOADFM i, COMP i, WRITEFM i, WRITE i for each iteration i) and requires

* every read of a buffer to happen after the write it needs (a read before its producer completed),
* every write to happen after the reads of the data it replaces (an overwrite of a buffer still
  to be read) and after the previous write.

Anything else, or a lock that never gets a token (deadlock), raises ``HazardError`` naming both
instructions. A prefetching LOADW (``Instr.prefetch``) writes the MemTile area ``wpre`` during the
layer before its own: the area must be free MemTile space in both layers
(``dma.prefetch_space_error``: above their live activations, below their staging), else
``HazardError`` names the layer and the buffer it would overwrite; and where the area overlaps the
layer before's own prefetch area, the LOADW must take the ``wpre`` empty locks that layer's LOADWM
gives back (``_check_prefetch_order``: the one cross-layer order the per-layer check cannot see).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from tilesparse.sim.dma import prefetch_space_error
from tilesparse.sim.layer import LayerView
from tilesparse.sim.memory import SimulationError

__all__ = ["HazardError", "check_ordering"]

AGENTS = ("LOADW", "LOADWM", "LOAD", "LOADFM", "COMP", "WRITEFM", "WRITE")
PIPE = ("LOAD", "LOADFM", "COMP", "WRITEFM", "WRITE")
COMP = AGENTS.index("COMP")


class HazardError(SimulationError):
    """Two instructions are not ordered by the locks although one needs the other's data."""


@dataclass
class Event:
    agent: int
    seq: int  # 1-based position in its engine's order
    idx: int  # instruction index
    it: int
    acquire: list[str]
    release: list[str]
    after: list[tuple[int, int]] = field(default_factory=list)  # fixed-rule predecessors (agent, seq)
    staged: tuple[bool, bool] = (False, False)  # the step has a LOAD / a WRITE
    vc: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # set when it fires
    half: int = 0  # ping-pong half: the iteration counted across the layer's steps, mod 2
    ring: list[tuple] | None = None  # sliding layer: the core.in ring slots LOADFM writes / COMP reads


def _locks(ins, it: int, half: int, which: str) -> list[str]:
    """The concrete locks instruction ``ins`` takes (``which == "acquire"``) or gives in iteration
    ``it`` on ping-pong half ``half`` (``Lock.resolve``; a per-step lock at the first / last only)."""
    return [lk.resolve(it, half) for lk in getattr(ins, which) if lk.applies(it, ins.iters, which)]


def _name(program, ev: Event) -> str:
    ins = program.instrs[ev.idx]
    return (f"{ins.op} #{ev.idx} (layer {program.layers[ins.layer].name!r} step {ins.step}"
            + (f" iteration {ev.it})" if ins.iters > 1 or ins.op in PIPE else ")"))


def _build(program, idxs: list[int]) -> tuple[list[list[Event]], list[Event]]:
    """Engine queues and the events in sequential reference order, for one layer."""
    queues: list[list[Event]] = [[] for _ in AGENTS]
    order: list[Event] = []
    steps: dict[int, list[int]] = {}
    done = 0  # pipeline iterations of the earlier steps: ``[i%2]`` counts across the layer's steps
    for i in idxs:
        steps.setdefault(program.instrs[i].step, []).append(i)
    li = program.instrs[idxs[0]].layer
    ring = _Rings(program, li) if program.layers[li].loops.slide else None
    for step in steps.values():
        ops = {program.instrs[i].op for i in step}
        staged = ("LOAD" in ops, "WRITE" in ops)
        lwm = _weight_events(program, queues, order, step, staged)
        done += _pipe_events(program, queues, order, step, staged, lwm, ring, done)
    return queues, order


def _weight_events(program, queues, order: list[Event], step: list[int], staged) -> Event | None:
    """LOADW / LOADWM of a step, one event per weight piece; returns the last piece of the
    instruction that halts the cores (the step's COMPs wait for it)."""
    pipe_seen = [len(q) for q in queues]
    lwm = None
    for i in step:
        ins = program.instrs[i]
        if ins.op not in AGENTS:
            raise HazardError(f"instruction #{i}: unknown op {ins.op!r}")
        if ins.op not in ("LOADW", "LOADWM"):
            continue
        for it in range(ins.iters):
            ev = _event(program, queues, i, it, staged)
            if ins.halts and it == 0 and pipe_seen[COMP]:  # the cores finish, then halt
                ev.after = [(COMP, pipe_seen[COMP])]
            if ins.halts:
                lwm = ev
            order.append(ev)
    return lwm


def _pipe_events(program, queues, order: list[Event], step: list[int], staged, lwm: Event | None, ring,
                 done: int) -> int:
    """The step's pipeline events, iteration-major; returns its iteration count."""
    pipe = sorted((i for i in step if program.instrs[i].op in PIPE), key=lambda i: PIPE.index(program.instrs[i].op))
    iters = max((program.instrs[i].iters for i in pipe), default=0)
    for it in range(iters):
        slots = ring.advance(program.instrs[pipe[0]], it) if ring is not None else None
        for i in pipe:
            if it >= program.instrs[i].iters:
                continue
            ev = _event(program, queues, i, it, staged, (done + it) % 2)
            if lwm is not None and ev.agent == COMP:  # DMA stages follow their locks only
                ev.after = [(lwm.agent, lwm.seq)]
            if slots is not None and program.instrs[i].op in ("LOADFM", "COMP"):
                ev.ring = slots[program.instrs[i].op == "COMP"]
            order.append(ev)
    return iters


class _Rings:
    """The input rings of a sliding layer's cores (docs/program.md, "Sliding windows"): per
    iteration, the ring slots LOADFM writes and COMP reads. Cores with the same region size and
    oc group fill their rings alike, so one of each stands for the others."""

    def __init__(self, program, li: int):
        self.v = LayerView(li, program.layers[li])
        reps: dict[tuple, int] = {}
        for core, cw in enumerate(self.v.cores):
            if not cw.empty:
                reps.setdefault((cw.h1 - cw.h0, cw.w1 - cw.w0, cw.oc_group), core)
        self.reps = sorted(reps.items())
        self.ptr = {key: 0 for key, _ in self.reps}

    def advance(self, ins, it: int) -> tuple[list[tuple], list[tuple]]:
        v, n_ring = self.v, self.v.ring_cols
        written, read = [], []
        for key, core in self.reps:
            tile = v.tile(core, ins.s, it)
            if tile is None or v.chunk(core, ins.k, ins.q) is None:
                continue
            span, n = len(v.window(tile).cols), v.moved_cols(core, ins.s, it, tile)
            p = self.ptr[key]
            name = f"core.in ring ({key[0]}x{key[1]} region, oc group {key[2]}) slot"
            written += [(name, (p + j) % n_ring) for j in range(n)]
            self.ptr[key] = p = p + n
            read += [(name, (p - span + j) % n_ring) for j in range(span)]
        return written, read


def _event(program, queues, i: int, it: int, staged: tuple[bool, bool], half: int = 0) -> Event:
    ins = program.instrs[i]
    a = AGENTS.index(ins.op)
    ev = Event(a, len(queues[a]) + 1, i, it, _locks(ins, it, half, "acquire"), _locks(ins, it, half, "release"),
               staged=staged, half=half)
    queues[a].append(ev)
    return ev


class _Tokens(dict):
    """Lock -> queue of the vector clocks of its releases; ``X.empty`` starts with one token."""

    def pool(self, lock: str) -> deque:
        if lock not in self:
            self[lock] = deque([np.zeros(len(AGENTS), np.int64)] if lock.endswith(".empty") else [])
        return self[lock]

    def ready(self, ev: Event, head: list[int]) -> bool:
        need: dict[str, int] = {}
        for lk in ev.acquire:
            need[lk] = need.get(lk, 0) + 1
        return all(head[b] >= s for b, s in ev.after) and all(len(self.pool(k)) >= n for k, n in need.items())

    def fire(self, ev: Event, a: int, queues: list[list[Event]], clock: list[np.ndarray]) -> None:
        """Take the event's tokens, give it its vector clock and release its locks."""
        vc = clock[a].copy()
        for b, s in ev.after:
            vc = np.maximum(vc, queues[b][s - 1].vc)
        for lk in ev.acquire:
            vc = np.maximum(vc, self.pool(lk).popleft())
        vc[a] = ev.seq
        ev.vc, clock[a] = vc, vc
        for lk in ev.release:
            self.pool(lk).append(vc)


def _run(program, queues: list[list[Event]]) -> None:
    """Fire events as the locks allow; give each its vector clock. Deadlock → HazardError."""
    tokens = _Tokens()
    head = [0] * len(AGENTS)
    clock = [np.zeros(len(AGENTS), np.int64) for _ in AGENTS]
    progress = True
    while progress:
        progress = False
        for a, q in enumerate(queues):
            while head[a] < len(q) and tokens.ready(q[head[a]], head):
                tokens.fire(q[head[a]], a, queues, clock)
                head[a] += 1
                progress = True
    stuck = [q[head[a]] for a, q in enumerate(queues) if head[a] < len(q)]
    if stuck:
        ev = stuck[0]
        missing = [k for k in ev.acquire if not tokens.get(k)] or ["(fixed order: LOADWM / drained pipeline)"]
        others = ", ".join(_name(program, e) for e in stuck[1:3]) or "nothing"
        raise HazardError(f"deadlock: {_name(program, ev)} waits for {missing[0]}, which no instruction "
                          f"will release; also blocked: {others}")


def _accesses(program, ev: Event) -> list[tuple[tuple, str]]:
    ins = program.instrs[ev.idx]
    h = ev.half
    last_q = ins.q == program.layers[ins.layer].loops.n_q - 1
    op = ins.op
    if op == "LOADW":  # weight slots: one buffer per piece
        return [(("+".join(map(str, ins.dst)), ev.it), "W")]
    if op == "LOADWM":  # core.w, or the half of a double-buffered one at that offset
        return [(("+".join(map(str, ins.src)), ev.it), "R"), (("core.w", _w_offset(ins.dst)), "W")]
    if op == "LOAD":
        return [(("stage_in", h), "W")]
    res = [(("core.res", h), "W" if op == "LOADFM" else "R")] if last_q and program.layers[ins.layer].fused_add else []
    core_in = [("core.in", h)] if ev.ring is None else ev.ring
    if op == "LOADFM":
        return ([(("stage_in", h), "R")] if ev.staged[0] else []) + [(b, "W") for b in core_in] + res
    if op == "COMP":
        return ([(b, "R") for b in core_in] + [(("core.w", _w_offset(ins.src)), "R")] + res
                + ([(("core.out", h), "W")] if last_q else []))
    if op == "WRITEFM":
        return [(("core.out", h), "R")] + ([(("stage_out", h), "W")] if ev.staged[1] else [])
    return [(("stage_out", h), "R")]


def _w_offset(ops) -> int:
    """The offset of an instruction's ``core.w`` operand (a half of a double-buffered buffer)."""
    return next((o.addr for o in ops if o.memory == "core" and o.buffer == "w"), 0)


def _hb(a: Event, b: Event) -> bool:
    return a is b or bool(b.vc[a.agent] >= a.seq)


def _check_data(program, order: list[Event]) -> None:
    last_w: dict[tuple, Event] = {}
    readers: dict[tuple, list[Event]] = {}
    for ev in order:
        for buf, mode in _accesses(program, ev):
            name = "".join(str(x) if not isinstance(x, int) else f"[{x}]" for x in buf)
            w = last_w.get(buf)
            if mode == "R":
                if w is not None and not _hb(w, ev):
                    raise HazardError(f"{_name(program, ev)} reads {name} before {_name(program, w)}, "
                                      f"its producer, has completed (no lock orders them)")
                readers.setdefault(buf, []).append(ev)
                continue
            for r in readers.get(buf, []):
                if not _hb(r, ev):
                    raise HazardError(f"{_name(program, ev)} overwrites {name} still to be read by "
                                      f"{_name(program, r)} (no lock orders them)")
            if w is not None and not _hb(w, ev):
                raise HazardError(f"{_name(program, ev)} overwrites {name} before {_name(program, w)} "
                                  f"finished writing it")
            last_w[buf], readers[buf] = ev, []


def _check_prefetch_order(program) -> None:
    """A prefetching LOADW of layer li writes ``wpre`` during layer li−1: where layer li−1's own
    prefetched weights sit in overlapping bytes, its locks must wait for layer li−1's LOADWM to have
    read them (it acquires every ``wpre[i].empty`` that LOADWM releases)."""
    pre = {ins.layer: (i, ins) for i, ins in enumerate(program.instrs) if ins.prefetch}
    for li, (i, ins) in sorted(pre.items()):
        if li - 1 not in pre:
            continue
        j, prev = pre[li - 1]
        reader = next((k for k, x in enumerate(program.instrs) if x.layer == li - 1 and x.op == "LOADWM"
                       and x.src == prev.dst), None)
        if reader is None:
            continue
        a0, b0 = prev.dst[0].addr, prev.dst[0].addr + int(np.ceil(program.iter_values(prev)).sum())
        a1, b1 = ins.dst[0].addr, ins.dst[0].addr + int(np.ceil(program.iter_values(ins)).sum())
        empties = {lk for lk in ins.acquire if lk.name == "wpre" and lk.state == "empty"}
        freed = {lk for lk in program.instrs[reader].release if lk.name == "wpre" and lk.state == "empty"}
        if a1 < b0 and a0 < b1 and not (empties & freed):
            where = f"LOADW #{i} (layer {program.layers[li].name!r})"
            raise HazardError(f"{where} overwrites memtile.wpre still to be read by LOADWM #{reader} (layer "
                              f"{program.layers[li - 1].name!r}) (no lock orders them)")


def check_ordering(program) -> None:
    """Raise ``HazardError`` on the first hazard or deadlock, with the program's own locks."""
    _check_prefetch_order(program)
    by_layer: dict[int, list[int]] = {}
    for i, ins in enumerate(program.instrs):
        by_layer.setdefault(ins.layer, []).append(i)
    for li in sorted(by_layer):
        err = prefetch_space_error(program, li)  # wpre is written during layer li−1: free space then
        if err:
            raise HazardError(err)
        queues, order = _build(program, by_layer[li])
        _run(program, queues)
        _check_data(program, order)
