"""Cost model access counts and cycles against hand-derived small cases and a brute-force walk of
the loop nest."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tilesparse.costmodel import (
    Architecture,
    Mapping,
    Problem,
    SparseSpec,
    Uniform,
    evaluate,
    evaluate_batch,
)
from tilesparse.costmodel.problem import DIMS, RELEVANT, TENSORS


def one_level(fanout: int = 4) -> Architecture:
    return Architecture(
        name="flat", levels=[dict(name="mem", read_bytes_per_cycle=2.0, write_bytes_per_cycle=1.0,
                                  read_pj_per_byte=3.0, write_pj_per_byte=5.0, fanout=fanout)],
        compute=dict(macs_per_cycle=1.0, pj_per_mac=0.5))


def three_level() -> Architecture:
    lv = dict(read_pj_per_byte=1.0, write_pj_per_byte=1.0)
    return Architecture(name="three", levels=[
        dict(name="rf", capacity_bytes=64, read_bytes_per_cycle=4.0, **lv),
        dict(name="buf", capacity_bytes=1024, read_bytes_per_cycle=1.0, write_bytes_per_cycle=1.0, **lv),
        dict(name="dram", read_bytes_per_cycle=0.5, write_bytes_per_cycle=0.5, **lv)])


def test_one_level_counts_and_cycles():
    # matmul 4x4x4: P=4 (rows), C=4 (reduction), K=4 (out). K spread over the 4 MAC units,
    # P and C in time. MACs = 64.
    # W: indexed by K, which is spatial-relevant: every MAC reads its own weight -> 64 reads.
    # I: not indexed by K -> one read multicast to the 4 units -> 64 / 4 = 16 reads.
    # O: indexed by K -> 64 updates; the first touch of each of the 16 outputs needs no read,
    #    so 64 - 16 = 48 partial-sum reads.
    arch = one_level()
    p = Problem.matmul(4, 4, 4)
    m = Mapping.build(arch, [{"P": 4, "C": 4}], spatial=[{"K": 4}])
    b = evaluate(p, arch, m)
    acc = b.accesses["mem"]
    assert (acc["W"]["reads"], acc["I"]["reads"], acc["O"]["reads"], acc["O"]["updates"]) == (64, 16, 48, 64)
    # read bytes 128 / 2 B/cycle = 64; writes 64 / 1 = 64; compute 16 temporal MACs per unit.
    assert b.compute_cycles == 16
    assert b.level_cycles["mem"] == 64 and b.cycles == 64 and b.bottleneck == "mem"
    assert b.energy_pj == pytest.approx(128 * 3.0 + 64 * 5.0 + 64 * 0.5)
    assert b.utilization == pytest.approx(64 / (64 * 4))


def test_three_level_reuse():
    # matmul P=4 (M), C=4 (reduction), K=2 (N); 1-byte words; no spatial.
    # rf: C=2.  buf: P=4.  dram: C=2 (inner), K=2 (outer).
    arch = three_level()
    p = Problem.matmul(4, 4, 2)
    m = Mapping.build(arch, [{"C": 2}, {"P": 4}, {"C": 2, "K": 2}], order=["C", "P", "CK"])
    b = evaluate(p, arch, m)
    a = b.accesses
    # MACs = 32: the rf serves every MAC's W and I operand.
    assert a["rf"]["W"]["reads"] == 32 and a["rf"]["I"]["reads"] - 0 == 32
    # W rf tile = 2 words (c). Above rf: P at buf does not index W (stationary), then C, K at dram:
    # 2 * 2 refills -> 2 * 4 = 8 fills, and buf reads 8. The buf tile (2 words) is refilled 4x
    # too -> dram reads 8: every weight is read from DRAM exactly once.
    assert a["rf"]["W"]["fills"] == 8 and a["buf"]["W"]["reads"] == 8 and a["dram"]["W"]["reads"] == 8
    # I rf tile = 2 words; P at buf indexes I -> refilled 4 * (2 * 2) = 16 times -> 32 fills.
    # I buf tile = 8 words (p4 x c2); dram loops C (relevant) then K -> 4 refills -> 32 dram reads.
    assert a["rf"]["I"]["fills"] == 32 and a["buf"]["I"]["reads"] == 32
    assert a["buf"]["I"]["fills"] == 32 and a["dram"]["I"]["reads"] == 32
    # O rf tile = 1 word, refilled 4 * 4 = 16 times: 32 MAC updates, 32 - 16 = 16 psum reads.
    assert a["rf"]["O"]["updates"] == 32
    # rf reads of O = 16 psums to the MACs + 16 write-backs to buf.
    assert a["rf"]["O"]["reads"] == 32 and a["buf"]["O"]["updates"] == 16
    # O buf tile = 4 words; at dram C (inner) does not index O -> stationary; K refills 2x ->
    # 8 words enter buf, so 16 - 8 = 8 psums go back down to rf; dram gets 8 updates, 0 reads.
    assert a["buf"]["O"]["reads"] == 8 + 8 and a["rf"]["O"]["fills"] == 8
    assert a["dram"]["O"]["updates"] == 8 and a["dram"]["O"]["reads"] == 0
    # Cycles: dram moves 8 + 32 = 40 B read and 8 B written at 0.5 B/cycle -> 80 cycles;
    # buf reads 8 + 32 + 16 = 56 B at 1 B/cycle; compute 32 MACs at 1/cycle.
    assert b.level_cycles["dram"] == 80
    assert b.level_cycles["buf"] == 56
    assert b.compute_cycles == 32 and b.cycles == 80


def _walk_fills(p: Problem, m: Mapping) -> np.ndarray:
    """Brute force: walk every iteration of the temporal loop nest; the tile of tensor x held at
    level c changes whenever a relevant loop above c changes index. fills = changes x tile size."""
    n_lv = len(m.temporal)
    loops = []  # outermost first: (level, dim, factor)
    for lvl in reversed(range(n_lv)):
        for d in reversed(m.order[lvl]):
            f = m.temporal[lvl][DIMS.index(d)]
            if f > 1:
                loops.append((lvl, DIMS.index(d), f))
    ext = np.cumprod(np.array(m.temporal, dtype=float), axis=0)
    tiles = p.tile_elems(ext)
    fills = np.zeros((n_lv, 3))
    last = [[None] * 3 for _ in range(n_lv)]
    for idx in itertools.product(*[range(f) for _, _, f in loops]):
        for c in range(n_lv - 1):
            for x in range(3):
                key = tuple(i for (lvl, d, _), i in zip(loops, idx, strict=True) if lvl > c and RELEVANT[x, d])
                if key != last[c][x]:
                    last[c][x] = key
                    fills[c, x] += tiles[c, x]
    return fills


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_refills_match_loop_nest_walk(data):
    arch = Architecture(name="big", levels=[dict(name=n) for n in ("l0", "l1", "l2")])
    dims = {"K": 4, "C": 2, "P": 4, "R": 2}
    per_level = [{} for _ in range(3)]
    for d, b in dims.items():
        for f in (2,) * (b.bit_length() - 1):
            lvl = data.draw(st.integers(0, 2))
            per_level[lvl][d] = per_level[lvl].get(d, 1) * f
    orders = [data.draw(st.permutations(list(DIMS))) for _ in range(3)]
    p = Problem.conv(k=4, c=2, p=4, q=1, r=2, s=1)
    m = Mapping.build(arch, per_level, order=["".join(o) for o in orders])
    res = evaluate_batch(p, arch, m.to_batch())
    walk = _walk_fills(p, m)
    for c in range(2):
        for x in (0, 1):  # W, I fills; O write-backs = reads at the child beyond the psums
            assert res.fills[0, c, x] == pytest.approx(walk[c, x]), (c, TENSORS[x], m)
        assert res.updates[0, c + 1, 2] == pytest.approx(walk[c, 2])


def test_dram_traffic_at_least_compulsory():
    arch = three_level()
    p = Problem.conv(k=8, c=4, p=4, q=4, r=3, s=3)
    m = Mapping.build(arch, [{}, {"R": 3, "S": 3}, {"K": 8, "C": 4, "P": 4, "Q": 4}])
    b = evaluate(p, arch, m)
    sizes = p.tensor_elems
    assert b.accesses["dram"]["W"]["reads"] >= sizes[0]
    assert b.accesses["dram"]["I"]["reads"] >= sizes[1]
    assert b.accesses["dram"]["O"]["updates"] >= sizes[2]


def test_skip_saves_time_gate_only_energy():
    arch = one_level(fanout=1)
    p = Problem.matmul(4, 8, 4)
    m = Mapping.build(arch, [{"P": 4, "C": 8, "K": 4}])
    dense = evaluate(p, arch, m)
    w = Uniform(0.25, total=32)
    skip = evaluate(p, arch, m, SparseSpec(density={"W": w}, action="skip"))
    gate = evaluate(p, arch, m, SparseSpec(density={"W": w}, action="gate"))
    assert skip.effective_macs == gate.effective_macs == dense.macs * 0.25
    assert skip.compute_cycles == dense.compute_cycles * 0.25
    assert gate.compute_cycles == dense.compute_cycles
    assert gate.cycles == dense.cycles  # gated accesses still take their slots
    assert skip.energy_pj < dense.energy_pj and gate.energy_pj < dense.energy_pj
    # gated I reads at the MACs cost no energy but are still counted for time
    assert gate.accesses["mem"]["I"]["gated_reads"] == pytest.approx(128 * 0.75)


def test_compressed_weights_move_fewer_bytes():
    from tilesparse.costmodel import make_format

    arch = three_level()
    p = Problem.matmul(8, 16, 8)
    m = Mapping.build(arch, [{}, {"P": 8}, {"C": 16, "K": 8}])
    dense = evaluate(p, arch, m)
    sp = SparseSpec(density={"W": Uniform(0.25, total=128)}, formats={"W": make_format("bitmask")})
    comp = evaluate(p, arch, m, sp)
    # dram W: 128 words of 8 bits -> 128 * (0.25 * 8 + 1 bit mask) / 8 = 48 bytes
    assert comp.traffic_bytes["dram"]["read"] - dense.traffic_bytes["dram"]["read"] == pytest.approx(48 - 128)
