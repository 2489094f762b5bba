"""Atomic writes leave nothing half-written; the IR rejects malformed graphs."""

import pytest

from tilesparse.ir import Graph, Node, Op, TensorType
from tilesparse.utils import atomic_write_text


def test_atomic_write_replaces_whole_file(tmp_path):
    p = tmp_path / "sub" / "out.txt"
    atomic_write_text(p, "first")
    atomic_write_text(p, "second")
    assert p.read_text() == "second"
    assert [f.name for f in p.parent.iterdir()] == ["out.txt"]


def test_atomic_write_failure_keeps_old_file(tmp_path):
    import tilesparse.utils.atomic as atomic

    p = tmp_path / "out.txt"
    atomic_write_text(p, "old")

    def boom(f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic._atomic(p, boom)
    assert p.read_text() == "old"
    assert [f.name for f in tmp_path.iterdir()] == ["out.txt"]


def _n(name, op, inputs=(), shape=(1, 8, 4, 4)):
    return Node(name, op, tuple(inputs), TensorType(shape))


def test_graph_order_and_names():
    g = Graph((_n("x", Op.INPUT), _n("r", Op.RELU, ["x"]), _n("y", Op.OUTPUT, ["r"])))
    assert [n.name for n in g.consumers("x")] == ["r"]
    assert g.node("r").out.nbytes == 8 * 16 * 4
    with pytest.raises(ValueError, match="reads 'z' before"):
        Graph((_n("x", Op.INPUT), _n("r", Op.RELU, ["z"])))
    with pytest.raises(ValueError, match="duplicate"):
        Graph((_n("x", Op.INPUT), _n("x", Op.RELU, ["x"])))
