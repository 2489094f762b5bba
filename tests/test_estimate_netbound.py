"""The network bound (estimate/bounds.py): each resource's work summed over the network, by hand, with
the MemTile capacity, and never above the estimate (random small networks and arrays)."""

import numpy as np
import pytest
import yaml
from compiler_helpers import conv_node, small_graph

from tilesparse.compiler.pipeline import compile_graph
from tilesparse.estimate.bounds import fusion_bound, network_bound, program_bounds, spill_lower_bytes
from tilesparse.estimate.report import summarize
from tilesparse.estimate.timemodel import estimate_program
from tilesparse.ir.graph import Graph, Node, Op, TensorType


def test_network_bound_by_hand():
    p = compile_graph(small_graph(), "2x2")
    nb = network_bound(p)
    bounds = program_bounds(p)
    w = sum(r.packed_weight_bytes + r.bias_bytes for r in p.layers)
    assert nb.resources["ddr weights"] == pytest.approx(w / (2 * 4e9))
    assert nb.resources["memtile->core weights"] == pytest.approx(w / (2 * 4e9))
    assert nb.resources["compute"] == pytest.approx(sum(b.compute_s for b in bounds))
    # the graph input (16x12x12) is read by c1 and by the residual add fused into c2; the output is fc's 10 B
    assert nb.resources["ddr activations in"] == pytest.approx(2 * 16 * 144 / (2 * 4e9))
    assert nb.resources["ddr write"] == pytest.approx(10 / (2 * 8e9))
    assert nb.spill_bytes == 0
    assert nb.bound_s == max(nb.resources.values()) and nb.limiter in nb.resources
    # each resource summed is at most the sum of the per-layer maxima, which the estimate never beats
    s = summarize(p)
    assert s.net_bound_ms <= s.bound_ms * (1 + 1e-12) <= s.estimate_ms * (1 + 1e-12)
    assert s.net_bound_ms == pytest.approx(nb.bound_s * 1e3) and s.net_ratio >= 1


def _wide_graph() -> Graph:
    """x (8x64x64) -> c1 (32 ch, 128 KiB) -> c2 (8 ch) -> output: c1's output must stay somewhere."""
    rng = np.random.default_rng(1)
    params: dict[str, np.ndarray] = {}
    nodes = [Node("x", Op.INPUT, (), TensorType((1, 8, 64, 64), "int8", -4))]
    n1, _ = conv_node("c1", "x", 8, 32, 64, 64, 1, rng=rng, params=params)
    n2, _ = conv_node("c2", "c1", 32, 8, 64, 64, 1, rng=rng, params=params)
    return Graph(tuple(nodes + [n1, n2, Node("out", Op.OUTPUT, ("c2",), n2.out)]), params, "wide")


def test_memtile_capacity_forces_ddr_writes(tmp_path):
    hw = tmp_path / "small.yaml"
    hw.write_text(yaml.safe_dump({"name": "small", "rows": 2, "cols": 2, "memtile": {"bytes": 32768},
                                  "core": {"data_memory_bytes": 8192, "input_buffer_bytes": 2048,
                                           "output_buffer_bytes": 2048, "weight_buffer_bytes": 2048}}))
    p = compile_graph(_wide_graph(), str(hw))
    on_chip = 2 * 32768 + 4 * 8192
    assert spill_lower_bytes(p) == 32 * 64 * 64 - on_chip  # c1's output, at the boundary c1 | c2
    assert "c1" in p.meta["spilled"]  # the compiler spills it too
    nb = network_bound(p)
    assert nb.spill_bytes == 32 * 64 * 64 - on_chip
    assert nb.resources["ddr write"] == pytest.approx((8 * 64 * 64 + nb.spill_bytes) / (2 * 8e9))
    assert estimate_program(p).total_s >= nb.bound_s
    # the preset's memories hold it: nothing is forced out
    assert spill_lower_bytes(compile_graph(_wide_graph(), "2x2")) == 0


@pytest.mark.parametrize("index", range(8))
def test_estimate_never_below_network_bound(index):
    """Random small networks (tests/fuzz_nets.py: convs, pools, adds, concats, smaller memories) on
    random arrays: estimate >= network bound, and the network bound <= the per-layer bound sum."""
    from fuzz_harness import _compile
    from fuzz_nets import build_module, random_case

    from tilesparse.errors import TilesparseError

    case = random_case(23, index)
    try:
        _, p = _compile(case, build_module(case))
    except TilesparseError:  # a network the compiler rejects (tested elsewhere) has no estimate
        pytest.skip("not compiled")
    s = summarize(p)
    assert s.net_bound_ms > 0
    assert s.net_bound_ms <= s.bound_ms * (1 + 1e-9), case
    assert s.estimate_ms >= s.net_bound_ms * (1 - 1e-9), case


def test_prefetch_bound_by_hand():
    """With DDR weights free to move to earlier layers, a layer keeps its other terms; the weight
    channel carries all weights."""
    from tilesparse.estimate.bounds import prefetch_bound

    p = compile_graph(small_graph(), "2x2")
    bounds = program_bounds(p)
    want = max(sum(max(b.compute_s, b.memtile_s, b.ddr_act_s) for b in bounds),
               sum(r.packed_weight_bytes + r.bias_bytes for r in p.layers) / (2 * 4e9))
    assert prefetch_bound(bounds) == pytest.approx(want)
    # the DDR term split in two: weights (but those prefetched during the layer before), graph input / output
    assert all(b.ddr_s == pytest.approx(max(b.ddr_weight_s - b.prefetched_weight_s, b.ddr_act_s)) for b in bounds)
    assert any(b.prefetched_weight_s > 0 for b in bounds)
    assert network_bound(p).bound_s <= prefetch_bound(bounds) <= sum(b.bound_s for b in bounds) * (1 + 1e-12)


def _chain_graph(hw_px: int, co1: int = 32) -> Graph:
    """x (8 ch) -> c1 (3x3, co1 ch) -> c2 (1x1, 8 ch) -> output: c2 is c1's only reader."""
    rng = np.random.default_rng(2)
    params: dict[str, np.ndarray] = {}
    nodes = [Node("x", Op.INPUT, (), TensorType((1, 8, hw_px, hw_px), "int8", -4))]
    n1, _ = conv_node("c1", "x", 8, co1, hw_px, hw_px, 3, rng=rng, params=params)
    n2, _ = conv_node("c2", "c1", co1, 8, hw_px, hw_px, 1, rng=rng, params=params)
    return Graph(tuple(nodes + [n1, n2, Node("out", Op.OUTPUT, ("c2",), n2.out)]), params, "chain")


def test_fusion_bound_by_hand():
    """Two chained convs: the better of their own bounds summed and the fused group's, by hand: every
    row channel carries both convs' weights; only c1's input and c2's output cross the column channels."""
    p = compile_graph(_chain_graph(16), "2x2")
    b = program_bounds(p)
    mt = 4e9  # MemTile<->core bytes/s per channel (aie2)
    weights = sum(r.packed_weight_bytes + r.bias_bytes for r in p.layers)
    fused = max(b[0].compute_s + b[1].compute_s, b[0].ddr_s + b[1].ddr_s, weights / mt,
                8 * 16 * 16 / (2 * mt), 8 * 16 * 16 / (2 * mt))
    fb = fusion_bound(p, b)
    assert fused < b[0].bound_s + b[1].bound_s  # c1's 32-channel output is what both layers wait for
    assert fb.bound_s == pytest.approx(fused) and fb.groups == (("c1", "c2"),)
    assert fb.bound_s <= sum(x.bound_s for x in b) * (1 + 1e-12)


def test_fusion_bound_needs_room_in_the_cores():
    """An intermediate whose share per core exceeds the core's free data memory is not fused: the bound is
    the per-layer bound sum (c1's 64x64x32 output is 32 KB per core of 2x2, the free memory 16 KB)."""
    p = compile_graph(_chain_graph(64), "2x2")
    fb = fusion_bound(p)
    assert fb.groups == ()
    assert fb.bound_s == pytest.approx(sum(x.bound_s for x in program_bounds(p)))
