"""Small networks exercising every COMP kind (strided and ceil-mode pools, padded average pool,
concat copies and slices, flatten of C×H×W, relu6, fused residual adds, per-channel scales) on
arrays from 1x1 to prime and rectangular ones; plus property tests of the decoder and geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from frontend_nets import TinyInception, TinyResNet, TinyVGG, randomize_bn
from hypothesis import given, settings
from hypothesis import strategies as st
from sim_helpers import check_bit_exact

from tilesparse.compiler.layers import LayerSpec
from tilesparse.compiler.pack import chunk_geometry, pack_chunk
from tilesparse.compiler.pipeline import compile_graph
from tilesparse.frontend import build_graph
from tilesparse.hw import load_array
from tilesparse.patterns import prune_oneshot
from tilesparse.program import ChunkRow
from tilesparse.sim import simulate
from tilesparse.sim.compute import decode_chunk, geometry

NETS = {"resnet": (TinyResNet, 32), "inception": (TinyInception, 16), "vgg": (TinyVGG, 12)}


def _built(net: str, sparse: bool, per_channel: bool = False):
    """(quantized graph, the float module it was captured from)."""
    cls, px = NETS[net]
    torch.manual_seed(0)
    m = randomize_bn(cls())
    if sparse:
        prune_oneshot(m, 0.5, (8, 8))
    return build_graph(m, input_shape=(1, 3, px, px), per_channel=per_channel), m


def _graph(net: str, sparse: bool, per_channel: bool = False):
    return _built(net, sparse, per_channel)[0]


@pytest.mark.parametrize("net", sorted(NETS))
@pytest.mark.parametrize("array", ["1x1", "2x3", "4x2", "5x5", "7x7"])
def test_tiny_nets_bit_exact(net, array):
    g, module = _built(net, sparse=array in ("2x3", "5x5"), per_channel=array == "7x7")
    prog = compile_graph(g, array)
    rep = check_bit_exact(g, prog, module=module)  # and within tolerance of the module in float
    assert rep.sim.accounting_ok, [a.notes for a in rep.sim.accounts if not a.ok]
    assert all(a.totals_ok for a in rep.sim.accounts), [(a.name, a.sim_total, a.listed_total)
                                                        for a in rep.sim.accounts if not a.totals_ok]


@pytest.mark.parametrize("pieces", [1, 3, 8])
def test_weight_pieces_bit_exact(pieces):
    """Weights moved in 1, 3 or 8 pieces per slot (cut-through; 8 leaves small chunks with
    empty pieces) compute the same bits, and the simulator counts what the time model charges."""
    hw = load_array("2x3")
    hw = hw.model_copy(update={"memtile": hw.memtile.model_copy(update={"weight_slot_pieces": pieces})})
    g = _graph("resnet", sparse=True)
    prog = compile_graph(g, hw)
    assert {ins.iters for ins in prog.instrs if ins.op in ("LOADW", "LOADWM")} == {pieces}
    rep = check_bit_exact(g, prog)
    assert rep.sim.accounting_ok, [a.notes for a in rep.sim.accounts if not a.ok]
    assert all(a.totals_ok for a in rep.sim.accounts)


def test_simulation_depends_on_input():
    """A different input gives a different output: the simulator computes, it does not replay."""
    g = _graph("resnet", False)
    prog = compile_graph(g, "2x2")
    a = simulate(prog, np.zeros((3, 32, 32), np.int8), progress=False, check=False)
    b = simulate(prog, np.full((3, 32, 32), 17, np.int8), progress=False, check=False)
    assert any(not np.array_equal(a.outputs[k], b.outputs[k]) for k in a.outputs)


def _spec(co: int, ci: int, k: int) -> LayerSpec:
    return LayerSpec(name="c", kind="conv", inputs=("x",), ci=ci, hi=4, wi=4, co=co, ho=4, wo=4,
                     kernel=(k, k), padding=(k // 2, k // 2))


@settings(max_examples=40, deadline=None)
@given(co=st.integers(1, 40), ci=st.integers(1, 40), k=st.sampled_from([1, 3]), seed=st.integers(0, 10**6),
       bias=st.booleans(), data=st.data())
def test_decode_matches_weights(co, ci, k, seed, bias, data):
    """Packing (the compiler's) then decoding (the simulator's) gives back exactly the kept blocks
    of the weight, zeros elsewhere, and the bias; the geometry equals ``chunk_geometry``."""
    rng = np.random.default_rng(seed)
    mask = rng.random((-(-co // 8), -(-ci // 8))) < 0.6
    spec = LayerSpec(**{**_spec(co, ci, k).__dict__, "mask": mask})
    w = rng.integers(-128, 128, (co, ci, k, k)).astype(np.int8)
    b = rng.integers(-10**6, 10**6, co).astype(np.int32)
    o0 = data.draw(st.integers(0, (co - 1) // 8)) * 8
    o1 = data.draw(st.integers(o0 + 1, co))
    cb0 = data.draw(st.integers(0, mask.shape[1] - 1))
    cb1 = data.draw(st.integers(cb0 + 1, mask.shape[1]))
    geo = chunk_geometry(spec, o0, o1, cb0, cb1)
    mine = geometry(spec, o0, o1, cb0, cb1)
    assert np.array_equal(mine.row_ch, geo.row_ch) and np.array_equal(mine.col_w, geo.col_w)
    buf = pack_chunk(spec, w, b if bias else None, geo)
    c0, c1 = cb0 * 8, min(ci, cb1 * 8)
    chunk = decode_chunk(spec, buf, ChunkRow(0, 0, 0, o0, o1, cb0, cb1, 0, len(buf), bias), c0, c1 - c0)
    full = np.repeat(np.repeat(mask, 8, 0), 8, 1)[:co, :ci]
    want = (w * full[:, :, None, None])[o0:o1, c0:c1].astype(np.float64)  # (o, i, kh, kw)
    got = np.zeros_like(want)
    for out, feat, mat in chunk.groups:
        f = np.arange(c1 - c0) if feat is None else feat
        got[np.ix_(out, f)] = mat.reshape(k, k, len(f), len(out)).transpose(3, 2, 0, 1)
    assert np.array_equal(got, want)
    assert (chunk.bias is not None) == bias and (not bias or np.array_equal(chunk.bias, b[o0:o1]))
