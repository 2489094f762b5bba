"""Documented upper bounds (docs/limits.md) and the one sparsity / block check (issue 17, cases 3,
5 and the program-file parts of 8): each bad input is refused with the exact one-line message and
exit code 2 through the CLI, and through the Python API where there is one, before anything is
allocated (none of these tests needs more than a few MB)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from compiler_helpers import small_graph
from hypothesis import given, settings
from hypothesis import strategies as st

from tilesparse.build import build_graph_from, parse_input_shape
from tilesparse.cli.main import main
from tilesparse.compiler.pipeline import compile_graph
from tilesparse.errors import ConfigError, ProgramError
from tilesparse.hw import load_array
from tilesparse.patterns import check_block, check_sparsity
from tilesparse.program import Program
from tilesparse.utils import limits


def run(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """(exit code, stderr) of `tilesparse ARGS` through the console script's ``main``."""
    monkeypatch.setattr(sys, "argv", ["tilesparse", *args])
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    return code, capsys.readouterr().err


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # files named relative: the messages below are exact
    return tmp_path


# --- case 3: the array -----------------------------------------------------------------------

ARRAY_CASES = [
    ("100000x100000", "rows x cols 100000x100000 is above the limit 64x64 (docs/limits.md)"),  # ran 18 GB, hung
    ("1000x1000", "rows x cols 1000x1000 is above the limit 64x64 (docs/limits.md)"),  # MemoryError traceback
    ("65x1", "rows x cols 65x1 is above the limit 64x64 (docs/limits.md)"),
    ("aie2-8x100", "rows x cols 8x100 is above the limit 64x64 (docs/limits.md)"),
    ("1" * 5000 + "x4", "rows x cols of more than 9 digits is above the limit 64x64 (docs/limits.md)"),
]


@pytest.mark.parametrize("spec,msg", ARRAY_CASES, ids=[c[0][:20] for c in ARRAY_CASES])
@pytest.mark.parametrize("verb", ["compile", "estimate", "simulate", "map"])
def test_array_above_the_limit_cli(here, monkeypatch, capsys, verb, spec, msg):
    code, err = run(monkeypatch, capsys, verb, "digits_cnn", "-a", spec)
    shown = spec if len(spec) <= 200 else spec[:197] + "..."
    assert (code, err) == (2, f"error: --array {shown}: {msg}\n")


@pytest.mark.parametrize("spec,msg", ARRAY_CASES[:4])
def test_array_above_the_limit_api(spec, msg):
    with pytest.raises(ConfigError) as e:
        load_array(spec)
    assert str(e.value) == f"{spec}: {msg}"


def test_array_yaml_above_the_limit_cli(here, monkeypatch, capsys):
    Path("big.yaml").write_text("rows: 100000\ncols: 100000\n")
    code, err = run(monkeypatch, capsys, "compile", "digits_cnn", "-a", "big.yaml")
    assert (code, err) == (2, "error: --array big.yaml: rows x cols 100000x100000 is above the limit 64x64 "
                              "(docs/limits.md)\n")
    assert not Path("program.tsp").exists()


def test_largest_array_loads():
    hw = load_array(f"{limits.MAX_ROWS}x{limits.MAX_COLS}")
    assert hw.n_cores == 4096


# --- input shape and block ----------------------------------------------------------------------

def test_input_shape_above_the_limit(here, monkeypatch, capsys):
    code, err = run(monkeypatch, capsys, "compile", "digits_cnn", "--input-shape", "1,3,100000,100000")
    assert (code, err) == (2, "error: --input-shape: N x C x H x W 30,000,000,000 is above the limit 16,777,216 "
                              "(docs/limits.md)\n")
    with pytest.raises(ConfigError, match="--input-shape: expected N,C,H,W such as 1,3,224,224, got '1,1,1,111"):
        parse_input_shape("1,1,1," + "1" * 5000)  # int() of 5000 digits was a ValueError traceback


BLOCK_CASES = [
    ("8x0", "--block 8x0: block sizes must be positive integers, got b_i=0"),
    ("axb", "--block axb: expected 'OUTxIN' such as '8x8', got 'axb'"),
    ("8_0x8", "--block 8_0x8: expected 'OUTxIN' such as '8x8', got '8_0x8'"),  # int() took "8_0" as 80
    ("100000000x8", "--block 100000000x8: block b_o 100000000 is above the limit 4096 (docs/limits.md)"),
    ("9" * 5000 + "x8", "--block '99999999999999999...9999999999999999x8': block size of more than 9 digits is above "
                        "the limit 4096 (docs/limits.md)"),
]


@pytest.mark.parametrize("spec,msg", BLOCK_CASES, ids=[c[0][:20] for c in BLOCK_CASES])
@pytest.mark.parametrize("verb", [["compile", "digits_cnn"], ["estimate", "digits_cnn"], ["simulate", "digits_cnn"],
                                  ["map", "digits_cnn"], ["sparsify", "digits_cnn", "--epochs", "0"], ["demo"]])
def test_block_one_check_every_verb(here, monkeypatch, capsys, verb, spec, msg):
    code, err = run(monkeypatch, capsys, *verb, "--block", spec)
    assert (code, err) == (2, f"error: {msg}\n")
    assert list(here.iterdir()) == []  # nothing written


@pytest.mark.parametrize("spec,msg", [((8.5, 8), "--block (8.5, 8): block sizes must be positive integers, "
                                                 "got b_o=8.5"),
                                      ((True, 8), "--block (True, 8): block sizes must be positive integers, "
                                                  "got b_o=True"),
                                      ((8, 5000), "--block (8, 5000): block b_i 5000 is above the limit 4096 "
                                                  "(docs/limits.md)")])
def test_block_python_api(spec, msg):
    """A float is no longer truncated into a block size, nor a boolean taken as 1."""
    with pytest.raises(ConfigError) as e:
        build_graph_from("digits_cnn", block=spec)
    assert str(e.value) == msg
    assert check_block((np.int64(4), 16)) == (4, 16)


# --- case 5: sparsity, one check for every verb ---------------------------------------------

SPARSITY_VERBS = [["compile", "digits_cnn"], ["estimate", "digits_cnn"], ["simulate", "digits_cnn"],
                  ["map", "digits_cnn"], ["sparsify", "digits_cnn", "--epochs", "0"], ["demo"],
                  ["explore", "--networks", "digits_cnn", "--arrays", "2x2"]]


@pytest.mark.parametrize("value", ["-0.1", "nan", "inf", "1.0"])
@pytest.mark.parametrize("verb", SPARSITY_VERBS, ids=[v[0] for v in SPARSITY_VERBS])
def test_sparsity_one_message_every_verb(here, monkeypatch, capsys, verb, value):
    """-0.1 and nan compiled dense with exit code 0 on compile / estimate / simulate."""
    code, err = run(monkeypatch, capsys, *verb, "--sparsity", value)
    assert (code, err) == (2, f"error: --sparsity: expected a number in [0, 1), got {float(value)!r}\n")
    assert list(here.iterdir()) == []


@pytest.mark.parametrize("value", [-0.1, float("nan"), 1.0, True, "0.5", [0.5]])
def test_sparsity_python_api(value):
    with pytest.raises(ConfigError) as e:
        build_graph_from("digits_cnn", sparsity=value)
    assert str(e.value) == f"--sparsity: expected a number in [0, 1), got {value!r}"


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(), st.booleans(),
                 st.text(max_size=5), st.none()))
def test_sparsity_accepted_iff_a_number_in_0_1(v):
    """Property: a sparsity is accepted exactly when it is a real number (not a boolean) in [0, 1);
    everything else gets the one message."""
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1
    if ok:
        assert check_sparsity(v, "--sparsity") == v
    else:
        with pytest.raises(ConfigError) as e:
            check_sparsity(v, "--sparsity")
        assert str(e.value).startswith("--sparsity: expected a number in [0, 1), got ")
        assert not (isinstance(v, float) and math.isnan(v)) or str(e.value).endswith("got nan")


# --- case 8 (program files) and the program limits ---------------------------------------------

@pytest.fixture(scope="module")
def program_file(tmp_path_factory) -> Path:
    return compile_graph(small_graph(), "3x2").save(tmp_path_factory.mktemp("prog") / "p.tsp")


def edited(src: Path, dst: str, edit) -> str:
    """A copy of ``src`` with its header edited by ``edit(header)``: np.savez writes fresh zip CRCs,
    so only the checks on the header's contents can refuse it."""
    with np.load(src, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    h = json.loads(arrays["header"].tobytes())
    edit(h)
    arrays["header"] = np.frombuffer(json.dumps(h).encode(), np.uint8)
    with open(dst, "wb") as f:
        np.savez(f, allow_pickle=False, **arrays)
    return dst


def _set(path: str, value):
    """An edit setting header[path] (dotted, list indices as numbers); ``...`` deletes it."""
    *parents, last = [int(k) if k.isdigit() else k for k in path.split(".")]

    def edit(h):
        for k in parents:
            h = h[k]
        if value is ...:
            del h[last]
        else:
            h[last] = value
    return edit


HEADER_CASES = [
    ("hw", ..., "p.tsp: corrupt header (no 'hw')"),  # a KeyError traceback
    ("layers", ..., "p.tsp: corrupt header (no 'layers')"),  # a KeyError traceback
    ("version", "6", "p.tsp: header field 'version' is '6' (str): expected the integer 10"),  # "version 6 ... reads 6"
    ("version", 6.0, "p.tsp: header field 'version' is 6.0 (float): expected the integer 10"),
    ("version", True, "p.tsp: header field 'version' is True (bool): expected the integer 10"),
    ("instrs.3.iters", 10**12, "p.tsp: instruction #3 (LOADFM) iters: 1,000,000,000,000 is above the limit "
                               "16,777,216 (docs/limits.md)"),  # an allocation traceback, or a hang
    ("instrs.0.offset", 5, "p.tsp: instruction #0 (LOADW) reads per_iter[5:{end}], expected [0:{iters}] of {n} values "
                           "(offset or iters edited); recompile it"),
    ("hw.rows", 100000, "p.tsp: header field hw: rows x cols 100000x2 is above the limit 64x64 (docs/limits.md)"),
    ("hw.rows", True, "p.tsp: header field hw: hw.rows: expected a number, not a boolean (got True)"),
    ("hw.clock_hz", "inf", "p.tsp: header field hw: hw.clock_hz: Input should be a finite number (got 'inf')"),
    ("hw", [], "p.tsp: header field 'hw' is []: expected a mapping; recompile it"),
    ("layers", 5, "p.tsp: header field 'layers' is 5: expected a list; recompile it"),
    ("graph", None, "p.tsp: header field 'graph' is None: expected a string; recompile it"),
    ("buffers.x.nbytes", 10**12, "p.tsp: header field buffers.x.nbytes: 1,000,000,000,000 B is above the limit "
                                 "268,435,456 B (docs/limits.md)"),
    ("buffers.x.shape", [16, 12, 13], "p.tsp: header field buffers.x: shape [16, 12, 13] holds 2,496 B, nbytes "
                                      "says 2,304"),
    ("buffers.x.shape", [16, 12], "p.tsp: header field buffers.x.shape is [16, 12]: expected [C, H, W], three "
                                  "integers >= 1"),
    ("buffers.x.memory", "sram", "p.tsp: header field buffers.x.memory is 'sram': expected 'memtile' or 'ddr'"),
    ("ddr.weights", [10**13, 64], "p.tsp: header field ddr: the DDR map's end 10,000,000,000,064 B is above the "
                                  "limit 4,294,967,296 B (docs/limits.md)"),
    ("ddr.weights", "0+64", "p.tsp: header field ddr.weights is '0+64': expected [address, bytes], two integers >= 0"),
    ("layers.0.geometry.hi", 10**7, "p.tsp: layer 0 ('c1'): geometry ci x hi x wi (padded) 2,240,000,448 B is "
                                    "above the limit 268,435,456 B (docs/limits.md)"),
    ("layers.0.geometry.stride", [10**9, 1], "p.tsp: layer 0 ('c1'): geometry: a window of kernel 3, dilation 1, "
                                             "stride 1000000000 cannot give 12 output rows from 14 padded input rows"),
]


@pytest.mark.parametrize("field,value,msg", HEADER_CASES, ids=[f"{c[0]}={str(c[1])[:12]}" for c in HEADER_CASES])
def test_program_header_field_refused(program_file, here, monkeypatch, capsys, field, value, msg):
    edited(program_file, "p.tsp", _set(field, value))
    prog = Program.load(program_file)
    want = msg.format(n=prog.per_iter.size, iters=prog.instrs[0].iters, end=5 + prog.instrs[0].iters)
    with pytest.raises(ProgramError) as e:
        Program.load("p.tsp")
    assert str(e.value) == want
    for verb in ("estimate", "simulate"):
        code, err = run(monkeypatch, capsys, verb, "p.tsp")
        assert (code, err) == (2, f"error: {want}\n")


def test_npy_renamed_tsp(here, monkeypatch, capsys):
    """A TypeError traceback ('numpy.ndarray' object does not support the context manager protocol)."""
    np.save("x.npy", np.zeros(10))
    Path("x.npy").rename("x.tsp")
    want = "x.tsp: not a tilesparse program (a NumPy .npy array; programs are written by `tilesparse compile`)"
    with pytest.raises(ProgramError) as e:
        Program.load("x.tsp")
    assert str(e.value) == want
    assert run(monkeypatch, capsys, "estimate", "x.tsp") == (2, f"error: {want}\n")
    Path("t.tsp").write_text("hello")
    assert run(monkeypatch, capsys, "simulate", "t.tsp") == (
        2, "error: t.tsp: not a tilesparse program (not a zip archive; programs are written by `tilesparse "
           "compile`)\n")


def test_program_file_size_limits(program_file, here, monkeypatch):
    """Checked before reading: the file, and the members once unpacked (a zip bomb of deflated
    zeros is small on disk)."""
    import zipfile

    size = program_file.stat().st_size
    monkeypatch.setattr(limits, "MAX_PROGRAM_FILE_BYTES", size - 1)
    with pytest.raises(ProgramError) as e:
        Program.load(program_file)
    assert str(e.value) == f"{program_file}: file size {size:,} B is above the limit {size - 1:,} B (docs/limits.md)"
    monkeypatch.setattr(limits, "MAX_PROGRAM_FILE_BYTES", 10**6)
    with zipfile.ZipFile("bomb.tsp", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("header.npy", b"\0" * (2 * 10**6))
    assert Path("bomb.tsp").stat().st_size < 10**5
    with pytest.raises(ProgramError) as e:
        Program.load("bomb.tsp")
    assert str(e.value) == "bomb.tsp: unpacked size 2,000,000 B is above the limit 1,000,000 B (docs/limits.md)"


def test_save_refuses_what_load_would(tmp_path):
    """Program.save runs the load checks first: no file is written that cannot be read back."""
    import dataclasses

    p = compile_graph(small_graph(), "3x2")
    bad = dataclasses.replace(p, instrs=(dataclasses.replace(p.instrs[0], iters=p.instrs[0].iters + 1),
                                         *p.instrs[1:]))
    with pytest.raises(ProgramError, match=r"instruction #1 \(\w+\) reads per_iter"):
        bad.save(tmp_path / "bad.tsp")
    assert not (tmp_path / "bad.tsp").exists()


def test_simulate_input_npy(program_file, here, monkeypatch, capsys):
    """--input: an .npz archive was an AttributeError traceback; the size is checked before reading."""
    np.savez("in.npz", x=np.zeros(3))
    code, err = run(monkeypatch, capsys, "simulate", str(program_file), "--input", "in.npz")
    assert (code, err) == (2, "error: in.npz: an .npz archive: expected one array saved with numpy.save (.npy)\n")
    np.save("in.npy", np.zeros((16, 12, 12), np.int8))
    monkeypatch.setattr(limits, "MAX_INPUT_NPY_BYTES", 100)
    size = Path("in.npy").stat().st_size
    code, err = run(monkeypatch, capsys, "simulate", str(program_file), "--input", "in.npy")
    assert (code, err) == (2, f"error: in.npy: file size {size:,} B is above the limit 100 B (docs/limits.md)\n")


def test_program_name_the_os_refuses(here, monkeypatch, capsys):
    """A 300-character file name was an OSError traceback (and echoed whole)."""
    name = "x" * 300 + ".tsp"
    assert run(monkeypatch, capsys, "estimate", name) == (
        2, f"error: {'x' * 57}...: not a usable file name (File name too long)\n")
    with pytest.raises(ProgramError, match=r"^x{197}\.\.\.: no such program file$"):
        Program.load(name)
