"""An in-memory nn.Module through the front door: compiled bit-exact, pruned on a copy (the
caller's module untouched), recorded as source_kind "module", and refused a rebuild by simulate
with one clear line (it falls back to checking the byte accounting)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tilesparse.build import build_graph_from, compile_source, graph_from_provenance
from tilesparse.cli.main import app
from tilesparse.errors import ConfigError, ProgramError, ProvenanceError
from tilesparse.program import Program
from tilesparse.program.provenance import Provenance, provenance_of
from tilesparse.sim import verify

SHAPE = (1, 3, 12, 12)


class SmallNet(torch.nn.Module):
    """A stem (kept dense), two 16-channel convs (2x2 blocks of 8x8 each) and a linear head."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.a = torch.nn.Conv2d(16, 16, 3, padding=1)
        self.b = torch.nn.Conv2d(16, 16, 1)
        self.fc = torch.nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.b(torch.relu(self.a(torch.relu(self.stem(x))))))
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _net() -> SmallNet:
    torch.manual_seed(0)
    return SmallNet().train()  # training mode: the front door's eval() must not reach it


def test_module_compiles_bit_exact_and_is_left_unchanged():
    model = _net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prog = compile_source(model, "2x2", sparsity=0.5, input_shape=SHAPE)
    graph = build_graph_from(model, sparsity=0.5, input_shape=SHAPE).graph  # the same, deterministic
    x = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
    rep = verify(prog, graph, x, progress=False)
    assert rep.ok, rep.summary()
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # pruned as the one rule says, checked by hand on layer a: per 8x8 block the sum of squares
    # over (8 out, 8 in, 3, 3), the two lowest of the four blocks masked
    w = before["a.weight"]
    l2 = (w ** 2).sum(dim=(2, 3)).reshape(2, 8, 2, 8).sum(dim=(1, 3)).flatten()
    keep = np.zeros(4, bool)
    keep[l2.argsort()[2:].numpy()] = True
    assert (graph.params["a.mask"].flatten() == keep).all()


def test_module_provenance_and_no_rebuild(tmp_path):
    prog = compile_source(_net(), "2x2", sparsity=0.5, input_shape=SHAPE)
    prog.save(tmp_path / "m.tsp")
    prov = provenance_of(Program.load(tmp_path / "m.tsp"))
    assert (prov.source_kind, prov.source, prov.source_sha256, prov.weights) == ("module", "SmallNet", None, None)
    assert (prov.selection, prov.sparsity, prov.input_shape) == ("l2-oneshot", 0.5, SHAPE)
    with pytest.raises(ProvenanceError, match=r"in-memory model \(SmallNet\): nothing to rebuild it from"):
        graph_from_provenance(prov)
    r = CliRunner().invoke(app, ["simulate", str(tmp_path / "m.tsp")])
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert "compiled from an in-memory model (SmallNet): nothing to rebuild it from; verify it in Python" in out
    assert "checking byte accounting only" in out and "accounting: every layer's bytes" in out
    r = CliRunner().invoke(app, ["simulate", str(tmp_path / "m.tsp"), "--sparsity", "0.3"])
    assert r.exit_code != 0 and "compile_source" in " ".join(str(r.exception or r.output).split())


def test_unpruned_module_masks_its_zero_blocks_and_takes_calibration():
    model = _net()
    with torch.no_grad():
        model.a.weight[:8, 8:] = 0  # one of a's four blocks, by hand
    calib = [np.random.default_rng(i).standard_normal(SHAPE).astype(np.float32) for i in range(3)]
    built = build_graph_from(model, input_shape=SHAPE, calibration=calib)
    prov = built.provenance("aie2-2x2", True)
    # sparsifiable: a, b (4 blocks each) and fc (2x2 blocks of its 10x16) -> 1 of 12 masked
    assert (prov.selection, prov.sparsity, prov.calibration) == ("module-weights", 0.0833, "given: n=3")


@pytest.mark.parametrize("kwargs, needle", [
    ({}, "give input_shape"),
    ({"input_shape": SHAPE, "weights": "w.pth"}, "carries its own weights"),
    ({"input_shape": SHAPE, "calibration": []}, "at least one"),
])
def test_module_errors(kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        build_graph_from(_net(), **kwargs)


def test_calibration_only_with_a_module_and_module_provenance_has_no_hash():
    with pytest.raises(ConfigError, match="in-memory model only"):
        build_graph_from("digits_cnn", calibration=[np.zeros((1, 1, 8, 8), np.float32)])
    d = provenance_of(compile_source(_net(), "2x2", input_shape=SHAPE)).to_dict()
    with pytest.raises(ProgramError, match="no source or weights file"):
        Provenance.from_dict({**d, "source_sha256": "0" * 64})
