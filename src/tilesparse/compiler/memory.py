"""Memory: where every activation buffer lives, over the schedule.

MemTile allocation is interval colouring: each buffer has a live range (from the layer that first
writes it to the last layer that reads it, in schedule order) and a size per column (a buffer is
striped over the ``cols`` MemTiles, ``ceil(bytes / cols)`` in each, at the same offset). Buffers
are placed first-fit by start time at the lowest offset that overlaps no live buffer and stays
below the capacity of every layer in the range (a MemTile minus the staging that layer reserves
for weights and DDR tiles). A buffer that does not fit spills to DDR: its producer streams it out
with WRITE and its readers stream it back with LOAD, tile by tile (splitting in time). The graph
input and output always live in DDR.

``check_allocation`` re-verifies the result (no two live buffers overlap, every capacity holds);
the compiler calls it on every program.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from tilesparse.errors import CapacityError
from tilesparse.hw import ArrayConfig

__all__ = ["Allocation", "Buffer", "DdrLayout", "Placement", "allocate", "check_allocation"]

DDR_ALIGN = 64  # bytes; DDR regions start on a burst boundary
MEMTILE_ALIGN = 16  # bytes; MemTile buffers start on a DMA word boundary


@dataclass(frozen=True)
class Buffer:
    name: str
    nbytes: int
    start: int  # index of the first layer (in schedule order) that writes it
    end: int  # index of the last layer that reads it (inclusive)
    forced_ddr: bool = False  # graph inputs and outputs


@dataclass(frozen=True)
class Placement:
    memory: str  # "memtile" (striped over the columns) or "ddr"
    offset: int  # MemTile offset (same in every column) or DDR address
    part_bytes: int  # bytes per column (MemTile) or total (DDR)


@dataclass(frozen=True)
class Allocation:
    placements: dict[str, Placement]
    capacity: tuple[int, ...]  # MemTile bytes per column available to activations, per layer
    peak: tuple[int, ...]  # MemTile bytes per column used by activations, per layer

    def in_ddr(self, name: str) -> bool:
        return self.placements[name].memory == "ddr"


def _align(x: int, a: int) -> int:
    return -(-x // a) * a


def allocate(buffers: Sequence[Buffer], capacity: Sequence[int], hw: ArrayConfig) -> Allocation:
    """First-fit interval colouring of ``buffers`` into MemTiles with per-layer ``capacity`` (bytes
    per column); what does not fit goes to DDR (module doc)."""
    placed: list[tuple[Buffer, int, int]] = []  # buffer, offset, size per column
    out: dict[str, Placement] = {}
    for b in sorted(buffers, key=lambda x: (x.start, -x.nbytes, x.name)):
        size = _align(math.ceil(b.nbytes / hw.cols), MEMTILE_ALIGN)
        cap = min(capacity[b.start:b.end + 1], default=0)
        off = None if b.forced_ddr else _first_fit(placed, b, size, cap)
        if off is None:
            out[b.name] = Placement("ddr", -1, b.nbytes)
            continue
        placed.append((b, off, size))
        out[b.name] = Placement("memtile", off, size)
    peak = [0] * len(capacity)
    for b, off, size in placed:
        for t in range(b.start, b.end + 1):
            peak[t] = max(peak[t], off + size)
    return Allocation(out, tuple(capacity), tuple(peak))


def _first_fit(placed, b: Buffer, size: int, cap: int) -> int | None:
    busy = sorted((off, off + sz) for pb, off, sz in placed if pb.start <= b.end and b.start <= pb.end)
    off = 0
    for a, e in busy:
        if off + size <= a:
            break
        off = max(off, _align(e, MEMTILE_ALIGN))
    return off if off + size <= cap else None


def check_allocation(buffers: Sequence[Buffer], alloc: Allocation) -> None:
    """Raise CapacityError if two live MemTile buffers overlap or a capacity is exceeded."""
    mem = [(b, alloc.placements[b.name]) for b in buffers if alloc.placements[b.name].memory == "memtile"]
    for i, (b, p) in enumerate(mem):
        for t in range(b.start, b.end + 1):
            if p.offset + p.part_bytes > alloc.capacity[t]:
                raise CapacityError(f"buffer {b.name}: MemTile bytes [{p.offset}, {p.offset + p.part_bytes}) "
                                    f"exceed the {alloc.capacity[t]} B left at layer #{t}")
        for c, q in mem[i + 1:]:
            live = b.start <= c.end and c.start <= b.end
            overlap = p.offset < q.offset + q.part_bytes and q.offset < p.offset + p.part_bytes
            if live and overlap:
                raise CapacityError(f"MemTile buffers {b.name} and {c.name} overlap while both live")


class DdrLayout:
    """Bump allocator over DDR: packed weights, spilled activations, graph input and output."""

    def __init__(self, hw: ArrayConfig):
        self.hw = hw
        self.top = 0
        self.regions: dict[str, tuple[int, int]] = {}

    def add(self, name: str, nbytes: int) -> int:
        addr = _align(self.top, DDR_ALIGN)
        if addr + nbytes > self.hw.ddr.bytes:
            raise CapacityError(f"DDR: {name} ({nbytes} B) does not fit; {addr} B already used of "
                                f"{self.hw.ddr.bytes} B (array {self.hw.label})")
        self.regions[name] = (addr, nbytes)
        self.top = addr + nbytes
        return addr
