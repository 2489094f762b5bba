"""Cross-layer weight prefetch (docs/time-model.md rule 7, docs/program.md "Prefetched weights"):
the compiler's choice and its space check, the simulator (bit-exact, from the packed bytes), the
ordering check's MemTile capacity check, the clocked replay against the time model, the bounds."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from sim_check import check_program
from weight_mech import BEFORE, SHAPE, flags, tiny_graph

from tilesparse.compiler.pipeline import compile_graph
from tilesparse.estimate.bounds import program_bounds
from tilesparse.estimate.timemodel import estimate_program
from tilesparse.hw import load_array
from tilesparse.program import Lock, Operand
from tilesparse.sim import HazardError, SimulationError, check_ordering, simulate
from tilesparse.sim.replay import replay


def _prefetched(p) -> dict[int, int]:
    """Layer -> index of its prefetching LOADW."""
    return {ins.layer: i for i, ins in enumerate(p.instrs) if ins.prefetch}


@pytest.fixture(scope="module")
def built():
    return tiny_graph(0.5, True)


@pytest.fixture(scope="module")
def prog(built):
    return compile_graph(built.graph, "4x2")


@pytest.mark.parametrize("sparsity,arr", [(0.0, "4x4"), (0.5, "4x2")])
def test_both_flags_off_keep_the_figures_before(sparsity, arr):
    g = tiny_graph(sparsity, False).graph
    off = compile_graph(g, flags(arr, False, False))
    assert not _prefetched(off) and off.meta["weight_prefetch"] == {}
    assert estimate_program(off).total_s == pytest.approx(BEFORE[(sparsity, arr)], rel=1e-12)
    pre = compile_graph(g, flags(arr, False, True))  # prefetch alone
    assert _prefetched(pre) and estimate_program(pre).total_s < BEFORE[(sparsity, arr)]
    for p in (pre, compile_graph(g, arr)):  # the compiler's own figure is the program's estimate
        assert p.meta["estimate_s"] == pytest.approx(estimate_program(p).total_s, rel=1e-12)


def test_the_paper_profile_never_prefetches():
    hw = load_array("4x2").model_copy(update={"rules": "paper"})
    assert hw.memtile.weight_prefetch and not _prefetched(compile_graph(tiny_graph(0.5, False).graph, hw))


def test_the_prefetch_area_is_free_memtile_space(prog):
    pre = _prefetched(prog)
    assert pre and 0 not in pre
    assert {int(k) for k in prog.meta["weight_prefetch"]} == set(pre)
    peak, cap = prog.meta["memtile_peak"], prog.meta["memtile_capacity"]
    for li, i in pre.items():
        ins = prog.instrs[i]
        area = prog.meta["weight_prefetch"][str(li)]
        assert ins.step == 0 and ins.dst == (Operand.staging("wpre", area["offset"]),)
        assert ins.acquire == (Lock.piece("wpre", "empty"),) and ins.release == (Lock.piece("wpre", "full"),)
        lwm = next(x for x in prog.instrs if x.layer == li and x.op == "LOADWM" and x.step == 0)
        assert lwm.src == ins.dst and Lock.piece("wpre", "full") in lwm.acquire
        lo, size = area["offset"], area["bytes"]
        assert size == int(prog.iter_values(ins).sum())
        assert max(peak[li - 1], peak[li]) <= lo and lo + size <= min(cap[li - 1], cap[li])


def test_prefetched_program_is_bit_exact_and_agrees_with_the_time_model(built, prog):
    check_program(built, load_array("4x2"), SHAPE)  # bit-exact, accounting equal, replay == estimate
    model, rep = estimate_program(prog), replay(prog)
    assert [s.seconds for s in rep.layers] == pytest.approx([sec for _, _, sec in model.layers], rel=1e-9, abs=1e-18)
    for op, busy in model.busy_by_op(prog).items():
        assert rep.busy_s[op] == pytest.approx(busy, rel=1e-9), op
    starts = {name: start for name, start, _ in model.layers}
    early = 0
    for li, i in _prefetched(prog).items():  # each prefetching LOADW starts with or after the layer before
        name, before = prog.layers[li].name, prog.layers[li - 1].name
        assert model.instrs[i].start_s >= starts[before] - 1e-15
        assert rep.instr_start_s[i] == pytest.approx(model.instrs[i].start_s, abs=1e-15)
        early += model.instrs[i].start_s < starts[name]
    assert early  # ... and some before their own layer


def test_every_layer_stays_above_its_bounds(prog):
    times = [sec for _, _, sec in estimate_program(prog).layers]
    bounds = program_bounds(prog)
    for b, secs in zip(bounds, times, strict=True):
        assert secs >= b.bound_s * (1 - 1e-9) and secs >= b.floor_s * (1 - 1e-9), b.layer
    hw = prog.hw
    col_in = hw.cols * hw.links.ddr_to_memtile_bytes_per_s
    for li, i in _prefetched(prog).items():  # the prefetched bytes are off the layer's DDR term
        rec = prog.layers[li]
        w = rec.packed_weight_bytes + rec.bias_bytes
        assert bounds[li].ddr_weight_s == pytest.approx(w / col_in)
        assert bounds[li].ddr_s >= (w - prog.instrs[i].nbytes) / col_in * (1 - 1e-12)
        assert bounds[li].ddr_s < w / col_in or w / col_in <= max(bounds[li].ddr_act_s, 0.0)


def _moved(prog, offset: int):
    """The program with the first prefetch area moved to ``offset`` (LOADW and LOADWM alike)."""
    li, i = min(_prefetched(prog).items())
    instrs = list(prog.instrs)
    area = (Operand.staging("wpre", offset),)
    instrs[i] = dataclasses.replace(instrs[i], dst=area)
    j = next(k for k, x in enumerate(instrs) if x.layer == li and x.op == "LOADWM" and x.step == 0)
    instrs[j] = dataclasses.replace(instrs[j], src=area)
    return li, dataclasses.replace(prog, instrs=tuple(instrs))


def test_a_prefetch_area_over_live_activations_is_caught(prog):
    li = min(_prefetched(prog))
    live = [(n, b) for n, b in prog.buffers.items()
            if b["memory"] == "memtile" and b["live"][0] <= li and b["live"][1] >= li - 1]
    name, buf = live[0]
    _, bad = _moved(prog, buf["offset"])
    with pytest.raises(HazardError, match=rf"prefetch area .* overlaps MemTile buffer '{name}'"):
        check_ordering(bad)
    x = np.zeros(prog.buffers[next(n for n, b in prog.buffers.items() if b.get("graph_io"))]["shape"], np.int8)
    with pytest.raises(SimulationError, match="overlaps MemTile buffer"):
        simulate(bad, x, check=False, progress=False)


def test_a_prefetch_area_into_the_staging_is_caught(prog):
    li = min(_prefetched(prog))
    cap = min(prog.meta["memtile_capacity"][li - 1:li + 1])
    _, bad = _moved(prog, cap - 16)
    with pytest.raises(HazardError, match="runs into the staging"):
        check_ordering(bad)


def test_a_prefetch_over_unread_prefetched_weights_is_caught(prog):
    # two consecutive prefetched layers share the area: the later LOADW must wait for the earlier
    # layer's LOADWM to empty it; without its wpre.empty locks nothing orders them
    pre = _prefetched(prog)
    li = next(k for k in sorted(pre) if k - 1 in pre
              and prog.instrs[pre[k]].dst[0].addr == prog.instrs[pre[k - 1]].dst[0].addr)
    instrs = list(prog.instrs)
    instrs[pre[li]] = dataclasses.replace(instrs[pre[li]], acquire=())
    with pytest.raises(HazardError, match=r"LOADW .* overwrites memtile\.wpre still to be read by LOADWM"):
        check_ordering(dataclasses.replace(prog, instrs=tuple(instrs)))
    check_ordering(prog)  # as compiled: ordered
