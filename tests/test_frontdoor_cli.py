"""The front door through the CLI: a sparsify checkpoint and a user's file.py:factory go
compile -> simulate (no flags: rebuilt from the program's provenance, bit-exact) -> estimate;
flags that contradict the provenance and changed source files are refused before simulating."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tilesparse.cli.main import app
from tilesparse.errors import ConfigError, ProvenanceError
from tilesparse.program import Program
from tilesparse.program.provenance import provenance_of

runner = CliRunner()

USER_MODEL = '''
from torch import nn


def make():
    # odd channel counts and a grouped conv (groups=3 divides 39 in and 15 out)
    return nn.Sequential(
        nn.Conv2d(3, 13, 3, padding=1), nn.BatchNorm2d(13), nn.ReLU(),
        nn.Conv2d(13, 39, 3, padding=1), nn.ReLU(),
        nn.Conv2d(39, 15, 3, padding=1, groups=3), nn.ReLU(),
        nn.Conv2d(15, 37, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(37, 10))


def not_a_model():
    return 42
'''


def _ok(args):
    r = runner.invoke(app, args)
    assert r.exit_code == 0, (r.output, r.exception)
    return r.output


def kept_blocks(prog: Program, layer: str) -> np.ndarray:
    """The layer's kept-block mask in the model's channel order, decoded from the packed weights'
    bitmaps (docs/program.md: bitmap of block rows x block columns, LSB first) and undoing the
    compiler's channel reordering (meta["channel_orders"])."""
    rec = next(r for r in prog.layers if r.name == layer)
    geo = rec.geometry
    co, groups, (bo, bi) = geo.co, geo.groups, geo.block
    og, ig = co // groups, geo.ci // groups
    keep = np.zeros((co, ig), bool)  # per (stored output channel, input channel of its group)
    base = prog.ddr["weights"][0]
    for ch in rec.chunks:
        oc0, oc1, cb0, cb1, addr = ch.oc0, ch.oc1, ch.cb0, ch.cb1, ch.ddr_addr
        rows = sorted({(o // og) * math.ceil(og / bo) + (o % og) // bo for o in range(oc0, oc1)})
        n = len(rows) * (cb1 - cb0)
        bits = np.unpackbits(prog.weights[addr - base: addr - base + math.ceil(n / 8)], bitorder="little")
        bits = bits[:n].reshape(len(rows), cb1 - cb0).astype(bool)
        for o in range(oc0, oc1):
            r = rows.index((o // og) * math.ceil(og / bo) + (o % og) // bo)
            for j in range(cb1 - cb0):
                c0 = (cb0 + j) * bi
                keep[o, c0:min(c0 + bi, ig)] = bits[r, j]
    orders = prog.meta["channel_orders"]
    out_order = orders.get(rec.output.buffer, list(range(co)))
    in_order = orders.get(rec.inputs[0].buffer, list(range(ig)))
    graph_keep = np.zeros_like(keep)
    graph_keep[np.ix_(out_order, in_order)] = keep
    # back to blocks: a block is kept iff its channels are (every channel of a block agrees)
    rpg = math.ceil(og / bo)
    mask = np.zeros((groups * rpg, math.ceil(ig / bi)), bool)
    for o in range(co):
        for c in range(ig):
            mask[(o // og) * rpg + (o % og) // bo, c // bi] |= graph_keep[o, c]
    return mask


def test_sparsify_checkpoint_compiles_simulates_and_estimates(tmp_path):
    run = tmp_path / "run"
    _ok(["sparsify", "digits_cnn", "--epochs", "1", "--sparsity", "0.5", "--out", str(run)])
    prog_path = tmp_path / "d.tsp"
    _ok(["compile", str(run / "sparse.pt"), "-a", "2x2", "-o", str(prog_path)])
    prog = Program.load(prog_path)
    out = _ok(["simulate", str(prog_path)])
    assert out.count("bit-exact") >= len(prog.layers) and "all 8 layers bit-exact" in out
    assert "lower bound" in _ok(["estimate", str(prog_path)])
    prov = provenance_of(prog)
    assert (prov.source_kind, prov.selection, prov.block, prov.sparsity) == ("checkpoint", "checkpoint-masks",
                                                                            (8, 8), 0.5)
    masks = torch.load(run / "sparse.pt", weights_only=True)["sparsifier"]["masks"]
    assert set(masks) == {"features.3", "features.7", "features.10"}  # the recipe sparsifies convs
    for name, mask in masks.items():
        np.testing.assert_array_equal(kept_blocks(prog, name.replace(".", "_")), mask.numpy(), err_msg=name)
    # the checkpoint is not pruned again, nor with another block shape
    r = runner.invoke(app, ["compile", str(run / "sparse.pt"), "--sparsity", "0.7", "-o", str(tmp_path / "x.tsp")])
    assert isinstance(r.exception, ConfigError) and "not pruned again" in str(r.exception)
    # a checkpoint given as --weights of its zoo name works too, with the same masks
    _ok(["compile", "digits_cnn", "--weights", str(run / "sparse.pt"), "-a", "2x2", "-o", str(tmp_path / "w.tsp")])
    w = Program.load(tmp_path / "w.tsp")
    np.testing.assert_array_equal(kept_blocks(w, "features_7"), masks["features.7"].numpy())


def test_user_file_with_odd_channels_and_groups(tmp_path):
    f = tmp_path / "net.py"
    f.write_text(USER_MODEL)
    prog_path = tmp_path / "u.tsp"
    src = f"{f}:make"
    _ok(["compile", src, "--input-shape", "1,3,12,12", "--sparsity", "0.5", "-a", "2x2", "-o", str(prog_path)])
    prog = Program.load(prog_path)
    grouped = next(r for r in prog.layers if r.geometry.groups == 3)
    assert (grouped.geometry.ci, grouped.geometry.co) == (39, 15)
    out = _ok(["simulate", str(prog_path)])
    assert f"all {len(prog.layers)} layers bit-exact" in out
    _ok(["estimate", str(prog_path), "--top", "0"])
    prov = provenance_of(prog)
    assert prov.source_kind == "file" and prov.input_shape == (1, 3, 12, 12) and len(prov.source_sha256) == 64


@pytest.mark.parametrize("source,needle", [
    ("{f}:nowhere", "defines no function 'nowhere'"),
    ("{f}:not_a_model", "returned int, expected a torch.nn.Module"),
    ("{d}/missing.py:make", "missing.py: no such Python file"),
    ("{f}:make", "give the input shape"),
])
def test_user_file_errors(tmp_path, source, needle):
    f = tmp_path / "net.py"
    f.write_text(USER_MODEL)
    args = ["compile", source.format(f=f, d=tmp_path), "-o", str(tmp_path / "p.tsp")]
    r = runner.invoke(app, args + (["--input-shape", "1,3,8,8"] if "input shape" not in needle else []))
    assert isinstance(r.exception, ConfigError) and needle in str(r.exception), r.exception


def test_contradicting_flags_and_changed_files_are_refused(tmp_path):
    f = tmp_path / "net.py"
    f.write_text(USER_MODEL)
    prog_path = tmp_path / "u.tsp"
    _ok(["compile", f"{f}:make", "--input-shape", "1,3,8,8", "--sparsity", "0.5", "-a", "2x2", "-o",
         str(prog_path)])
    for flag, value, recorded in (("--sparsity", "0.3", "sparsity 0.5"), ("--block", "4x4", "block 8x8"),
                                  ("--input-shape", "1,3,16,16", "input_shape 1,3,8,8"),
                                  ("--array", "3x3", "array aie2-2x2"), ("--model", "digits_cnn", "net.py:make")):
        r = runner.invoke(app, ["simulate", str(prog_path), flag, value])
        msg = str(r.exception)
        assert isinstance(r.exception, ProvenanceError), (flag, r.output)
        assert f"{flag} {value} contradicts" in msg and recorded in msg and str(prog_path) in msg
        assert "simulated" not in r.output  # refused before simulating
    # flags that agree are fine
    _ok(["simulate", str(prog_path), "--sparsity", "0.5", "--block", "8x8", "-a", "2x2"])
    f.write_text(USER_MODEL + "\n# edited\n")
    r = runner.invoke(app, ["simulate", str(prog_path)])
    assert isinstance(r.exception, ProvenanceError) and f"source file {f} changed" in str(r.exception)
    f.unlink()
    r = runner.invoke(app, ["simulate", str(prog_path)])
    assert isinstance(r.exception, ProvenanceError) and "no longer exists" in str(r.exception)


def test_program_without_provenance_checks_accounting_only(tmp_path):
    from tilesparse.compiler.pipeline import compile_graph
    from tilesparse.frontend import build_graph

    path = compile_graph(build_graph("digits_cnn"), "2x2").save(tmp_path / "old.tsp")
    out = _ok(["simulate", str(path)])
    assert "records no provenance: checking byte accounting only" in out


def test_torch_export_pt2_source(tmp_path):
    """A .pt2 compiles (input shape from its example input), verifies bit for bit from its
    provenance, and its lifted modules compute what the exported program computes."""
    from torch import nn

    from tilesparse.source import load_model, parse_source

    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                      nn.Conv2d(16, 24, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                      nn.Linear(24, 10)).eval()
    ep = torch.export.export(m, (torch.randn(1, 3, 16, 16),))
    f = tmp_path / "tiny.pt2"
    torch.export.save(ep, f)
    lm = load_model(parse_source(str(f)))
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(lm.model(x), m(x))
    assert lm.example_shape == (1, 3, 16, 16)
    prog_path = tmp_path / "t.tsp"
    _ok(["compile", str(f), "--sparsity", "0.5", "-a", "2x2", "-o", str(prog_path)])
    prog = Program.load(prog_path)
    assert [r.name for r in prog.layers if r.kind == "conv"] == ["_0", "_4", "_8"]
    assert provenance_of(prog).source_kind == "pt2" and provenance_of(prog).input_shape == (1, 3, 16, 16)
    assert f"all {len(prog.layers)} layers bit-exact" in _ok(["simulate", str(prog_path)])


def test_checkpoint_of_a_user_file_compiles_on_its_own(tmp_path):
    """`sparsify file.py:factory` records that source in its checkpoint, so the checkpoint compiles
    alone (Sequential layer '2' is graph node '_2'); a plain state dict is pointed to --weights."""
    f = tmp_path / "net.py"
    f.write_text(USER_MODEL)
    run = tmp_path / "run"
    _ok(["sparsify", f"{f}:make", "--sparsity", "0.5", "--block", "4x4", "--data", "none", "-o", str(run)])
    prog_path = tmp_path / "c.tsp"
    _ok(["compile", str(run / "sparse.pt"), "--input-shape", "1,3,8,8", "-a", "2x2", "-o", str(prog_path)])
    prog = Program.load(prog_path)
    masks = torch.load(run / "sparse.pt", weights_only=True)["sparsifier"]["masks"]
    assert set(masks) == {"3", "5", "7"}  # the first conv (0) stays dense
    for name, mask in masks.items():
        np.testing.assert_array_equal(kept_blocks(prog, f"_{name}"), mask.numpy(), err_msg=name)
    assert f"all {len(prog.layers)} layers bit-exact" in _ok(["simulate", str(prog_path)])
    torch.save({"weight": torch.zeros(3)}, tmp_path / "sd.pth")
    r = runner.invoke(app, ["compile", str(tmp_path / "sd.pth")])
    assert "pass its architecture's zoo name and --weights" in str(r.exception)


def test_a_program_that_differs_from_its_provenance_exits_1(tmp_path):
    """simulate with no flags verifies against the rebuilt model: a corrupted weight image (the
    last bias byte) is a bit mismatch, exit code 1."""
    prog_path = tmp_path / "d.tsp"
    _ok(["compile", "digits_cnn", "--sparsity", "0.5", "-a", "2x2", "-o", str(prog_path)])
    prog = Program.load(prog_path)
    w = prog.weights.copy()
    w[-1] ^= 0x40
    prog.weights = w
    prog.save(prog_path)
    r = runner.invoke(app, ["simulate", str(prog_path)])
    assert r.exit_code == 1 and "differ at" in r.output
