"""The program package: typed records (operands, locks, rows), the format-6 file (structured JSON,
provenance, refusal of older files and corrupt records) and the layout rules, by hand."""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pytest
from compiler_helpers import small_graph

from tilesparse.compiler.pipeline import compile_graph
from tilesparse.errors import ProgramError
from tilesparse.program import (
    FORMAT_VERSION,
    ChunkRow,
    Instr,
    LayerGeometry,
    LayerPartition,
    Lock,
    Operand,
    Program,
    Provenance,
    SubVolume,
)
from tilesparse.program.layout import (
    chunk_with_inputs,
    even_chunk,
    tile_grid,
    tile_window,
)


@pytest.fixture(scope="module")
def prog():
    return compile_graph(small_graph(), "3x2")


def _arrays(prog) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(prog.to_bytes())) as z:
        return {k: z[k] for k in z.files}


def _write(tmp_path, arrays, header) -> str:
    arrays = {**arrays, "header": np.frombuffer(json.dumps(header).encode(), np.uint8)}
    path = tmp_path / "p.tsp"
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


# ---- operands and locks --------------------------------------------------------------------------
def test_operands_and_locks_print_as_the_listing_writes_them():
    assert [str(o) for o in (Operand.ddr(1024), Operand.memtile("x", 64), Operand.staging("wslot1"),
                             Operand.core("in"))] == ["ddr@1024", "memtile:x@64", "memtile.wslot1", "core.in"]
    assert Operand.staging("wslot1").slot == 1 and Operand.staging("stage_in").slot is None
    assert Operand.memtile("wslot0", 0).slot is None  # an activation buffer named like a slot is not one
    par, piece = Lock.parity("core.in", "full"), Lock.piece("wslot0", "empty")
    assert (str(par), str(piece)) == ("core.in[i%2].full", "wslot0[i].empty")
    assert (par.resolve(7, 1), piece.resolve(3, 0)) == ("core.in[1].full", "wslot0[3].empty")


@pytest.mark.parametrize("make,match", [
    (lambda: Operand("sram", "x"), "operand memory 'sram'"),
    (lambda: Operand.core("acc"), "operand core buffer 'acc'"),
    (lambda: Operand.staging("wslot2"), "operand staging buffer 'wslot2'"),
    (lambda: Operand.ddr(-4), "address -4"),
    (lambda: Lock("core.w", "parity", "full"), "lock name 'core.w'"),
    (lambda: Lock.parity("core.in", "half"), "state 'half'"),
    (lambda: Instr("MOVE", 0, 0, 0, 0, 0, 1, (), (), 0, 0), "op 'MOVE'"),
    (lambda: Instr("COMP", 0, 0, 0, 0, 0, 1.5, (), (), 0, 0), "COMP iters 1.5"),
])
def test_bad_records_are_refused_naming_the_field(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_records_are_immutable(prog):
    rec = prog.layers[0]
    assert isinstance(rec.cores, tuple) and isinstance(rec.chunks, tuple) and isinstance(prog.instrs, tuple)
    with pytest.raises(dataclasses.FrozenInstanceError):
        rec.cores = ()  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        rec.chunks[0].nbytes = 0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        prog.instrs[0].src = ()  # type: ignore[misc]


def test_geometry_must_match_the_record():
    rec = compile_graph(small_graph(), "3x2").layers[0]
    with pytest.raises(ValueError, match="geometry reads 2 input"):
        dataclasses.replace(rec, geometry=dataclasses.replace(rec.geometry, n_in=2))


# ---- the file --------------------------------------------------------------------------------------
def test_header_is_structured_json(prog):
    h = json.loads(_arrays(prog)["header"].tobytes().decode())
    assert h["version"] == FORMAT_VERSION == 10
    comp = next(i for i in h["instrs"] if i["op"] == "COMP")
    assert comp["src"] == [{"memory": "core", "buffer": "in", "addr": 0}, {"memory": "core", "buffer": "w", "addr": 0}]
    assert {"name": "core.in", "per": "parity", "state": "full"} in comp["acquire"]
    loadwm = next(i for i in h["instrs"] if i["op"] == "LOADWM")
    assert loadwm["halts"] is True and loadwm["acquire"] == [{"name": "wslot0", "per": "piece", "state": "full"}]
    layer = h["layers"][0]
    assert set(layer["cores"][0]) == {"row", "col", "oc0", "oc1", "h0", "h1", "w0", "w1", "oc_group", "region"}
    assert set(layer["chunks"][0]) == {f.name for f in dataclasses.fields(ChunkRow)}
    assert layer["geometry"]["kind"] == "conv" and "kind" not in layer
    assert {"in_zero_frac", "out_zero_frac", "compressed"} <= set(layer) and layer["compressed"] == []


def test_meta_and_provenance_round_trip(prog, tmp_path):
    prov = Provenance(source="small.py:net", source_kind="file", source_sha256="ab" * 32, weights=None,
                      weights_sha256=None, pattern="block", block=(8, 8), sparsity=0.5, selection="l2-oneshot",
                      seed=3, quantization="int8", calibration="random normal, n=2, seed=3",
                      input_shape=(1, 3, 8, 8), array="aie2-2x2", time_model="tilesparse-v1", balance=True,
                      version="0.1.0")
    p = dataclasses.replace(prog, meta={**prog.meta, "note": {"by": "meta"}}, provenance=prov)
    back = Program.load(p.save(tmp_path / "p.tsp"))
    assert back.provenance == prov
    assert back.meta["note"] == {"by": "meta"} and back.meta["channel_orders"] == prog.meta["channel_orders"]
    assert back.layers == prog.layers and back.instrs == prog.instrs
    assert Program.load(prog.save(tmp_path / "q.tsp")).provenance is None


def test_format_5_file_is_refused(prog, tmp_path):
    arrays = _arrays(prog)
    h = json.loads(arrays["header"].tobytes().decode())
    h["version"] = 5
    with pytest.raises(ProgramError, match=r"p\.tsp: program format version 5, this tilesparse reads version 10; "
                                           r"recompile it"):
        Program.load(_write(tmp_path, arrays, h))


@pytest.mark.parametrize("where,change,match", [
    ("instrs", lambda i: i.update(acquire=[{"name": "core.in", "per": "parity", "state": "half"}]),
     r"instruction #3: corrupt record \(lock core.in state 'half'"),
    ("instrs", lambda i: i["src"][0].pop("memory"), r"instruction #3: corrupt record \(.*memory"),
    ("layers", lambda r: r["chunks"][0].pop("nbytes"), r"layer 1: corrupt record \(.*nbytes"),
    ("layers", lambda r: r["geometry"].update(kind="matmul"), r"layer 1: corrupt record \(geometry kind 'matmul'"),
])
def test_corrupt_record_names_it(prog, tmp_path, where, change, match):
    arrays = _arrays(prog)
    h = json.loads(arrays["header"].tobytes().decode())
    item = h[where][3 if where == "instrs" else 1]
    assert where == "instrs" or item["chunks"], "layer 1 of the helper graph is a conv"
    change(item)
    with pytest.raises(ProgramError, match=match):
        Program.load(_write(tmp_path, arrays, h))


def test_flipped_byte_fails_the_crc(prog, tmp_path):
    raw = bytearray(prog.save(tmp_path / "p.tsp").read_bytes())
    at = raw.find(b'"magic"')  # inside the header member's data
    raw[at + 2] ^= 0x20
    (tmp_path / "bad.tsp").write_bytes(bytes(raw))
    with pytest.raises(ProgramError, match="truncated or corrupt.*CRC"):
        Program.load(tmp_path / "bad.tsp")


# ---- layout rules, by hand ---------------------------------------------------------------------------
def test_tiles_and_even_chunks():
    assert tile_grid(0, 5, 2, 7, 2, 3) == [(0, 2, 2, 5), (0, 2, 5, 7), (2, 4, 2, 5), (2, 4, 5, 7), (4, 5, 2, 5),
                                           (4, 5, 5, 7)]
    assert [even_chunk(8, 30, 8, k) for k in range(4)] == [(8, 16), (16, 24), (24, 30), (30, 30)]


def test_chunk_inputs_of_plain_and_grouped_convs():
    sub = SubVolume(oc=8, ci=16, h=1, w=1)
    part = LayerPartition("c", None, (), sub, 1, 2, 1, 1)  # type: ignore[arg-type]
    conv = LayerGeometry("conv", 24, 4, 4, 32, 4, 4)
    assert chunk_with_inputs(conv, part, 0, 8, 1) == (0, 8, 16, 24)  # q = 1: channels 16.. of 24
    assert chunk_with_inputs(conv, part, 4, 4, 0) is None
    grouped = LayerGeometry("conv", 24, 4, 4, 12, 4, 4, groups=4)  # 6 inputs, 3 outputs per group
    assert chunk_with_inputs(grouped, part, 2, 7, 0) == (2, 7, 0, 18)  # groups 0..2
    assert chunk_with_inputs(grouped, part, 2, 7, 1) is None


def test_windows_of_overlapping_and_strided_kernels():
    w3 = tile_window(LayerGeometry("conv", 8, 6, 6, 8, 6, 6, (3, 3), (1, 1), (1, 1)), (0, 2, 4, 6))
    assert w3.rows.tolist() == [-1, 0, 1, 2] and w3.cols.tolist() == [3, 4, 5, 6] and w3.stride == (1, 1)
    # stride 2 >= 1x1 kernel: the strided DMA brings only the positions the windows read
    w1 = tile_window(LayerGeometry("conv", 8, 8, 8, 8, 4, 4, (1, 1), (2, 2)), (1, 3, 0, 2))
    assert w1.rows.tolist() == [2, 4] and w1.cols.tolist() == [0, 2] and w1.stride == (1, 1)
