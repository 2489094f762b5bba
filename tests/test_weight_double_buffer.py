"""The core weight buffer in two halves (docs/time-model.md rule 5, docs/program.md "Weight halves"):
the compiler's choice, the Program's halves and locks, the simulator (bit-exact, from the packed
bytes), the ordering check, the clocked replay against the time model, and the flag off."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
from sim_check import check_program
from weight_mech import BEFORE, SHAPE, flags, tiny_graph

from tilesparse.compiler.pipeline import compile_graph
from tilesparse.estimate.bounds import program_bounds
from tilesparse.estimate.timemodel import estimate_program
from tilesparse.hw import TILESPARSE, load_array
from tilesparse.program import Lock, Operand
from tilesparse.sim import HazardError, SimulationError, check_ordering, simulate
from tilesparse.sim.replay import replay


def _double_layers(p) -> set[int]:
    return {ins.layer for ins in p.instrs if ins.op == "LOADWM" and not ins.halts}


@pytest.fixture(scope="module")
def built():
    return tiny_graph(0.5, True)


@pytest.fixture(scope="module")
def prog(built):
    return compile_graph(built.graph, "4x2")


@pytest.mark.parametrize("sparsity,arr", list(BEFORE))
def test_flag_off_keeps_the_halting_schedule_and_on_is_faster(sparsity, arr):
    g = tiny_graph(sparsity, False).graph
    off = compile_graph(g, flags(arr, False, False))
    assert not _double_layers(off)
    assert all(lk.per != "step" for ins in off.instrs for lk in ins.acquire + ins.release)
    assert estimate_program(off).total_s == pytest.approx(BEFORE[(sparsity, arr)], rel=1e-12)
    on = compile_graph(g, arr)
    assert load_array(arr).core.weight_double_buffer and _double_layers(on)
    assert estimate_program(on).total_s < BEFORE[(sparsity, arr)]


def test_the_paper_profile_never_double_buffers():
    hw = load_array("4x2").model_copy(update={"rules": "paper"})
    assert hw.core.weight_double_buffer
    assert not _double_layers(compile_graph(tiny_graph(0.5, False).graph, hw))


def test_halves_alternate_and_hold_their_chunks(prog):
    half = prog.hw.core.weight_buffer_bytes // 2
    layers = _double_layers(prog)
    assert layers
    for li in layers:
        rec = prog.layers[li]
        assert max(r.nbytes for r in rec.chunks) <= half, rec.name  # every chunk fits a half
        instrs = [ins for ins in prog.instrs if ins.layer == li]
        loads = [ins for ins in instrs if ins.op == "LOADWM"]
        assert len(loads) > 1 and not any(ins.halts for ins in loads)
        for m, ins in enumerate(loads):  # the m-th weighted step fills half m mod 2
            h = m % 2
            assert ins.dst == (Operand("core", "w", h * half),)
            assert Lock.step(f"core.w{h}", "empty") in ins.acquire and Lock.step(f"core.w{h}", "full") in ins.release
        for ins in instrs:
            if ins.op == "COMP":  # reads the half its step's LOADWM filled
                lwm = next(x for x in loads if x.step == ins.step)
                assert lwm.dst[0] in ins.src


def test_double_buffered_program_is_bit_exact_and_agrees_with_the_time_model(built, prog):
    check_program(built, load_array("4x2"), SHAPE)  # bit-exact, accounting equal, replay == estimate
    model, rep = estimate_program(prog), replay(prog)
    assert [s.seconds for s in rep.layers] == pytest.approx([sec for _, _, sec in model.layers], rel=1e-9, abs=1e-18)
    for op, busy in model.busy_by_op(prog).items():
        assert rep.busy_s[op] == pytest.approx(busy, rel=1e-9), op
    # the cores halt only in layers that load weights once (nothing to overlap with)
    halting_layers = {ins.layer for ins in prog.instrs if ins.op == "LOADWM" and ins.halts}
    for li in halting_layers:
        assert sum(ins.op == "LOADWM" for ins in prog.instrs if ins.layer == li) == 1
    check_ordering(prog)


def test_every_layer_stays_above_its_bounds(prog):
    times = [sec for _, _, sec in estimate_program(prog).layers]
    for b, secs in zip(program_bounds(prog), times, strict=True):
        assert secs >= b.floor_s * (1 - 1e-9) and b.floor_s >= b.bound_s * (1 - 1e-12), b.layer


def _two_loads(prog):
    li = min(_double_layers(prog))
    idx = [i for i, ins in enumerate(prog.instrs) if ins.layer == li and ins.op in ("LOADWM", "COMP")]
    return li, idx


def test_a_wrong_half_is_caught_by_the_ordering_check(prog):
    # the second LOADWM of a layer writes the first half (still read by step 0's COMP) while
    # keeping the second half's locks: nothing orders it after that COMP
    li, idx = _two_loads(prog)
    second = [i for i in idx if prog.instrs[i].op == "LOADWM"][1]
    instrs = list(prog.instrs)
    instrs[second] = dataclasses.replace(instrs[second], dst=(Operand.core("w"),))
    bad = dataclasses.replace(prog, instrs=tuple(instrs))
    with pytest.raises(HazardError, match=r"LOADWM .* overwrites core\.w\[0\] still to be read by COMP"):
        check_ordering(bad)


def test_a_wrong_half_is_caught_by_the_simulator(prog):
    # step 1's COMP reads the half step 0 filled: the core holds another chunk than the step needs
    li, idx = _two_loads(prog)
    comp = [i for i in idx if prog.instrs[i].op == "COMP"][1]
    instrs = list(prog.instrs)
    instrs[comp] = dataclasses.replace(instrs[comp], src=(Operand.core("in"), Operand.core("w")))
    bad = dataclasses.replace(prog, instrs=tuple(instrs))
    x = np.zeros(prog.buffers[next(n for n, b in prog.buffers.items() if b.get("graph_io"))]["shape"], np.int8)
    with pytest.raises(SimulationError, match="holds weight chunk"):
        simulate(bad, x, check=False, progress=False)


def test_a_missing_release_deadlocks():
    # the last COMP on a half no longer frees it: the next LOADWM into that half never starts
    prog = compile_graph(tiny_graph(0.0, False).graph, "4x2")  # conv2: four weighted steps
    li, idx = _two_loads(prog)
    assert sum(prog.instrs[i].op == "LOADWM" for i in idx) >= 3
    comp = [i for i in idx if prog.instrs[i].op == "COMP"][0]
    instrs = list(prog.instrs)
    instrs[comp] = dataclasses.replace(instrs[comp], release=tuple(
        lk for lk in instrs[comp].release if lk.per != "step"))
    bad = dataclasses.replace(prog, instrs=tuple(instrs))
    with pytest.raises(HazardError, match=r"deadlock: LOADWM .* waits for core\.w0\.empty"):
        check_ordering(bad)


def test_engine_bound_counts_loadwm_beside_comp_when_double_buffered():
    # 1x1 array, 4 GB/s, 1 GHz: two steps of LOADWM 4000 B (1 µs each) and COMP 3000 cycles (3 µs each,
    # one iteration): halting, the cores take 2 x (1 + 3) = 8 µs; double-buffered, the busiest engine is
    # COMP with 6 µs, and the recurrence gives LOADWM 0-1, COMP 1-4, 4-7 = 7 µs
    from tilesparse.timing import engine_bound_s, layer_time_arrays

    hw = load_array("1x1")
    lw, lwm = np.array([[0.0], [0.0]]), np.array([[4000.0], [4000.0]])
    pipe = {"COMP": np.array([[3000.0], [3000.0]])}
    assert engine_bound_s(lw, lwm, pipe, hw) == pytest.approx(8e-6)
    assert engine_bound_s(lw, lwm, pipe, hw, double=True) == pytest.approx(6e-6)
    assert layer_time_arrays(lw, lwm, pipe, hw, double=True) == pytest.approx(7e-6)
    assert layer_time_arrays(lw, lwm, pipe, hw) == pytest.approx(8e-6)


def test_a_profile_without_the_mechanisms_plays_them_by_its_own_rules(prog):
    """Timing a program compiled with both mechanisms under a profile that does not allow double
    buffering (as ``estimate --rules paper`` does with a tilesparse program) equals timing the program
    rewritten by hand the way those rules read it, every LOADWM halting; without prefetch as well,
    the prefetched LOADWs run in their own layers. The replay agrees, and each mechanism only saves time."""
    assert _double_layers(prog) and any(ins.prefetch for ins in prog.instrs)
    no_db = dataclasses.replace(TILESPARSE, name="no-db",
                                extra_mechanisms=frozenset({"dma_compression", "weight_prefetch"}))
    bare = dataclasses.replace(TILESPARSE, name="bare", extra_mechanisms=frozenset({"dma_compression"}))
    rewritten = copy.deepcopy(prog)
    rewritten.instrs = [dataclasses.replace(ins, halts=ins.halts or ins.op == "LOADWM") for ins in prog.instrs]
    want = estimate_program(rewritten, TILESPARSE).total_s
    assert estimate_program(prog, no_db).total_s == pytest.approx(want, rel=1e-12)
    times = [estimate_program(prog, p).total_s for p in (TILESPARSE, no_db, bare)]
    assert times[0] < times[1] < times[2]
    for p, t in zip((TILESPARSE, no_db, bare), times, strict=True):
        assert replay(prog, p).total_s == pytest.approx(t, rel=1e-9)
