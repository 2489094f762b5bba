"""Bad input at the front door, as a user types it: every case ends in one line naming the file
or flag and what was expected, exit code 2, no traceback (run through the console script's
``main``, which prints the error), and no silent default."""

from __future__ import annotations

import json
import pickle
import sys

import numpy as np
import pytest
import torch
from torch import nn

from tilesparse.cli.main import main
from tilesparse.errors import ConfigError

USER = '''
from torch import nn


def make():
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(4))


def boom():
    raise RuntimeError("no such layer config")


def not_a_model():
    return "hello"
'''


def run(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `tilesparse ARGS` through the console script's entry point."""
    monkeypatch.setattr(sys, "argv", ["tilesparse", *args])
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A folder of good and bad inputs (a digits_cnn program compiled once for the program cases)."""
    from tilesparse.build import compile_source
    from tilesparse.models import get_model

    d = tmp_path_factory.mktemp("bad")
    (d / "net.py").write_text(USER)
    (d / "fake.pt2").write_text("not an archive")
    (d / "notes.json").write_text("{}")
    (d / "bad.yaml").write_text("foo: [\n")
    (d / "run").mkdir()
    (d / "run" / "sparse.pt").write_bytes(b"")  # only its name matters: the folder hint
    sd = get_model("digits_cnn").state_dict()
    torch.save({**sd, "features.0.weight": torch.zeros(5, 5)}, d / "shape.pth")
    torch.save({"conv.weight": torch.zeros(3, 3, 3, 3)}, d / "other.pth")
    prog = compile_source("digits_cnn", "2x2", sparsity=0.5).save(d / "p.tsp")
    raw = prog.read_bytes()
    (d / "trunc.tsp").write_bytes(raw[: len(raw) // 2])
    z = dict(np.load(prog))
    h = json.loads(z["header"].tobytes())
    z["header"] = np.frombuffer(json.dumps({**h, "version": 5}).encode(), np.uint8)
    with open(d / "v5.tsp", "wb") as f:
        np.savez(f, **z)
    (d / "dir.tsp").mkdir()
    return d


CASES = [
    (["compile", "missing.py:make"], "missing.py: no such Python file (relative to"),
    (["compile", "run"], "run: is a folder, expected a model source file"),
    (["compile", "run/"], "did you mean run/sparse.pt?"),
    (["compile", "net.py"], "name the function that builds the model: path/to/file.py:factory"),
    (["compile", "net.py:nowhere", "--input-shape", "1,3,8,8"], "net.py defines no function 'nowhere'"),
    (["compile", "net.py:boom", "--input-shape", "1,3,8,8"], "boom() failed: RuntimeError: no such layer config"),
    (["compile", "net.py:not_a_model", "--input-shape", "1,3,8,8"], "returned str, expected a torch.nn.Module"),
    (["compile", "fake.pt2"], "fake.pt2: not a torch.export program"),
    (["compile", "notes.json"], "notes.json: not a model source: expected a zoo name"),
    (["compile", "nosuchnet"], "unknown model 'nosuchnet'"),
    (["compile", "digits_cnn", "--weights", "shape.pth"],
     "not a state dict of digits_cnn: 1 shape mismatch(es): features.0.weight is (5, 5) in the file, "
     "(32, 1, 3, 3) in the model"),
    (["compile", "digits_cnn", "--weights", "other.pth"],
     "26 missing key(s) (features.0.weight, features.1.weight, features.1.bias, ...); "
     "1 unexpected key(s) (conv.weight)"),
    (["compile", "digits_cnn", "--weights", "notes.json"], "not a readable PyTorch state dict (not a torch.save file)"),
    (["compile", "digits_cnn", "--weights", "gone.pth"], "gone.pth: no such weights file"),
    (["compile", "net.py:make", "--weights", "shape.pth"], "only a zoo name takes --weights"),
    (["simulate", "trunc.tsp"], "trunc.tsp: not a readable tilesparse program (truncated or corrupt"),
    (["estimate", "v5.tsp"], "program format version 5, this tilesparse reads version 10; recompile it"),
    (["simulate", "dir.tsp"], "dir.tsp: is a folder, expected a program file"),
    (["compile", "p.tsp"], "p.tsp: is a compiled program, not a model"),
    (["compile", "digits_cnn", "--array", "0x4"], "--array 0x4: array shape must be at least 1x1, got 0x4"),
    (["estimate", "digits_cnn", "-a", "4"], "--array 4: unknown array '4'"),
    (["explore", "--arrays", "2x2,0x3", "--networks", "digits_cnn"], "--arrays 0x3: array shape must be"),
    (["compile", "digits_cnn", "--block", "0x8"], "--block 0x8: block sizes must be positive integers"),
    (["sparsify", "digits_cnn", "--block", "8", "--epochs", "0"], "--block 8: expected 'OUTxIN'"),
    (["demo", "--block", "0x8"], "--block 0x8: block sizes must be positive integers"),
    (["compile", "resnet18", "--input-shape", "1,3,abc"], "--input-shape: expected N,C,H,W such as 1,3,224,224"),
    (["compile", "digits_cnn", "--input-shape", "1,3,8,8"],  # fx's ShapeProp printed a traceback first
     "input shape (1, 3, 8, 8) does not fit the model: Given groups=1, weight of size [32, 1, 3, 3]"),
    (["estimate", "p.tsp", "-o", "x.tsp"], "--out: saves a program compiled from a model source"),
    (["estimate", "p.tsp", "--timeline", "t.txt"], "--timeline t.txt: expected a .html or .png file name"),
    (["sparsify", "digits_cnn", "--method", "bogus"], "command line: --method: Input should be 'oneshot'"),
    (["sparsify", "digits_cnn", "--recipe", "bad.yaml"], "bad.yaml: not valid YAML at line 2, column 1: expected"),
    (["compile", "digits_cnn", "--listing", "-", "--json", "-"], "--listing -: --json - writes to stdout already"),
    (["map", "--layer", "conv:k=8,c=8,p=4,q=4,r=3,s=3", "--sparsity", "0.5"], "--sparsity: applies to a model"),
    (["map", "digits_cnn", "-a", "0x4"], "--array 0x4: array shape must be at least 1x1"),
]


@pytest.mark.parametrize("args,needle", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input_is_one_line_exit_2(files, monkeypatch, capsys, args, needle):
    monkeypatch.chdir(files)
    code, out, err = run(monkeypatch, capsys, *args)
    assert code == 2, (out, err)
    assert err.startswith("error: ") and err.count("\n") == 1, err  # one line, no traceback
    assert needle in err, err


SPARSITY_VERBS = [
    ["compile", "digits_cnn"], ["estimate", "digits_cnn"], ["simulate", "digits_cnn"], ["simulate", "p.tsp"],
    ["estimate", "p.tsp"], ["map", "digits_cnn"], ["sparsify", "digits_cnn", "--epochs", "0"], ["demo"],
    ["explore", "--networks", "digits_cnn", "--arrays", "2x2"],
]


@pytest.mark.parametrize("value", ["nan", "-0.1", "1.5"])
@pytest.mark.parametrize("verb", SPARSITY_VERBS, ids=[v[0] + (" program" if "p.tsp" in v else "") for v in
                                                      SPARSITY_VERBS])
def test_every_verb_refuses_a_sparsity_outside_0_1(files, monkeypatch, capsys, verb, value):
    """nan and negative values used to compile dense; now each verb names the flag and the range
    (on a program too: an invalid value is not merely 'contradicting')."""
    monkeypatch.chdir(files)
    code, out, err = run(monkeypatch, capsys, *verb, "--sparsity", value)
    assert code == 2 and err.count("\n") == 1, err
    assert "--sparsity" in err and "[0, 1)" in err and value in err, err
    assert not (files / "program.tsp").exists()


def test_config_error_survives_a_worker_process():
    """explore's workers send errors back pickled: the error must rebuild (it used to break the
    process pool, a traceback)."""
    e = pickle.loads(pickle.dumps(ConfigError("--arrays 0x3", ["array shape must be at least 1x1"])))
    assert isinstance(e, ConfigError) and str(e) == "--arrays 0x3: array shape must be at least 1x1"
    many = ConfigError("r.yaml", ["a: bad", "b: bad"])
    assert str(many) == "invalid configuration in r.yaml:\n  - a: bad\n  - b: bad"


def test_json_to_stdout_is_json_alone(files, monkeypatch, capsys):
    """`--json -`: stdout carries the JSON and nothing else (a progress bar used to leave a blank
    line before it); the human-readable lines go to stderr."""
    monkeypatch.chdir(files)
    for args in (["compile", "digits_cnn", "-a", "2x2", "-o", "j.tsp"], ["estimate", "p.tsp"],
                 ["simulate", "p.tsp"]):
        code, out, err = run(monkeypatch, capsys, *args, "--json", "-")
        assert code == 0 and out.startswith("{") and out.endswith("}\n"), (args, out[:80])
        assert json.loads(out)["array"] == "aie2-2x2"
    code, out, err = run(monkeypatch, capsys, "estimate", "p.tsp")
    assert code == 0 and out.lstrip().startswith("DigitsCNN on aie2-2x2") and err == ""


def test_a_torch_export_file_of_another_kind_is_one_line(tmp_path, monkeypatch, capsys):
    """A zip archive that is not a torch.export program (a state dict renamed .pt2): torch logs its
    own traceback before raising; the user sees one line."""
    torch.save(nn.Linear(2, 2).state_dict(), tmp_path / "sd.pt2")
    code, out, err = run(monkeypatch, capsys, "compile", str(tmp_path / "sd.pt2"))
    assert code == 2 and err.count("\n") == 1 and "not a readable torch.export program" in err, err
