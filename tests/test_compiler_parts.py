"""Composite patterns in the compiler and simulator: SDQ layers in the ``parts`` weight format (a
masked int8 part plus an int4 part in one chunk, one COMP), TASD terms compiled squashed, and the
``--pattern`` grammar for both."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from frontend_nets import TinyInception, TinyResNet, randomize_bn
from sim_helpers import check_bit_exact

from tilesparse.build import build_graph_from
from tilesparse.cli.common import compile_pattern_args
from tilesparse.compiler.pipeline import compile_graph
from tilesparse.errors import ConfigError
from tilesparse.estimate.bounds import program_bounds
from tilesparse.estimate.timemodel import estimate_program
from tilesparse.hw import load_array
from tilesparse.patterns import NM
from tilesparse.patterns.composite import SDQPattern, TASDPattern, parse_composite
from tilesparse.program import Program
from tilesparse.program.packing import chunk_geometry, pack_parts_chunk, split_parts
from tilesparse.program.parts_format import decode_int4, encode_int4, int4_nbytes
from tilesparse.sim.compute import conv_cycles, conv_tile, decode_chunk


def _net(cls):
    torch.manual_seed(0)
    return randomize_bn(cls()).eval()


def _check_bounds(prog: Program) -> None:
    pt = estimate_program(prog)
    for (name, _, secs), b in zip(pt.layers, program_bounds(prog), strict=True):
        assert secs >= b.floor_s * (1 - 1e-9) and b.floor_s >= b.bound_s * (1 - 1e-12), name


def test_composite_grammar_and_its_errors():
    assert parse_composite("2:4+1:4") == TASDPattern((NM(2, 4), NM(1, 4)))
    assert parse_composite("int8-2:4+int4") == SDQPattern(NM(2, 4), 8, 4)
    assert parse_composite("2:4") is None
    with pytest.raises(ConfigError, match="term 2 is empty"):
        parse_composite("2:4+")
    with pytest.raises(ConfigError, match="2 to 8 bits"):
        parse_composite("int16-2:4+int4")
    assert compile_pattern_args("2:4+1:4", None, None) == (None, None, "2:4+1:4")
    with pytest.raises(ConfigError, match="drop --block / --sparsity"):
        compile_pattern_args("int8-2:4+int4", None, 0.5)


def test_int4_nibbles_match_an_independent_numpy_packing():
    v = np.random.default_rng(0).integers(-8, 8, 37).astype(np.int8)
    buf = encode_int4(v)
    assert len(buf) == int4_nbytes(37) == 20  # 19 bytes of nibbles, padded to 5 words
    u = v.astype(np.int64) & 0xF  # two's complement nibbles, element 2j low, 2j+1 high
    u = np.r_[u, np.zeros(1, np.int64)]
    want = (u[0::2] | (u[1::2] << 4)).astype(np.uint8).tobytes()
    assert buf[:19] == want and buf[19:] == b"\0"
    assert (decode_int4(buf, 37) == v).all()
    with pytest.raises(ValueError, match="value 8 at 1"):
        encode_int4(np.array([0, 8]))


def _sdq_layer(co=16, ci=16, k=3, seed=0):
    """A parts-format layer spec (dense 8x8 mask) and its parts: int8 sparse keeping 2 of every 4
    input channels, int4 dense."""
    from types import SimpleNamespace

    rng = np.random.default_rng(seed)
    ws = rng.integers(-128, 128, (co, ci, k, k)).astype(np.int8)
    ws.reshape(co, ci // 4, 4, k, k)[:, :, 2:] = 0  # 2 of every 4 input channels kept
    wd = rng.integers(-8, 8, (co, ci, k, k)).astype(np.int8)
    spec = SimpleNamespace(name="c", co=co, ci=ci, groups=1, block=(8, 8), kernel=(k, k), taps=k * k,
                           mask=np.ones((co // 8, ci // 8), bool), weight_format="parts")
    return spec, ws, wd


def test_a_parts_chunk_computes_the_shifted_sum_of_both_parts():
    """Packed, decoded from its bytes and multiplied: acc = (x·sparse) << 3 + (x·dense) << 0."""
    from tilesparse.program import ChunkRow, LayerGeometry

    hw = load_array("4x4")
    spec, ws, wd = _sdq_layer()
    bias = np.arange(16, dtype=np.int32)
    geo = chunk_geometry(spec, 0, 16, 0, 2)
    buf = pack_parts_chunk(spec, ws, wd, bias, geo, hw.core.sparse_matmul)
    n = 16 * 16 * 9
    assert len(buf) == 4 + n * 20 // 32 + n // 2 + 64  # bitmap word, masked part, nibbles, bias
    s_buf, d_buf = split_parts(spec, buf, geo, True, hw.core.sparse_matmul)
    assert len(s_buf) == 1 + n + 64 and len(d_buf) == 1 + n
    geom = LayerGeometry("conv", 16, 5, 5, 16, 3, 3, (3, 3), weight_format="parts")
    row = ChunkRow(0, 0, 0, 0, 16, 0, 2, 0, len(buf), True)
    chunk = decode_chunk(geom, buf, row, 0, 16, hw.core.sparse_matmul, (3, 0))
    x = np.random.default_rng(1).integers(-128, 128, (5, 5, 16)).astype(np.int8)
    acc, macs = conv_tile(x, geom, (1, 1), (3, 3), chunk)
    xt = torch.from_numpy(x.transpose(2, 0, 1)[None].astype(np.float64))
    ref = sum(torch.nn.functional.conv2d(xt, torch.from_numpy(w.astype(np.float64))) * 2.0 ** s
              for w, s in ((ws, 3), (wd, 0)))
    assert (acc == ref[0].numpy().transpose(1, 2, 0).reshape(9, 16).astype(np.int64)).all()
    assert (chunk.bias == bias).all() and macs == 2 * 9 * 16 * 16 * 9
    # rule 2 per part: ceil(9 / 4) row steps x 2 slabs x ceil(16 x 9 / 16) steps, sparse and int4 (K 16)
    assert conv_cycles(chunk, 9, 9, hw, "parts") == 3 * 2 * 9 * 2 + hw.core.kernel_call_overhead_cycles


@pytest.mark.parametrize("cls,shape", [(TinyResNet, (1, 3, 32, 32)), (TinyInception, (1, 3, 16, 16))])
@pytest.mark.parametrize("array", ["4x4", "4x2"])
def test_sdq_nets_compile_to_parts_and_simulate_bit_exact(cls, shape, array):
    built = build_graph_from(_net(cls), input_shape=shape, pattern="int8-2:4+int4")
    assert built.pattern == "int8-2:4+int4"
    prog = compile_graph(built.graph, array)
    convs = [r for r in prog.layers if r.kind == "conv"]
    assert [r.geometry.weight_format for r in convs[1:]] == ["parts"] * (len(convs) - 1)
    assert all(len(r.attrs["parts_shifts"]) == 2 for r in convs[1:])
    check_bit_exact(built.graph, prog)  # against the integer reference's sdq sum (quant.sdq)
    _check_bounds(prog)


def test_sdq_costs_the_cycles_of_dense_and_9_of_8_of_its_bytes():
    """Each part runs at twice the int8 rate, so the two cost what one dense int8 pass does; the
    parts pack 20 + 16 bytes per 32 weights."""
    net = _net(TinyResNet)
    dense = compile_graph(build_graph_from(net, input_shape=(1, 3, 32, 32), sparsity=0.0).graph, "4x4")
    sdq = compile_graph(build_graph_from(net, input_shape=(1, 3, 32, 32), pattern="int8-2:4+int4").graph, "4x4")
    for d, s in zip(dense.layers[1:], sdq.layers[1:], strict=True):
        if d.kind == "conv":
            assert s.packed_weight_bytes == pytest.approx(d.packed_weight_bytes * 36 / 32, rel=0.02)


@pytest.mark.parametrize("array", ["4x4", "5x5"])
def test_tasd_compiles_squashed_and_simulates_bit_exact(array):
    built = build_graph_from(_net(TinyResNet), input_shape=(1, 3, 32, 32), pattern="2:4+1:4")
    assert built.pattern == "2:4+1:4"
    convs = [m for m in built.module.modules() if isinstance(m, torch.nn.Conv2d)]
    w = convs[1].weight.detach()  # the sum of a 2:4 and a 1:4 term: 3 of 4 kept
    assert ((w.reshape(w.shape[0], -1, 4, *w.shape[2:]) != 0).sum(2) <= 3).all()
    assert (w != 0).float().mean() > 0.7
    prog = compile_graph(built.graph, array)
    check_bit_exact(built.graph, prog, module=built.module)
    _check_bounds(prog)


@pytest.mark.parametrize("pattern,fmt", [("int8-2:4+int4", "parts"), ("2:4+1:4", "block")])
def test_cli_compiles_a_composite_pattern_and_simulates_the_file(pattern, fmt, tmp_path, run_cli):
    """`compile --pattern` records the pattern; `simulate FILE` rebuilds the graph from the provenance."""
    import json
    run = run_cli
    code, cap = run("compile", "digits_cnn", "-a", "4x4", "--pattern", pattern, "-o", "p.tsp", "--json", "c.json")
    assert code in (0, None), cap.err
    assert json.loads((tmp_path / "c.json").read_text())["provenance"]["pattern"] == pattern
    convs = [r for r in Program.load(tmp_path / "p.tsp").layers if r.kind == "conv"]
    assert {r.geometry.weight_format for r in convs[1:]} == {fmt}
    code, cap = run("simulate", "p.tsp")
    assert code in (0, None), cap.out + cap.err
    assert "accounting: every layer's bytes and MACs equal the time model's" in cap.out
    assert "all 8 layers bit-exact" in cap.out
