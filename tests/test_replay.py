"""The clocked replay (tilesparse.sim.replay) against hand-computed latencies and, layer by layer,
against the time model (its independent second implementation) on compiled networks.

Hand-built programs run on the 1x1 array: every channel but WRITE at 4 GB/s, 1 GHz. ``U`` is one
microsecond; ``B`` the bytes a MemTile↔core channel moves in it, ``D`` a DDR→MemTile channel,
``C`` the cycles. Each program is written with the locks docs/program.md gives each op.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from compiler_helpers import small_graph

from tilesparse.build import build_graph_from
from tilesparse.compiler.pipeline import compile_graph
from tilesparse.estimate.timemodel import estimate_program
from tilesparse.hw import load_array
from tilesparse.program import Instr, Lock, Operand, Program
from tilesparse.sim.replay import ReplayError, ReplayRules, replay

HW = load_array("1x1")
U = 1e-6
B = HW.links.memtile_to_core_bytes_per_s * U
D = HW.links.ddr_to_memtile_bytes_per_s * U
C = HW.clock_hz * U

IN_F, IN_E = Lock.parity("core.in", "full"), Lock.parity("core.in", "empty")
OUT_F, OUT_E = Lock.parity("core.out", "full"), Lock.parity("core.out", "empty")


@pytest.fixture(scope="module")
def base() -> Program:
    return compile_graph(small_graph(), HW)


def _step(j: int, iters: int, fm: float, comp: float, wfm: float | None = None,
          lw: list[float] | None = None, lwm: list[float] | None = None) -> list[tuple]:
    """(op, iters, acquire, release, halts, per-iteration values) of one step, locked as the compiler
    locks them: weight pieces per piece in slot j mod 2, the pipeline per ping-pong half."""
    out: list[tuple] = []
    if lw is not None and lwm is not None:
        full, empty = Lock.piece(f"wslot{j % 2}", "full"), Lock.piece(f"wslot{j % 2}", "empty")
        out += [("LOADW", len(lw), (empty,), (full,), False, lw), ("LOADWM", len(lwm), (full,), (empty,), True, lwm)]
    out.append(("LOADFM", iters, (IN_E,), (IN_F,), False, [fm] * iters))
    writes = wfm is not None
    out.append(("COMP", iters, (IN_F,) + (OUT_E,) * writes, (IN_E,) + (OUT_F,) * writes, False, [comp] * iters))
    if writes:
        out.append(("WRITEFM", iters, (OUT_F,), (OUT_E,), False, [wfm] * iters))
    return out


def _program(base: Program, steps: list[list[tuple]]) -> Program:
    """A one-layer program of these steps (the layer record borrowed from a compiled program)."""
    instrs, vals, off = [], [], 0
    for j, step in enumerate(steps):
        for op, iters, acq, rel, halts, v in step:
            instrs.append(Instr(op, 0, j, 0, j, 0, iters, (Operand.ddr(0),), (Operand.core("in"),), 0, off,
                                acq, rel, halts))
            vals += v
            off += iters
    return dataclasses.replace(base, layers=base.layers[:1], instrs=tuple(instrs), per_iter=np.array(vals, float))


def _both(p: Program, rules: ReplayRules | None = None) -> tuple[float, float]:
    return replay(p, rules).total_s, estimate_program(p).total_s


def test_pipelined_iterations_overlap(base):
    # LOADFM 1, COMP 2, WRITEFM 1 µs, 3 iterations: the cores never wait after the first tile:
    # 1 (fill) + 3 x 2 + 1 (drain) = 8 µs; in sequence it would be 12 µs
    p = _program(base, [_step(0, 3, B, 2 * C, B)])
    want = (1 + 3 * 2 + 1) * U
    assert want < 3 * (1 + 2 + 1) * U
    assert _both(p) == pytest.approx((want, want), rel=1e-12)
    # serialising one-iteration steps does not touch a step of three
    assert replay(p, ReplayRules(serial_single_steps=True)).total_s == pytest.approx(want, rel=1e-12)


def test_one_iteration_steps_overlap_across_steps_unless_serialised(base):
    # 3 steps of one tile: LOADFM 1, COMP 1, LOADWM 0.5 µs (LOADW instant). The half counts across
    # steps, so tile j+1 streams in while COMP j runs and LOADWM j+1 halts the cores:
    # LOADWM 0-0.5, FM 0-1, COMP 1-2 | LOADWM 2-2.5, FM 1-2, COMP 2.5-3.5 | LOADWM 3.5-4, FM 2-3, COMP 4-5
    p = _program(base, [_step(j, 1, B, C, lw=[0.0], lwm=[B / 2]) for j in range(3)])
    assert _both(p) == pytest.approx((5 * U, 5 * U), rel=1e-12)
    # the paper's rule: each step LOADW → LOADWM → LOADFM → COMP in sequence: 3 x (0.5 + 1 + 1)
    assert replay(p, ReplayRules(serial_single_steps=True)).total_s == pytest.approx(7.5 * U, rel=1e-12)


def test_loadwm_halts_the_cores(base):
    # 2 steps of 2 tiles: LOADW 0.5, LOADWM 1, LOADFM 0.5, COMP 1 µs. LOADWM 1 must wait until the
    # cores finish step 0 (3.5), so every LOADWM after the first adds to the COMPs:
    # LOADW 0 + LOADWM 0 + 2 COMP + LOADWM 1 + 2 COMP = 0.5 + 1 + 2 + 1 + 2 = 6.5 µs.
    # (Were the cores free to compute during LOADWM 1, it would run 1.5-2.5 and end at 5.5 µs.)
    p = _program(base, [_step(j, 2, B / 2, C, lw=[D / 2], lwm=[B]) for j in range(2)])
    assert _both(p) == pytest.approx((6.5 * U, 6.5 * U), rel=1e-12)
    r = replay(p)
    assert r.halted_s == pytest.approx(2 * U, rel=1e-12)
    assert r.busy_s["COMP"] == pytest.approx(4 * U, rel=1e-12)


def _halves(steps: list[list[tuple]]) -> list[list[tuple]]:
    """The steps with the weight buffer double-buffered as the compiler locks it (docs/program.md,
    "Weight halves"): LOADWM j fills half j mod 2 without halting, COMP j takes it at its first
    tile and frees it after its last."""
    out = []
    for j, step in enumerate(steps):
        full, empty = Lock.step(f"core.w{j % 2}", "full"), Lock.step(f"core.w{j % 2}", "empty")
        new = []
        for op, iters, acq, rel, halts, v in step:
            if op == "LOADWM":
                acq, rel, halts = acq + (empty,), rel + (full,), False
            elif op == "COMP":
                acq, rel = acq + (full,), rel + (empty,)
            new.append((op, iters, acq, rel, halts, v))
        out.append(new)
    return out


def test_double_buffered_weights_do_not_halt(base):
    # test_loadwm_halts_the_cores with the weight buffer in two halves: LOADWM 1 fills half 1 at
    # 1.5-2.5 while the cores compute step 0 (1.5-3.5); tiles 2, 3 stream into core.in as COMP 0, 1
    # free it, and COMP runs 1.5-5.5 without a gap: 5.5 µs, no halt
    p = _program(base, _halves([_step(j, 2, B / 2, C, lw=[D / 2], lwm=[B]) for j in range(2)]))
    assert _both(p) == pytest.approx((5.5 * U, 5.5 * U), rel=1e-12)
    r = replay(p)
    assert r.halted_s == 0.0 and r.busy_s["COMP"] == pytest.approx(4 * U, rel=1e-12)


def test_double_buffered_loadwm_waits_for_the_last_reader_of_its_half(base):
    # 3 steps of 1 tile: LOADW 1, LOADWM 1, LOADFM 1, COMP 3 µs. Halves: W0 0-1, WM0 1-2, C0 2-5;
    # W1 1-2, WM1 (half 1) 2-3, C1 5-8; W2 (slot 0, emptied at 2) 2-3, WM2 (half 0) waits for C0 to
    # free it: 5-6, C2 8-11 -> 11 µs. Halting: WM1 5-6, C1 6-9, WM2 9-10, C2 10-13 -> 13 µs
    steps = [_step(j, 1, B, 3 * C, lw=[D], lwm=[B]) for j in range(3)]
    assert _both(_program(base, _halves(steps))) == pytest.approx((11 * U, 11 * U), rel=1e-12)
    assert _both(_program(base, steps)) == pytest.approx((13 * U, 13 * U), rel=1e-12)
    # without cut-through LOADWM takes its half's lock with the whole chunk's: the same here (1 piece)
    assert replay(_program(base, _halves(steps)), ReplayRules(cut_through=False)).total_s == \
        pytest.approx(11 * U, rel=1e-12)


def _two_layers(base: Program, prefetch: bool) -> Program:
    """Layer 0: LOADFM 1, COMP 5 µs, no weights. Layer 1: LOADW 1 (into wpre if ``prefetch``, else
    weight slot 0), LOADWM 1, LOADFM 1, COMP 1 µs."""
    area = Operand.staging("wpre", 64) if prefetch else Operand.staging("wslot0")
    name = "wpre" if prefetch else "wslot0"
    full, empty = Lock.piece(name, "full"), Lock.piece(name, "empty")
    rows = [(0, "LOADFM", (Operand.ddr(0),), (Operand.core("in"),), (IN_E,), (IN_F,), False, B),
            (0, "COMP", (Operand.core("in"),), (Operand.core("out"),), (IN_F,), (IN_E,), False, 5 * C),
            (1, "LOADW", (Operand.ddr(0),), (area,), (empty,), (full,), False, D),
            (1, "LOADWM", (area,), (Operand.core("w"),), (full,), (empty,), True, B),
            (1, "LOADFM", (Operand.ddr(0),), (Operand.core("in"),), (IN_E,), (IN_F,), False, B),
            (1, "COMP", (Operand.core("in"),), (Operand.core("out"),), (IN_F,), (IN_E,), False, C)]
    instrs = [Instr(op, li, 0, 0, 0, 0, 1, src, dst, 0, k, acq, rel, halts)
              for k, (li, op, src, dst, acq, rel, halts, _) in enumerate(rows)]
    return dataclasses.replace(base, layers=base.layers[:2], instrs=tuple(instrs),
                               per_iter=np.array([v for *_, v in rows], float))


def test_prefetched_weights_load_during_the_layer_before(base):
    # prefetch: layer 1's LOADW runs 0-1 beside layer 0 (0-6); layer 1 then LOADWM 6-7, COMP 7-8:
    # 8 µs, layer 1 spans 2 µs. Without: LOADW 6-7, LOADWM 7-8, COMP 8-9: 9 µs, layer 1 3 µs
    for prefetch, total, second in ((True, 8, 2), (False, 9, 3)):
        p = _two_layers(base, prefetch)
        assert p.instrs[2].prefetch is prefetch
        r, m = replay(p), estimate_program(p)
        assert (r.total_s, m.total_s) == pytest.approx((total * U, total * U), rel=1e-12)
        assert [s.seconds for s in r.layers] == pytest.approx([6 * U, second * U], rel=1e-12)
        assert [sec for _, _, sec in m.layers] == pytest.approx([6 * U, second * U], rel=1e-12)
        # the LOADW's own start: at 0 beside layer 0, or with its layer at 6
        assert r.instr_start_s[2] == pytest.approx(m.instrs[2].start_s, abs=1e-18)
        assert m.instrs[2].start_s == pytest.approx(0.0 if prefetch else 6 * U, abs=1e-18)


def test_weight_cut_through_the_docs_example(base):
    # docs/time-model.md: 321 B of weights in pieces of 84, 80, 80, 77 B; LOADFM 256 B, COMP 80
    # cycles, WRITEFM 256 B, one tile. LOADWM starts when piece 0 is in and never waits for a later one
    pieces = [84.0, 80.0, 80.0, 77.0]
    p = _program(base, [_step(0, 1, 256, 80, 256, lw=pieces, lwm=pieces)])
    bw, clk = HW.links.memtile_to_core_bytes_per_s, HW.clock_hz
    want = (84 + 321 + 256) / bw + 80 / clk
    assert want == pytest.approx(245.25e-9)
    assert _both(p) == pytest.approx((want, want), rel=1e-12)
    # without cut-through LOADWM waits for the whole chunk: (321 + 321 + 256) B + 80 cycles
    assert replay(p, ReplayRules(cut_through=False)).total_s == pytest.approx(304.5e-9, rel=1e-12)


def test_cut_through_loadwm_waits_piece_by_piece(base):
    # LOADW pieces 1 µs, LOADWM pieces 0.5 µs: piece i arrives at i+1, is copied by i+1.5; the last
    # piece is in the cores at 4.5, then COMP 1: 5.5 µs (no cut-through: 4 + 2 + 1 = 7 µs)
    p = _program(base, [_step(0, 1, B, C, lw=[D] * 4, lwm=[B / 2] * 4)])
    assert _both(p) == pytest.approx((5.5 * U, 5.5 * U), rel=1e-12)
    assert replay(p, ReplayRules(cut_through=False)).total_s == pytest.approx(7 * U, rel=1e-12)


def test_loadw_prefetch(base):
    # 3 steps: LOADW 1, LOADWM 1, COMP 1 µs. LOADW j+1 streams while step j runs, LOADW 2 waits for
    # slot 0 (emptied at 2): W 0-1, WM 1-2, C 2-3 | W 1-2, WM 3-4, C 4-5 | W 2-3, WM 5-6, C 6-7
    p = _program(base, [_step(j, 1, 0.0, C, lw=[D], lwm=[B]) for j in range(3)])
    assert _both(p) == pytest.approx((7 * U, 7 * U), rel=1e-12)
    # no prefetch: each step W → WM → C after the previous one: 3 x 3 µs
    assert replay(p, ReplayRules(loadw_prefetch=False)).total_s == pytest.approx(9 * U, rel=1e-12)


def test_slot_release_per_piece(base):
    # 3 steps, 2 pieces: LOADW 0.5, LOADWM 1 µs per piece. LOADWM 0 copies its pieces 0.5-1.5,
    # 1.5-2.5; LOADW 1 runs 1-2. LOADW 2 (slot 0) starts at 2.5 when the slot counts as emptied as
    # a whole (rule 6), at 2.0 when piece 0 alone must be (the per-piece locks)
    p = _program(base, [_step(j, 1, 0.0, 0.0, lw=[D / 2] * 2, lwm=[B] * 2) for j in range(3)])
    lw2 = [i for i, ins in enumerate(p.instrs) if ins.op == "LOADW"][2]
    assert replay(p).instr_start_s[lw2] == pytest.approx(2.5 * U, rel=1e-12)
    assert replay(p, ReplayRules(slot_release="piece")).instr_start_s[lw2] == pytest.approx(2 * U, rel=1e-12)


def test_deadlock_is_named(base):
    comp_only = [t for t in _step(0, 1, B, C) if t[0] == "COMP"]  # COMP without its LOADFM
    with pytest.raises(ReplayError, match=r"deadlock: COMP #0 .* waits for core.in\[0\].full"):
        replay(_program(base, [comp_only]))


def test_bad_rule_is_refused():
    with pytest.raises(ValueError, match="slot_release 'half'"):
        ReplayRules(slot_release="half")


def test_layers_one_after_another_or_as_their_data_allows(base):
    r = replay(base)
    assert [s.start_s for s in r.layers[1:]] == [s.end_s for s in r.layers[:-1]]
    free = replay(base, ReplayRules(layer_barrier=False))
    assert free.total_s <= r.total_s
    for li, rec in enumerate(base.layers):  # a layer's reads start after the layers that wrote them end
        reads = [i for i, ins in enumerate(base.instrs) if ins.layer == li and ins.op in ("LOAD", "LOADFM")]
        first = min(free.instr_start_s[i] for i in reads)
        bufs = {t.buffer for t in rec.inputs}
        assert all(first >= free.layers[m].end_s for m in range(li) if base.layers[m].output.buffer in bufs)
    # without the data dependences (the ceiling of any cross-layer overlap): no later than with them, and
    # some layer reads before the layer that writes its input has ended
    ideal = replay(base, ReplayRules(layer_barrier=False, layer_data_deps=False))
    assert ideal.total_s <= free.total_s
    early = [(li, m) for li, rec in enumerate(base.layers) for m in range(li)
             if base.layers[m].output.buffer in {t.buffer for t in rec.inputs}
             and min(ideal.instr_start_s[i] for i, ins in enumerate(base.instrs)
                     if ins.layer == li and ins.op in ("LOAD", "LOADFM")) < ideal.layers[m].end_s]
    assert early


# ---- equal to the time model, layer by layer, on compiled networks (the benchmark's reduced form) ----
def _graphs():
    from frontend_nets import TinyInception, TinyResNet

    yield "digits_cnn", None, (1, 1, 28, 28)
    yield "tiny_resnet", TinyResNet(), (1, 3, 32, 32)
    yield "tiny_inception", TinyInception(), (1, 3, 16, 16)


@pytest.mark.parametrize("name,module,shape", list(_graphs()), ids=lambda v: v if isinstance(v, str) else "")
@pytest.mark.parametrize("sparsity", [0.0, 0.5])
@pytest.mark.parametrize("profile", ["tilesparse", "paper", "measured"])
def test_replay_equals_the_time_model_per_layer(name, module, shape, sparsity, profile):
    g = build_graph_from(module if module is not None else name, sparsity=sparsity, block=(8, 8),
                         input_shape=shape, quantized=False, seed=0).graph
    for arr in ("4x4", "4x2"):
        p = compile_graph(g, arr)
        model, rep = estimate_program(p, profile), replay(p, profile)
        got = [s.seconds for s in rep.layers]
        want = [sec for _, _, sec in model.layers]
        assert got == pytest.approx(want, rel=1e-9, abs=1e-18), f"{name} {sparsity} {arr} {profile}"
        assert rep.total_s == pytest.approx(model.total_s, rel=1e-9)
        for op, busy in model.busy_by_op(p).items():
            assert rep.busy_s[op] == pytest.approx(busy, rel=1e-9), op


def test_simulate_timing_reports_both_side_by_side(tmp_path):
    import json

    from typer.testing import CliRunner

    from tilesparse.cli.main import app

    out = tmp_path / "r.json"
    r = CliRunner().invoke(app, ["simulate", "digits_cnn", "-a", "2x2", "--sparsity", "0.5", "--timing",
                                 "--json", str(out)])
    assert r.exit_code == 0, r.output
    t = json.loads(out.read_text())["timing"]
    assert t["equal"] and len(t["layers"]) == 8
    for row in t["layers"]:  # the replay's own number, and the difference of the two
        assert row["diff_s"] == pytest.approx(row["replay_s"] - row["model_s"], abs=1e-18)
    assert t["replay_s"] == pytest.approx(t["model_s"], rel=1e-9)
    assert t["layers"][-1]["replay_end_s"] == pytest.approx(t["replay_s"], rel=1e-12)
    # halted: 0 here, every weight reload double-buffered (core.weight_double_buffer; the halted
    # seconds themselves are checked in test_double_buffered_weights_do_not_halt)
    assert t["replay_busy_s"]["COMP"] > 0 and t["replay_halted_s"] >= 0
    assert "cores halted by LOADWM" in r.output


def test_an_instruction_of_no_iterations_takes_no_time(base):
    steps = [_step(0, 2, B, C, B)]
    steps[0].append(("WRITE", 0, (), (), False, []))  # nothing to write back
    r = replay(_program(base, steps))
    assert r.total_s == pytest.approx(4 * U, rel=1e-12)  # 1 + 2 x 1 + 1: LOADFM, COMP, COMP, WRITEFM
    assert r.layers[0].seconds == pytest.approx(4 * U, rel=1e-12)


def test_the_paper_profile_serialises_the_docs_example(base):
    # LOADW → LOADWM → LOADFM → COMP → WRITEFM one after another: (321 + 321 + 256 + 256) B + 80 cycles
    from tilesparse.sim.replay import PROFILES

    pieces = [84.0, 80.0, 80.0, 77.0]
    p = _program(base, [_step(0, 1, 256, 80, 256, lw=pieces, lwm=pieces)])
    want = (321 + 321 + 256 + 256) / HW.links.memtile_to_core_bytes_per_s + 80 / HW.clock_hz
    assert replay(p, PROFILES["paper"]).total_s == pytest.approx(want, rel=1e-12)
    assert replay(p, PROFILES["tilesparse"]).total_s == pytest.approx(245.25e-9, rel=1e-12)


# ---- the time model under a profile gives the replay's hand-computed answers (rules changed one by one) ----
def _profile(**rules):
    from tilesparse.hw import TILESPARSE

    return dataclasses.replace(TILESPARSE, name="test", **rules)


def test_the_time_model_follows_cut_through_off(base):
    p = _program(base, [_step(0, 1, B, C, lw=[D] * 4, lwm=[B / 2] * 4)])
    prof = _profile(cut_through=False)
    assert estimate_program(p, prof).total_s == pytest.approx(7 * U, rel=1e-12)  # 4 + 2 + 1
    assert replay(p, prof).total_s == pytest.approx(7 * U, rel=1e-12)


def test_the_time_model_follows_prefetch_off(base):
    p = _program(base, [_step(j, 1, 0.0, C, lw=[D], lwm=[B]) for j in range(3)])
    prof = _profile(loadw_prefetch=False)
    assert estimate_program(p, prof).total_s == pytest.approx(9 * U, rel=1e-12)  # 3 x (W + WM + C)
    assert replay(p, prof).total_s == pytest.approx(9 * U, rel=1e-12)


def test_the_time_model_serialises_one_iteration_steps_under_the_paper(base):
    # docs example under the paper: (321 + 321 + 256 + 256) B + 80 cycles; tilesparse: 245.25 ns
    pieces = [84.0, 80.0, 80.0, 77.0]
    p = _program(base, [_step(0, 1, 256, 80, 256, lw=pieces, lwm=pieces)])
    want = (321 + 321 + 256 + 256) / HW.links.memtile_to_core_bytes_per_s + 80 / HW.clock_hz
    assert estimate_program(p, "paper").total_s == pytest.approx(want, rel=1e-12)
    assert estimate_program(p, "tilesparse").total_s == pytest.approx(245.25e-9, rel=1e-12)
    # two serial steps of LOADFM 1, COMP 1, WRITEFM 1 µs: 6 µs in sequence (overlapped: 4 µs)
    p2 = _program(base, [_step(j, 1, B, C, B) for j in range(2)])
    prof = _profile(serial_single_steps=True)
    assert estimate_program(p2, prof).total_s == pytest.approx(6 * U, rel=1e-12)
    assert replay(p2, prof).total_s == pytest.approx(6 * U, rel=1e-12)
    assert _both(p2) == pytest.approx((4 * U, 4 * U), rel=1e-12)


def test_measured_scales_comp_and_adds_the_call(base):
    from tilesparse.hw import MEASURED

    p = _program(base, [_step(0, 1, B, C, B)])  # LOADFM 1, COMP 1, WRITEFM 1 µs
    eff, call = MEASURED.measured.kernel_efficiency, MEASURED.measured.invocation_s
    want = 2 * U + U / eff + call
    assert estimate_program(p, "measured").total_s == pytest.approx(want, rel=1e-12)
    assert replay(p, "measured").total_s == pytest.approx(want, rel=1e-12)
