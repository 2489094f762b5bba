"""Program artifact: save/load round trip, bad files, packed weights match the graph, listing."""

import io
import json

import numpy as np
import pytest
from compiler_helpers import small_graph

from tilesparse.compiler.layers import layer_spec
from tilesparse.compiler.pack import chunk_geometry, unpack_chunk
from tilesparse.compiler.pipeline import compile_graph
from tilesparse.errors import ProgramError
from tilesparse.hw import load_array
from tilesparse.program import FORMAT_VERSION, Program


@pytest.fixture(scope="module")
def prog():
    return compile_graph(small_graph(), "3x2")


def test_save_load_round_trip(prog, tmp_path):
    path = prog.save(tmp_path / "p.tsp")
    back = Program.load(path, hw=load_array("3x2"))
    assert back.instrs == prog.instrs
    assert [r.name for r in back.layers] == [r.name for r in prog.layers]
    assert back.layers[0].chunks == prog.layers[0].chunks
    np.testing.assert_array_equal(back.weights, prog.weights)
    np.testing.assert_array_equal(back.per_iter, prog.per_iter)
    assert back.hw == prog.hw and back.buffers == prog.buffers


def test_truncated_file_is_a_program_error(prog, tmp_path):
    data = prog.to_bytes()
    p = tmp_path / "cut.tsp"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ProgramError, match="truncated or corrupt"):
        Program.load(p)
    with pytest.raises(ProgramError, match="no such program"):
        Program.load(tmp_path / "missing.tsp")


def _header(prog) -> dict:
    with np.load(io.BytesIO(prog.to_bytes())) as z:
        return json.loads(z["header"].tobytes().decode())


def test_wrong_version_and_wrong_array(prog, tmp_path):
    header = _header(prog)
    header["version"] = FORMAT_VERSION + 1
    p = tmp_path / "v.tsp"
    buf = io.BytesIO()
    np.savez(buf, header=np.frombuffer(json.dumps(header, default=str).encode(), np.uint8),
             weights=prog.weights, per_iter=prog.per_iter)
    p.write_bytes(buf.getvalue())
    with pytest.raises(ProgramError, match=f"version {FORMAT_VERSION + 1}"):
        Program.load(p)
    good = prog.save(tmp_path / "g.tsp")
    with pytest.raises(ProgramError, match="compiled for array aie2-3x2.*not for aie2-4x4"):
        Program.load(good, hw=load_array("4x4"))


def test_packed_weights_are_the_masked_graph_weights(prog):
    g = small_graph()
    orders = prog.meta["channel_orders"]  # channels the compiler reordered (passes.balance)
    for rec in prog.layers:
        if rec.kind != "conv":
            continue
        spec = layer_spec(g.node(rec.name), g)
        w = g.param(rec.name, "weight")
        b = g.param(rec.name, "bias")
        if rec.name in orders:
            w, b = w[orders[rec.name]], b[orders[rec.name]]
        (src,) = g.node(rec.name).inputs
        if src in orders:
            w = w[:, orders[src]]
        seen = np.zeros(w.shape[:2], dtype=int)
        for r in rec.chunks:
            o0, o1, cb0, cb1, addr, nb, last = r.oc0, r.oc1, r.cb0, r.cb1, r.ddr_addr, r.nbytes, r.with_bias
            geo = chunk_geometry(spec, o0, o1, cb0, cb1)
            got, bias = unpack_chunk(spec, prog.weights[addr:addr + nb].tobytes(), geo, last)
            c0, c1 = cb0 * 8, min(cb1 * 8, w.shape[1])
            np.testing.assert_array_equal(got, w[o0:o1, c0:c1])  # the helper's weights are pre-masked
            if last:
                np.testing.assert_array_equal(bias, b[o0:o1])
            seen[o0:o1, c0:c1] += 1
        assert (seen == 1).all()  # every weight is in exactly one chunk


def test_listing_and_fused_add(prog):
    text = prog.listing()
    assert "c1: conv 16x12x12 -> 24x12x12" in text and "LOADWM" in text and "COMP" in text
    c2 = next(r for r in prog.layers if r.name == "c2")
    assert c2.fused_add == "add" and c2.residual == "x"
    assert c2.inputs[-1].buffer == "x" and c2.attrs["add"]["activation"] == "relu"
    assert "add" not in [r.name for r in prog.layers]
