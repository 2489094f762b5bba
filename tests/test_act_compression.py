"""DMA activation zero compression (docs/time-model.md, "Activation compression"): the stream
format against hand-computed bytes, the per-layer choice, and small networks simulated bit-exact
with compressed LOADFM / WRITEFM streams whose bytes the time model charges."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from frontend_nets import TinyResNet, randomize_bn
from sim_helpers import check_bit_exact

from tilesparse.compiler.pipeline import compile_graph
from tilesparse.estimate.bounds import program_bounds
from tilesparse.estimate.timemodel import estimate_program
from tilesparse.frontend import build_graph
from tilesparse.hw import load_array
from tilesparse.program import Program
from tilesparse.program import zero_compress as Z


def test_encode_hand_computed():
    # chunk 0 (32 B): non-zeros at 1 (5), 2 (-1 = 0xff), 8 (3); chunk 1 (4 B, the tail): byte 2 (9)
    x = np.zeros(36, np.int8)
    x[[1, 2, 8, 34]] = [5, -1, 3, 9]
    want = [0b110, 0b1, 0, 0, 5, 255, 3, 0,  # mask bits 1, 2, 8; 3 data bytes padded to a word
            0b100, 0, 0, 0, 9, 0, 0, 0]  # the tail's mask (bit 2) and its byte padded
    enc = Z.encode(x)
    assert enc.tolist() == want
    assert Z.compressed_size(x) == 16
    assert Z.decode(enc, 36).view(np.int8).tolist() == x.tolist()


def test_decode_rejects_bad_streams():
    enc = Z.encode(np.arange(1, 9, dtype=np.int8))  # one 8-byte chunk, all non-zero: 4 + 8 B
    with pytest.raises(ValueError, match="end inside the data"):
        Z.decode(enc[:7], 8)
    with pytest.raises(ValueError, match="take 12"):
        Z.decode(np.concatenate([enc, np.zeros(4, np.uint8)]), 8)
    with pytest.raises(ValueError, match="mask bits past its end"):
        Z.decode(enc, 4)


@pytest.mark.parametrize("zero_frac", [0.0, 0.3, 0.6, 0.9])
def test_expected_size_matches_random_data(zero_frac):
    """The expectation (independent zeros) is within 0.5 % of the real size of random data."""
    rng = np.random.default_rng(1)
    x = (rng.integers(1, 100, 200_000) * (rng.random(200_000) >= zero_frac)).astype(np.int8)
    real = Z.compressed_size(x)
    assert Z.expected_size(x.size, float((x == 0).mean())) == pytest.approx(real, rel=5e-3)
    assert Z.encode(x).size == real


def test_no_zeros_not_worth_it():
    assert Z.expected_size(4096, 0.0) == 4096 + 128 * 4  # the masks only add bytes
    assert not Z.saves(4096, 0.0) and not Z.saves(4096, 0.05) and Z.saves(4096, 0.5)


def _compressing(array: str):
    hw = load_array(array)
    return hw.model_copy(update={"dma_compression": hw.dma_compression.model_copy(update={"enabled": True})})


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    m = randomize_bn(TinyResNet())
    return build_graph(m, input_shape=(1, 3, 32, 32)), m


def test_zero_fraction_recorded(tiny, tmp_path):
    g, _ = tiny
    prog = compile_graph(g, _compressing("2x2"))
    relu_outs = [r for r in prog.layers if r.kind == "conv" and g.node(r.name).attrs.get("activation") == "relu"]
    assert relu_outs and all(r.out_zero_frac > 0.2 for r in relu_outs)
    for r in prog.layers:
        assert r.out_zero_frac == g.node(r.fused_add or r.name).attrs["zero_frac"]
        if r.kind == "conv":  # what its producer wrote, whichever buffer the value lives in
            assert r.in_zero_frac == g.node(g.node(r.name).inputs[0]).attrs["zero_frac"], r.name
    # the recorded fraction is the integer reference's on the calibration inputs, not a constant
    assert len({r.out_zero_frac for r in prog.layers}) > 2
    again = Program.load(prog.save(tmp_path / "p.npz"))  # the fields survive the file
    assert again.layers == prog.layers and any(r.compressed for r in again.layers)


@pytest.mark.parametrize("array", ["2x2", "4x2"])
def test_tiny_resnet_bit_exact_compressed(tiny, array):
    g, m = tiny
    prog = compile_graph(g, _compressing(array))
    chosen = {(r.name, op) for r in prog.layers for op in r.compressed}
    assert any(op == "LOADFM" for _, op in chosen) and any(op == "WRITEFM" for _, op in chosen)
    for r in prog.layers:  # chosen exactly where the expected bytes shrink
        for op in ("LOADFM", "WRITEFM"):
            z = Z.zero_frac_of(r, op)
            if z < 0.05:
                assert op not in r.compressed, (r.name, op, z)
    rep = check_bit_exact(g, prog, module=m)
    assert rep.sim.accounting_ok, [a.notes for a in rep.sim.accounts if not a.ok]
    rows = rep.sim.compression
    assert {(n, op) for n, op, *_ in rows} == chosen
    # the real streams carried fewer bytes in all (one layer may lose a little on an input with
    # fewer zeros than calibration had), about what the time model expected from calibration
    assert sum(r[3] for r in rows) < 0.9 * sum(r[2] for r in rows)
    assert sum(r[3] for r in rows) == pytest.approx(sum(r[4] for r in rows), rel=0.15)
    for name, op, _raw, got, want in rows:
        assert got == pytest.approx(want, rel=0.35), (name, op, got, want)


def test_compression_shortens_estimate_and_off_is_today(tiny):
    g, _ = tiny
    hw = _compressing("2x2")
    on, off = compile_graph(g, hw), compile_graph(g, hw, act_compression="off")
    hw_off = hw.model_copy(update={"dma_compression": hw.dma_compression.model_copy(update={"enabled": False})})
    plain = compile_graph(g, hw_off)  # an array without compression: as before, whatever the mode
    assert all(not r.compressed for r in off.layers) and all(not r.compressed for r in plain.layers)
    t_on, t_off = estimate_program(on).total_s, estimate_program(off).total_s
    assert t_on < t_off
    assert estimate_program(plain).total_s == pytest.approx(t_off)
    assert [r.compressed for r in compile_graph(g, "2x2").layers] == [r.compressed for r in on.layers]  # shipped
    for b, (_, _, s) in zip(program_bounds(on), estimate_program(on).layers, strict=True):
        assert s >= b.bound_s * (1 - 1e-9), b.layer
    with pytest.raises(ValueError, match="act-compression 'maybe'"):
        compile_graph(g, hw, act_compression="maybe")


def test_cli_act_compression(tmp_path):
    import json

    from typer.testing import CliRunner

    from tilesparse.cli.main import app

    runner = CliRunner()
    out = tmp_path / "r.tsp"
    r = runner.invoke(app, ["compile", "resnet18", "-a", "2x2", "--input-shape", "1,3,32,32", "-o", str(out)])
    assert r.exit_code == 0, r.output
    prog = Program.load(out)
    assert any(rec.compressed for rec in prog.layers)  # the shipped description compresses
    r = runner.invoke(app, ["estimate", str(out), "--top", "0", "--json", str(tmp_path / "on.json")])
    assert r.exit_code == 0, r.output
    on = json.loads((tmp_path / "on.json").read_text())
    assert on["layers"][0]["in_zero_frac"] == prog.layers[0].in_zero_frac
    r = runner.invoke(app, ["estimate", str(out), "--act-compression", "off", "--json", str(tmp_path / "off.json")])
    off = json.loads((tmp_path / "off.json").read_text())
    assert all(not row["compressed"] for row in off["layers"]) and off["estimate_ms"] > on["estimate_ms"]
    r = runner.invoke(app, ["estimate", str(out), "--act-compression", "maybe"])
    assert "--act-compression maybe: expected one of auto, off" in str(r.exception)
