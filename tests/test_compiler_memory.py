"""MemTile allocation invariants: live buffers never overlap, capacities hold, spills go to DDR."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tilesparse.compiler.memory import (
    Allocation,
    Buffer,
    Placement,
    allocate,
    check_allocation,
)
from tilesparse.errors import CapacityError
from tilesparse.hw import load_array


@st.composite
def workloads(draw):
    n_layers = draw(st.integers(1, 20))
    bufs = []
    for i in range(draw(st.integers(1, 25))):
        a = draw(st.integers(0, n_layers - 1))
        b = draw(st.integers(a, n_layers - 1))
        bufs.append(Buffer(f"b{i}", draw(st.integers(1, 900_000)), a, b, draw(st.booleans()) and i == 0))
    caps = [draw(st.integers(0, 524288)) for _ in range(n_layers)]
    return bufs, caps


@settings(max_examples=150, deadline=None)
@given(workloads(), st.sampled_from(["2x2", "4x4", "8x2", "3x5"]))
def test_allocation_invariants(work, arr):
    bufs, caps = work
    hw = load_array(arr)
    alloc = allocate(bufs, caps, hw)
    check_allocation(bufs, alloc)  # raises on overlap or capacity
    mem = [(b, alloc.placements[b.name]) for b in bufs if alloc.placements[b.name].memory == "memtile"]
    for b, p in mem:  # independent re-check
        assert p.part_bytes * hw.cols >= b.nbytes
        assert all(p.offset + p.part_bytes <= caps[t] for t in range(b.start, b.end + 1))
        assert not b.forced_ddr
    for i, (b, p) in enumerate(mem):
        for c, q in mem[i + 1:]:
            if b.start <= c.end and c.start <= b.end:
                assert p.offset + p.part_bytes <= q.offset or q.offset + q.part_bytes <= p.offset


def test_buffers_with_disjoint_lives_share_memory():
    hw = load_array("2x2")
    bufs = [Buffer("a", 1000, 0, 1), Buffer("b", 1000, 2, 3)]
    alloc = allocate(bufs, [4096] * 4, hw)
    assert alloc.placements["a"].offset == alloc.placements["b"].offset == 0


def test_check_allocation_detects_overlap_and_overflow():
    bufs = [Buffer("a", 100, 0, 2), Buffer("b", 100, 1, 3)]
    bad = Allocation({"a": Placement("memtile", 0, 64), "b": Placement("memtile", 32, 64)}, (512,) * 4, (0,) * 4)
    with pytest.raises(CapacityError, match="overlap"):
        check_allocation(bufs, bad)
    over = Allocation({"a": Placement("memtile", 0, 64), "b": Placement("memtile", 480, 64)}, (512,) * 4, (0,) * 4)
    with pytest.raises(CapacityError, match="exceed"):
        check_allocation(bufs, over)
