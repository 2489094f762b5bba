"""--pattern on the command line: the grammar in --help, a 2:4 run that compiles and simulates, and
clear refusals where a verb cannot take a pattern."""

import json
import sys

import pytest
import torch
from typer.testing import CliRunner

from tilesparse.cli.main import app, main
from tilesparse.patterns import NM
from tilesparse.program import Program
from tilesparse.sparsify.checkpoint import load_checkpoint

runner = CliRunner(env={"COLUMNS": "200"})


def _main(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["tilesparse", *args])
    with pytest.raises(SystemExit) as e:
        main()
    return e.value.code, capsys.readouterr()


@pytest.mark.parametrize("verb", ["sparsify", "compile", "estimate", "simulate", "map", "demo"])
def test_every_verb_with_block_takes_pattern_and_shows_the_grammar(verb):
    r = runner.invoke(app, [verb, "--help"])
    assert r.exit_code == 0 and "--pattern" in r.output and "8x8@0.5" in r.output


def test_sparsify_2_4_then_compile_and_simulate_the_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, cap = _main(monkeypatch, capsys, "sparsify", "digits_cnn", "--pattern", "2:4", "--data", "none", "-o", "r",
                      "--json", "rep.json")
    assert code in (0, None), cap.err
    rep = json.loads((tmp_path / "rep.json").read_text())
    sparse = [la for la in rep["layers"] if la["block"] != "-"]
    assert sparse and all(la["block"] == "2:4" and la["sparsity"] == 0.5 for la in sparse)
    ck = load_checkpoint(tmp_path / "r" / "sparse.pt")
    assert ck.recipe.pattern == "2:4"
    for layer in ck.sparsifier.layers.values():  # every run of 4 input channels keeps exactly 2
        w = layer.module.weight.detach()
        assert NM(2, 4).check(w != 0, tuple(w.shape)) == []
        runs = (w != 0).movedim(1, -1).reshape(*w.shape[:1], *w.shape[2:], -1, 4).sum(-1)
        assert torch.equal(runs, torch.full_like(runs, 2))
    code, cap = _main(monkeypatch, capsys, "compile", "r/sparse.pt", "-a", "2x2", "-o", "p.tsp", "--json", "c.json")
    assert code in (0, None), cap.err
    assert "pattern 2:4 is compiled by the all-zero blocks" in cap.err
    prov = json.loads((tmp_path / "c.json").read_text())["provenance"]
    assert prov["selection"] == "checkpoint-weights" and prov["pattern"] == "2:4"
    formats = {r.name: r.geometry.weight_format for r in Program.load(tmp_path / "p.tsp").layers if r.kind == "conv"}
    trained = {la["name"].replace(".", "_") for la in sparse}
    assert trained and all(formats[n] == "masked" for n in trained), formats  # the trained 2:4 runs natively
    code, cap = _main(monkeypatch, capsys, "simulate", "p.tsp")
    assert code in (0, None), cap.out + cap.err
    assert "bit-exact" in cap.out


@pytest.mark.parametrize("args,says", [
    (["sparsify", "digits_cnn", "--pattern", "2:4", "--block", "8x8"], "--block: give --pattern 2:4 alone"),
    (["sparsify", "digits_cnn", "--pattern", "2:4", "--sparsity", "0.75"], "0.5 sparse by construction"),
    (["sparsify", "digits_cnn", "--pattern", "5:4"], "--pattern"),
    (["compile", "digits_cnn", "--pattern", "2:4", "--block", "8x8"], "--pattern 2:4 sets the weights' structure"),
    (["compile", "digits_cnn", "--pattern", "2:4", "--sparsity", "0.75"], "0.5 sparse by construction"),
    (["compile", "digits_cnn", "--pattern", "8x8@0.5", "--sparsity", "0.75"], "give one"),
    (["estimate", "digits_cnn", "--pattern", "8x8/2:4"], "leaves a level's sparsity free"),
    (["export-onnx", "digits_cnn", "--pattern", "2:4"], "this verb takes block patterns"),
])
def test_refusals_name_the_flag(monkeypatch, capsys, tmp_path, args, says):
    monkeypatch.chdir(tmp_path)
    code, cap = _main(monkeypatch, capsys, *args, "--data", "none") if args[0] == "sparsify" else \
        _main(monkeypatch, capsys, *args)
    assert code == 2 and says in cap.err, cap.err
    assert not (tmp_path / "runs").exists()  # refused before any work


def test_compile_prunes_to_an_nm_pattern_and_the_program_file_verifies(tmp_path, monkeypatch, capsys):
    """--pattern 2:4 prunes one-shot; the layers run in the masked format; the program file alone
    rebuilds the same graph (its provenance records the pattern) and simulates bit-exact."""
    monkeypatch.chdir(tmp_path)
    code, cap = _main(monkeypatch, capsys, "compile", "digits_cnn", "--pattern", "2:4", "-a", "2x2", "-o", "p.tsp",
                      "--json", "p.json")
    assert code in (0, None), cap.err
    rec = json.loads((tmp_path / "p.json").read_text())
    assert rec["provenance"]["pattern"] == "2:4" and rec["provenance"]["selection"] == "l2-oneshot"
    prog = Program.load(tmp_path / "p.tsp")
    masked = [r for r in prog.layers if r.kind == "conv" and r.geometry.weight_format == "masked"]
    assert masked and len(masked) == sum(r.kind == "conv" for r in prog.layers) - 1  # all but the first conv
    code, cap = _main(monkeypatch, capsys, "simulate", "p.tsp")
    assert code in (0, None) and "bit-exact" in cap.out, cap.out + cap.err
    code, cap = _main(monkeypatch, capsys, "estimate", "p.tsp", "--pattern", "1:4")
    assert code == 2 and "--pattern 1:4 contradicts" in cap.err


def test_compile_with_a_block_pattern_equals_block_and_sparsity(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert _main(monkeypatch, capsys, "compile", "digits_cnn", "--pattern", "4x16@0.5", "-a", "2x2", "-o", "a.tsp",
                 "--json", "a.json")[0] in (0, None)
    assert _main(monkeypatch, capsys, "compile", "digits_cnn", "--block", "4x16", "--sparsity", "0.5", "-a", "2x2",
                 "-o", "b.tsp", "--json", "b.json")[0] in (0, None)
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert a["provenance"]["block"] == [4, 16] and a["provenance"]["sparsity"] == 0.5
    assert (a["instructions"], a["packed_weight_bytes"]) == (b["instructions"], b["packed_weight_bytes"])
