"""Instructions, their operands and their locks (docs/program.md, "Instructions", "Locks").

An ``Operand`` names one memory an instruction touches; an ``Instr`` lists them (``src``/``dst``
tuples). A ``Lock`` names one half or piece of a buffer and the state an instruction waits for
(``acquire``) or hands over (``release``). ``str()`` of each gives the notation of the listing
(``ddr@1024``, ``memtile:x@0``, ``core.in[i%2].full``).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import SupportsIndex

__all__ = ["CORE_BUFFERS", "LOCK_INDEX", "LOCK_NAMES", "MEMORIES", "OPS", "STAGING_BUFFERS", "Instr", "Lock", "Operand"]

OPS = ("LOAD", "LOADW", "LOADFM", "LOADWM", "COMP", "WRITEFM", "WRITE")
MEMORIES = ("ddr", "memtile", "staging", "core")
STAGING_BUFFERS = ("wslot0", "wslot1", "wpre", "stage_in", "stage_out")  # MemTile staging areas
CORE_BUFFERS = ("in", "w", "out", "res")
LOCK_NAMES = ("wslot0", "wslot1", "wpre", "stage_in", "stage_out", "core.in", "core.out", "core.w0", "core.w1")
LOCK_INDEX = ("parity", "piece", "step")


def _count(v: SupportsIndex, what: str) -> int:
    """``v`` as a Python int >= 0 (NumPy integers accepted; floats and bools are not)."""
    try:
        n = operator.index(v)
    except TypeError:
        raise ValueError(f"{what} {v!r}: expected an integer >= 0") from None
    if isinstance(v, bool) or n < 0:
        raise ValueError(f"{what} {v!r}: expected an integer >= 0")
    return int(n)


@dataclass(frozen=True, slots=True)
class Operand:
    """One memory: ``ddr`` at byte ``addr``; an activation ``buffer`` in ``memtile`` (striped,
    at ``addr`` = its offset); a MemTile ``staging`` area (``wpre``, the prefetched weights, at
    ``addr`` = its offset in every column); a ``core`` buffer (in, w, out, res)."""

    memory: str
    buffer: str = ""
    addr: int = 0

    def __post_init__(self) -> None:
        if self.memory not in MEMORIES:
            raise ValueError(f"operand memory {self.memory!r}: expected one of {', '.join(MEMORIES)}")
        allowed = {"staging": STAGING_BUFFERS, "core": CORE_BUFFERS}.get(self.memory)
        if allowed is not None and self.buffer not in allowed:
            raise ValueError(f"operand {self.memory} buffer {self.buffer!r}: expected one of {', '.join(allowed)}")
        if self.memory == "memtile" and not self.buffer:
            raise ValueError("operand memtile: names no buffer")
        object.__setattr__(self, "addr", _count(self.addr, f"operand {self.memory} address"))

    @classmethod
    def ddr(cls, addr: int) -> Operand:
        return cls("ddr", "", addr)

    @classmethod
    def memtile(cls, buffer: str, offset: int) -> Operand:
        return cls("memtile", buffer, offset)

    @classmethod
    def staging(cls, area: str, offset: int = 0) -> Operand:
        return cls("staging", area, offset)

    @classmethod
    def core(cls, buffer: str) -> Operand:
        return cls("core", buffer)

    @property
    def slot(self) -> int | None:
        """The weight slot index of ``staging`` ``wslot0``/``wslot1``, else None."""
        return int(self.buffer[-1]) if self.memory == "staging" and self.buffer.startswith("wslot") else None

    def __str__(self) -> str:
        if self.memory == "ddr":
            return f"ddr@{self.addr}"
        if self.memory == "memtile":
            return f"memtile:{self.buffer}@{self.addr}"
        if self.buffer == "wpre":
            return f"memtile.wpre@{self.addr}"
        if self.memory == "core" and self.addr:  # a half of a double-buffered core.w
            return f"core.{self.buffer}@{self.addr}"
        return f"{'memtile' if self.memory == 'staging' else 'core'}.{self.buffer}"


@dataclass(frozen=True, slots=True)
class Lock:
    """A lock of buffer ``name``: per ``parity`` (``[i%2]``: the ping-pong half, i counted across
    the layer's steps), per ``piece`` (``[i]``: weight piece i), or per ``step`` (no index: taken
    before the instruction's first iteration only, given after its last only — a half of a
    double-buffered weight buffer, ``core.w0`` / ``core.w1``), in ``state`` full or empty."""

    name: str
    per: str  # "parity", "piece" or "step"
    state: str  # "full" or "empty"

    def __post_init__(self) -> None:
        if self.name not in LOCK_NAMES:
            raise ValueError(f"lock name {self.name!r}: expected one of {', '.join(LOCK_NAMES)}")
        if self.per not in LOCK_INDEX:
            raise ValueError(f"lock {self.name} index {self.per!r}: expected 'parity', 'piece' or 'step'")
        if self.state not in ("full", "empty"):
            raise ValueError(f"lock {self.name} state {self.state!r}: expected 'full' or 'empty'")

    @classmethod
    def parity(cls, name: str, state: str) -> Lock:
        return cls(name, "parity", state)

    @classmethod
    def piece(cls, name: str, state: str) -> Lock:
        return cls(name, "piece", state)

    @classmethod
    def step(cls, name: str, state: str) -> Lock:
        return cls(name, "step", state)

    def applies(self, it: int, iters: int, which: str) -> bool:
        """Whether iteration ``it`` of ``iters`` takes (``which == "acquire"``) or gives
        (``"release"``) this lock: every iteration, but a ``step`` lock only at the first / last."""
        if self.per != "step":
            return True
        return it == 0 if which == "acquire" else it == iters - 1

    def resolve(self, it: int, half: int) -> str:
        """The concrete lock of iteration ``it`` on ping-pong half ``half``."""
        if self.per == "step":
            return f"{self.name}.{self.state}"
        return f"{self.name}[{half if self.per == 'parity' else it}].{self.state}"

    def __str__(self) -> str:
        if self.per == "step":
            return f"{self.name}.{self.state}"
        return f"{self.name}[{'i%2' if self.per == 'parity' else 'i'}].{self.state}"


@dataclass(frozen=True, slots=True)
class Instr:
    """One instruction; it drives every core (or channel) involved, for ``iters`` iterations.

    ``src``/``dst``: every memory read / written (``Operand``). ``nbytes`` is the total moved over
    all channels and iterations (for COMP: the MACs executed). ``offset`` indexes
    ``Program.per_iter``: ``iters`` values of busiest-channel bytes (transfers) or slowest-core
    cycles (COMP). ``acquire``/``release``: locks taken before / given after each iteration;
    ``halts``: the instruction halts the cores (LOADWM: it starts once the previous COMP is done;
    a LOADWM into a half of a double-buffered weight buffer does not halt, its ``core.w0/1``
    locks order it with the COMPs).
    """

    op: str
    layer: int  # index into Program.layers
    step: int  # (s, k, q) step index within the layer
    s: int
    k: int
    q: int
    iters: int
    src: tuple[Operand, ...]
    dst: tuple[Operand, ...]
    nbytes: int
    offset: int
    acquire: tuple[Lock, ...] = ()
    release: tuple[Lock, ...] = ()
    halts: bool = False

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"instruction op {self.op!r}: expected one of {', '.join(OPS)}")
        for f in ("layer", "step", "s", "k", "q", "iters", "nbytes", "offset"):
            object.__setattr__(self, f, _count(getattr(self, f), f"{self.op} {f}"))
        for f in ("src", "dst", "acquire", "release"):
            object.__setattr__(self, f, tuple(getattr(self, f)))

    @property
    def prefetch(self) -> bool:
        """A LOADW into the prefetch area ``wpre``: it runs during the layer before its own
        (docs/program.md, "Prefetched weights")."""
        return self.op == "LOADW" and any(o.buffer == "wpre" for o in self.dst)

    def locks_text(self, which: str) -> str:
        """``acquire`` or ``release`` as the listing writes it (``"; "``-joined)."""
        locks = [str(lk) for lk in getattr(self, which)]
        return "; ".join(locks + (["cores halted"] if which == "acquire" and self.halts else []))
