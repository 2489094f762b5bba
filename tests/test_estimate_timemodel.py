"""The time model against hand-computed instruction times."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tilesparse.compiler.layers import LayerSpec
from tilesparse.compiler.partition import SubVolume
from tilesparse.compiler.planning import plan_layer
from tilesparse.hw import load_array
from tilesparse.timing import (
    engine_bound_s,
    layer_time,
    layer_time_arrays,
    pipeline_s,
    stage_seconds,
    transfer_s,
)

HW = load_array("1x1")  # 4 GB/s channels, 8 GB/s write, 256 MAC/cycle (4x8x8), 1 GHz, 64-cycle calls


def test_transfer_uses_the_channel_bandwidth():
    assert transfer_s("LOADFM", 4000, HW) == pytest.approx(1e-6)
    assert transfer_s("WRITE", 8000, HW) == pytest.approx(1e-6)
    assert transfer_s("LOADW", 4e9, HW) == pytest.approx(1.0)


def test_pipeline_overlaps_stages_plus_fill():
    # stages 1, 2, 1 s per iteration, 3 iterations: max 2 x 3 + fill (1 + 2 + 1 - 2) = 8
    d = {"LOADFM": np.ones(3), "COMP": np.full(3, 2.0), "WRITEFM": np.ones(3)}
    assert pipeline_s(d) == pytest.approx(8.0)
    assert pipeline_s({k: v[:1] for k, v in d.items()}) == pytest.approx(4.0)  # one iteration: in sequence
    # a layer of that one step (no weights; bytes and cycles worth 1 s and 2 s) takes the same
    raw = {"LOADFM": np.full((1, 3), 4e9), "COMP": np.full((1, 3), 2e9), "WRITEFM": np.full((1, 3), 4e9)}
    assert layer_time_arrays(np.zeros(1), np.zeros(1), raw, HW) == pytest.approx(8.0)


def test_steps_continue_one_pipeline_and_loadwm_stalls_comp():
    # two steps of 2 iterations: LOADFM 1 s, COMP 1 s; LOADWM 1.5 s each, no LOADW wait
    raw = {"LOADFM": np.full((2, 2), 4e9), "COMP": np.full((2, 2), 1e9)}
    lwm = np.full(2, 1.5 * 4e9)
    # per step: max(1, 1 + 1.5) + max(1, 1) = 3.5; fill once = 1 (first LOADFM) -> 8, less the
    # first LOADFM, which moves during the first LOADWM (min(1.5, 1) = 1 s) -> 7
    assert layer_time_arrays(np.zeros(2), lwm, raw, HW) == pytest.approx(7.0)


def test_next_steps_tiles_stream_in_while_the_cores_compute_and_halt():
    # two steps of 2 iterations: LOADFM 1 s, COMP 0.5 s; LOADWM 1 s each (weights already in MemTile)
    # step 0: LOADWM 0-1, LOADFM 0-1, 1-2; COMP 1-1.5, 2-2.5
    # step 1: LOADWM 2.5-3.5 (after the last COMP); LOADFM of its tiles needs only the halves
    # freed by COMP 0 (1.5) and COMP 1 (2.5): 2-3, 3-4; COMP 3.5-4, 4-4.5. The LOADFM channel
    # never idles: 4 s of input + the last COMP
    raw = {"LOADFM": np.full((2, 2), 4e9), "COMP": np.full((2, 2), 0.5e9)}
    assert layer_time_arrays(np.zeros(2), np.full(2, 4e9), raw, HW) == pytest.approx(4.5)


def test_pingpong_parity_carries_over_from_step_to_step():
    # three steps of one iteration: LOADFM 1 s, COMP 1 s, LOADWM 0.5 s. Iteration g uses half g mod 2,
    # counted across the steps (docs/program.md), so step 1's tile goes to half 1 during COMP 0:
    # LOADWM 0-0.5, LOADFM 0-1 (half 0), COMP 1-2; LOADWM 2-2.5, LOADFM 1-2 (half 1), COMP 2.5-3.5;
    # LOADWM 3.5-4, LOADFM 2-3 (half 0, freed by COMP 0 at 2), COMP 4-5. (With the parity restarting
    # at every step, each LOADFM would wait for the previous COMP: 6 s.)
    raw = {"LOADFM": np.full((3, 1), 4e9), "COMP": np.full((3, 1), 1e9)}
    assert layer_time_arrays(np.zeros(3), np.full(3, 2e9), raw, HW) == pytest.approx(5.0)
    lt = layer_time([(np.zeros(1), np.full(1, 2e9), {"LOADFM": np.array([4e9]), "COMP": np.array([1e9])})] * 3, HW)
    got = [t for s in lt.steps for t in (s.start_s, s.stage_start_s["LOADFM"], s.stage_start_s["COMP"])]
    assert got == pytest.approx([0.0, 0.0, 1.0, 2.0, 1.0, 2.5, 3.5, 2.0, 4.0])
    assert lt.total_s == pytest.approx(5.0)


def test_engine_bound_is_the_busiest_engine_and_never_above_the_time():
    # the two-step layer above: LOADFM 4 x 1 s, COMP 4 x 0.5 s, LOADWM 2 x 1 s -> cores 2 + 2 = 4 s,
    # LOADFM 4 s: the bound is 4 s; the layer takes 4.5 s (its last COMP after the last LOADFM)
    raw = {"LOADFM": np.full((2, 2), 4e9), "COMP": np.full((2, 2), 0.5e9)}
    assert engine_bound_s(np.zeros(2), np.full(2, 4e9), raw, HW) == pytest.approx(4.0)
    # weights dominate: LOADW 3 s per step on the weight channel
    assert engine_bound_s(np.full(2, 12e9), np.full(2, 4e9), raw, HW) == pytest.approx(6.0)
    assert layer_time_arrays(np.full(2, 12e9), np.full(2, 4e9), raw, HW) >= 6.0


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 3), st.booleans(), st.booleans(), st.data())
def test_no_schedule_beats_the_engine_bound_or_runs_past_the_sequential_sum(n_steps, n_it, n_p, load, write, data):
    ops = ["LOADFM", "COMP", "WRITEFM"] + (["LOAD"] if load else []) + (["WRITE"] if write else [])
    vals = st.floats(0.0, 4e9, allow_nan=False)
    pipe = {op: np.array(data.draw(st.lists(st.lists(vals, min_size=n_it, max_size=n_it), min_size=n_steps,
                                            max_size=n_steps))) for op in ops}
    lw, lwm = (np.array(data.draw(st.lists(st.lists(vals, min_size=n_p, max_size=n_p), min_size=n_steps,
                                           max_size=n_steps))) for _ in range(2))
    t = layer_time_arrays(lw, lwm, pipe, HW, [n_it] * n_steps, [True] * n_steps)
    assert t >= engine_bound_s(lw, lwm, pipe, HW) * (1 - 1e-12)
    # every engine waiting for every other: everything in sequence is the slowest it can be
    seq = sum(float(stage_seconds(op, v, HW).sum()) for op, v in pipe.items())
    seq += float(transfer_s("LOADW", lw, HW).sum() + transfer_s("LOADWM", lwm, HW).sum())
    assert t <= seq * (1 + 1e-12)


def test_first_input_tile_moves_while_the_first_weights_arrive():
    # one step, 2 iterations, input in DDR: LOAD 1 s, LOADFM 1 s, COMP 3 s, WRITEFM 1 s per iteration
    raw = {"LOAD": np.full((1, 2), 4e9), "LOADFM": np.full((1, 2), 4e9), "COMP": np.full((1, 2), 3e9),
           "WRITEFM": np.full((1, 2), 4e9)}
    # without the overlap: LOADW 0.5 + (3 + 0.5 LOADWM) + 3 + fill (1 + 1 + 1) = 10;
    # LOAD 0 and LOADFM 0 (2 s) run during LOADW and LOADWM (1 s): the first COMP starts at 2, not 3
    assert layer_time_arrays(np.full(1, 2e9), np.full(1, 2e9), raw, HW) == pytest.approx(9.0)
    # weights slower than the input (LOADW 2 s + LOADWM 2 s): the whole 2 s lead is hidden
    assert layer_time_arrays(np.full(1, 8e9), np.full(1, 8e9), raw, HW) == pytest.approx(13.0 - 2.0)


def test_loadw_prefetch_and_loadwm_halting():
    # three steps: LOADW 1 s, LOADWM 1 s, pipeline 1 s each (bytes chosen for 1 s at 4 GB/s)
    b = 4e9
    steps = [(b, b, {"COMP": np.array([1e9])})] * 3
    # step 0: W 0-1, LOADWM 1-2, pipe 2-3; step 1: W 1-2, LOADWM 3-4, pipe 4-5;
    # step 2: W waits for slot 0 (freed at 2) -> 2-3, LOADWM 5-6, pipe 6-7
    lt = layer_time(steps, HW)
    assert lt.total_s == pytest.approx(7.0)
    assert [s.start_s for s in lt.steps] == pytest.approx([1.0, 3.0, 5.0])
    arrays = layer_time_arrays(np.full(3, b), np.full(3, b), {"COMP": np.full((3, 1), 1e9)}, HW)
    assert arrays == pytest.approx(7.0)


def test_one_conv_layer_by_hand():
    # 16 -> 16 channels, 1x1 kernel, 4x4 output, dense: one tile, one weight chunk
    mask = np.ones((2, 2), bool)
    spec = LayerSpec("L", "conv", ("x",), 16, 4, 4, 16, 4, 4, mask=mask)
    plan = plan_layer(spec, HW, (False,), False, chooser=lambda n, hw: SubVolume(16, 16, 4, 4))
    (st,) = plan.table.steps()
    weights = 16 * 16 + 1 + 16 * 4  # kept blocks + bitmap (4 bits -> 1 byte) + int32 bias
    # 4 word-aligned weight pieces: bounds 4·ceil(i·321/16) = 0, 84, 164, 244, then 321
    assert HW.memtile.weight_slot_pieces == 4
    assert st.loadw_bytes.tolist() == st.loadwm_bytes.tolist() == [84, 80, 80, 77]
    assert st.loadw_total == weights
    assert st.pipe["LOADFM"].tolist() == [4 * 4 * 16]
    assert st.pipe["WRITEFM"].tolist() == [4 * 4 * 16]
    # COMP: ceil(16 positions / 4) x 2 slabs of 8 outputs x ceil(16 inputs x 1 tap / 8) + 64 cycles
    assert st.pipe["COMP"].tolist() == [4 * 2 * 2 + 64]
    assert st.macs == 16 * 16 * 16
    # one iteration: in sequence, but the input tile moves during LOADW and LOADWM (rule 5).
    # LOADWM starts when piece 0 has arrived (84 B) and never waits for a later piece (piece i
    # arrives at 164, 244, 321 B, before LOADWM gets to it): the weights are in at 84 + 321 B
    want = (84 + weights + 256) / 4e9 + 80e-9
    assert plan.time_s == pytest.approx(want)
    # one piece per slot: LOADWM waits for all of LOADW
    hw1 = HW.model_copy(update={"memtile": HW.memtile.model_copy(update={"weight_slot_pieces": 1})})
    plan1 = plan_layer(spec, hw1, (False,), False, chooser=lambda n, hw: SubVolume(16, 16, 4, 4))
    assert plan1.table.steps()[0].loadw_bytes.tolist() == [weights]
    assert plan1.time_s == pytest.approx((2 * weights + 256) / 4e9 + 80e-9)


def test_weight_pieces_cut_through_by_hand():
    # one step, one iteration of COMP 1 s; 4 pieces: LOADW 1, 1, 1, 1 s, LOADWM 0.5, 0.5, 0.5, 2 s
    # LOADW piece i arrives at 1, 2, 3, 4; LOADWM: 1-1.5, waits, 2-2.5, 3-3.5, then 4-6
    # (piece 3 arrives at 4): weights in at 6, COMP 6-7
    lw = np.array([[1.0, 1.0, 1.0, 1.0]]) * 4e9
    lwm = np.array([[0.5, 0.5, 0.5, 2.0]]) * 4e9
    assert layer_time_arrays(lw, lwm, {"COMP": np.full((1, 1), 1e9)}, HW) == pytest.approx(7.0)
    lt = layer_time([(lw[0], lwm[0], {"COMP": np.array([1e9])})], HW)
    assert (lt.total_s, lt.steps[0].start_s, lt.steps[0].ready_s) == pytest.approx((7.0, 1.0, 6.0))
    assert (lt.steps[0].loadw_s, lt.steps[0].loadwm_s) == pytest.approx((4.0, 3.5))
    # LOADWM slower than LOADW (2 s per piece): it never waits after piece 0: 1 + 8, COMP 9-10
    assert layer_time_arrays(lw, np.full((1, 4), 8e9), {"COMP": np.full((1, 1), 1e9)}, HW) == pytest.approx(10.0)
    # as one piece: 4 + 3.5 + 1
    assert layer_time_arrays(lw.sum(axis=1), lwm.sum(axis=1), {"COMP": np.full((1, 1), 1e9)},
                             HW) == pytest.approx(8.5)


def test_skipped_blocks_cost_nothing():
    mask = np.array([[True, False], [False, False]])
    spec = LayerSpec("L", "conv", ("x",), 16, 4, 4, 16, 4, 4, mask=mask)
    plan = plan_layer(spec, HW, (False,), False, chooser=lambda n, hw: SubVolume(16, 16, 4, 4))
    (st,) = plan.table.steps()
    # slab 0 keeps 8 inputs -> 1 step per 4 positions; slab 1 keeps none
    assert st.pipe["COMP"].tolist() == [4 * 1 + 64]
    assert st.loadw_total == 64 + 1 + 64  # one block + bitmap + bias


def test_matmul_padding_is_paid_per_tap():
    # conv1's shape (7x7, stride 2, 3 input channels) on a 4x4 output: a K vector of 8 holds the
    # channels of one tap (docs/time-model.md, "conv1 padding"), so 3 channels cost as 8 at each
    # of the 49 taps: ceil(16 positions / 4) x 2 slabs x ceil(3 / 8) x 49 + 64 cycles — not the
    # flattened ceil(3 x 49 / 8) = 19 steps per slab (4 x 2 x 19 + 64 = 216)
    spec = LayerSpec("conv1", "conv", ("x",), 3, 8, 8, 16, 4, 4, kernel=(7, 7), stride=(2, 2), padding=(3, 3),
                     mask=np.ones((2, 1), bool))
    plan = plan_layer(spec, HW, (False,), False, chooser=lambda n, hw: SubVolume(16, 3, 4, 4))
    (st,) = plan.table.steps()
    assert st.pipe["COMP"].tolist() == [4 * 2 * 1 * 49 + 64]
    assert st.macs == 16 * 16 * 3 * 49  # the MACs executed are the real ones
