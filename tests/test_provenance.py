"""The Provenance record: round trip through a saved Program, validation of malformed records."""

from __future__ import annotations

import hashlib

import pytest

from tilesparse.build import compile_source
from tilesparse.errors import ProgramError
from tilesparse.program import Program
from tilesparse.program.provenance import (
    Provenance,
    file_sha256,
    provenance_of,
    set_provenance,
)

GOOD = dict(source="digits_cnn", source_kind="zoo", source_sha256=None, weights=None, weights_sha256=None,
            pattern="block", block=[8, 8], sparsity=0.5, selection="l2-oneshot", seed=0,
            quantization="int8 power-of-two, per-tensor weights", calibration="random normal, n=2, seed=0",
            input_shape=[1, 1, 8, 8], array="aie2-2x2", time_model="tilesparse-v1", balance=True, version="0.1.0")


def test_round_trip_through_a_saved_program(tmp_path):
    prog = compile_source("digits_cnn", "2x2", sparsity=0.5)
    p = provenance_of(Program.load(prog.save(tmp_path / "p.tsp")))
    assert p == Provenance.from_dict(GOOD | {"version": p.version})
    assert p.to_dict()["block"] == [8, 8] and p.quantized
    from tilesparse.compiler.pipeline import compile_graph
    from tilesparse.frontend import build_graph

    bare = compile_graph(build_graph("digits_cnn"), "2x2")  # not through the front door: no record
    assert provenance_of(bare) is None
    set_provenance(bare, p)
    assert provenance_of(bare) == p


@pytest.mark.parametrize("change,needle", [
    ({"sparsity": 1.5}, "sparsity must be a number in [0, 1)"),
    ({"block": [8]}, "block must be two positive integers"),
    ({"block": "8x8"}, "lists of integers"),
    ({"source_kind": "url"}, "source_kind must be one of"),
    ({"balance": "yes"}, "balance must be true or false"),
    ({"colour": "red"}, "unknown field(s) colour"),
])
def test_malformed_records_are_named(change, needle):
    with pytest.raises(ProgramError, match="p.tsp: malformed provenance") as e:
        Provenance.from_dict(GOOD | change, "p.tsp")
    assert needle in str(e.value)
    with pytest.raises(ProgramError, match="missing field"):
        Provenance.from_dict({k: v for k, v in GOOD.items() if k != "seed"}, "p.tsp")
    with pytest.raises(ProgramError, match="expected a mapping"):
        Provenance.from_dict([1, 2], "p.tsp")


def test_file_sha256(tmp_path):
    f = tmp_path / "x.bin"
    f.write_bytes(b"tilesparse" * 1000)
    assert file_sha256(f) == hashlib.sha256(b"tilesparse" * 1000).hexdigest()
