"""YAML and config validation (issue 17, case 4): a "billion laughs" file, stray bytes, huge or
deeply nested documents, booleans for numbers and infinite floats are refused in one line naming
the file and the field, quickly and before anything is expanded; a huge offending value is never
formatted whole. Also through the CLI (``--array`` / ``--recipe``): ``error: ...``, exit code 2."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from tilesparse.cli.main import main
from tilesparse.costmodel.arch import load_arch
from tilesparse.errors import ConfigError
from tilesparse.hw import ArrayConfig, load_array
from tilesparse.sparsify.recipe import Recipe
from tilesparse.utils.config import MAX_LISTED_ERRORS, load_yaml, short_repr, validate_model
from tilesparse.utils.limits import MAX_YAML_ALIASES, MAX_YAML_BYTES, MAX_YAML_DEPTH, MAX_YAML_NODES


def laughs(levels: int, width: int = 9) -> str:
    """The "billion laughs" document: each level a list of ``width`` aliases of the one below."""
    lines = ["l0: &l0 [" + ", ".join(['"lol"'] * width) + "]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def run(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """(exit code, stderr) of `tilesparse ARGS` through the console script's ``main``."""
    monkeypatch.setattr(sys, "argv", ["tilesparse", *args])
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    return code, capsys.readouterr().err


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # files are named relative: the messages below are exact


def refusal(tmp_path, name: str, text: str | bytes) -> str:
    p = Path(name)
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError) as e:
        load_array(p)
    return str(e.value)


def test_billion_laughs_refused_while_composing(tmp_path):
    """9 levels of 9 aliases: 9**9 = 387,420,489 strings once built, from 81 aliases in a 600-byte
    file (PyYAML shares the nodes; validating it, or formatting the error, expanded them and ran out
    of memory after a minute). Refused at the first level whose expanded size passes the limit."""
    size, level = 10, 0  # l0: the list and its 9 strings
    while size <= MAX_YAML_NODES:
        size, level = 1 + 9 * size, level + 1
    assert (size, level) == (597_871, 5)
    assert refusal(tmp_path, "lol.yaml", laughs(9)) == (
        f"lol.yaml: refused at line {level + 1}: nodes with aliases expanded {size:,} is above the limit "
        f"{MAX_YAML_NODES:,} (docs/limits.md)")


def test_billion_laughs_through_the_cli(tmp_path, monkeypatch, capsys):
    (tmp_path / "lol.yaml").write_text(laughs(9))
    monkeypatch.chdir(tmp_path)
    code, err = run(monkeypatch, capsys, "estimate", "digits_cnn", "--array", "lol.yaml")
    assert code == 2
    assert err.startswith("error: --array lol.yaml: refused at line 6: nodes with aliases expanded ")
    assert err.count("\n") == 1


def test_small_laughs_are_listed_with_short_values(tmp_path):
    """Under the node limit the document is built; the unknown fields' values are shown cut."""
    msg = refusal(tmp_path, "lol3.yaml", laughs(3))
    assert msg.splitlines()[0] == "invalid configuration in lol3.yaml:"
    assert "  - l0: unknown field (got ['lol', 'lol', 'lol', 'lol', ...])" in msg.splitlines()
    assert all(len(line) <= 120 for line in msg.splitlines())


def test_alias_limit(tmp_path):
    text = "base: &b 1\nlist: [" + ", ".join(["*b"] * (MAX_YAML_ALIASES + 1)) + "]\n"
    assert refusal(tmp_path, "al.yaml", text) == (
        f"al.yaml: refused at line 2: aliases {MAX_YAML_ALIASES + 1} is above the limit {MAX_YAML_ALIASES} "
        "(docs/limits.md)")


def test_recursive_alias(tmp_path):
    assert refusal(tmp_path, "rec.yaml", "rows: &a [*a]\n") == (
        "rec.yaml: refused at line 1: an alias refers to the node that contains it (a recursive document)")


def test_deep_nesting(tmp_path):
    """PyYAML composes recursively: 5000 levels were a RecursionError traceback."""
    text = "rows: " + "[" * 5000 + "]" * 5000 + "\n"
    assert refusal(tmp_path, "deep.yaml", text) == (
        f"deep.yaml: refused at line 1: nesting depth {MAX_YAML_DEPTH + 1} is above the limit {MAX_YAML_DEPTH} "
        "(docs/limits.md)")


def test_file_size_limit(tmp_path):
    text = "rows: 4\n# " + "x" * MAX_YAML_BYTES + "\n"
    n = len(text)
    assert refusal(tmp_path, "big.yaml", text) == (
        f"big.yaml: file size {n:,} B is above the limit {MAX_YAML_BYTES:,} B (docs/limits.md)")


@pytest.mark.parametrize("raw,offset,byte", [(b"rows: 4\ncols: \xff\xfe\n", 14, 0xFF),
                                             (b"name: caf\xe9\n", 9, 0xE9)])
def test_non_utf8_bytes_named_with_offset(tmp_path, raw, offset, byte):
    """Was a UnicodeDecodeError traceback."""
    assert refusal(tmp_path, "bytes.yaml", raw) == f"bytes.yaml: not UTF-8 text: byte 0x{byte:02x} at offset {offset}"


def test_integer_of_thousands_of_digits(tmp_path):
    """int() of > 4300 digits raises ValueError inside PyYAML (a traceback before)."""
    assert refusal(tmp_path, "int.yaml", "rows: " + "1" * 5000 + "\n") == (
        "int.yaml: not valid YAML: Exceeds the limit (4300 digits) for integer string conversion")


@pytest.mark.parametrize("text,msg", [
    ("rows: true\n", "rows: expected a number, not a boolean (got True)"),
    ("cols: false\n", "cols: expected a number, not a boolean (got False)"),
    ("core: {macs_per_cycle: {int8: true}}\n", "core.macs_per_cycle.int8: expected a number, not a boolean (got True)"),
    ("clock_hz: .inf\n", "clock_hz: Input should be a finite number (got inf)"),
    ("clock_hz: .nan\n", "clock_hz: Input should be a finite number (got nan)"),
    ("clock_hz: inf\n", "clock_hz: Input should be a finite number (got 'inf')"),
    ("clock_hz: true\n", "clock_hz: expected a number, not a boolean (got True)"),
    ("links: {ddr_to_memtile_bytes_per_s: -.inf}\n", "links.ddr_to_memtile_bytes_per_s: Input should be a finite "
                                                     "number (got -inf)"),
    ("rows: 100000\ncols: 100000\n", "rows x cols 100000x100000 is above the limit 64x64 (docs/limits.md)"),
    ("rows: 65\n", "rows: 65 is above the limit 64 (docs/limits.md)"),
    ("clock_hz: 1.0e12\n", "clock_hz: 1e+12 Hz is above the limit 1e+11 Hz (docs/limits.md)"),
    ("memtile: {bytes: 1073741824}\n",
     "memtile.bytes: 1,073,741,824 B is above the limit 16,777,216 B (docs/limits.md)"),
    ("core: {bank_bytes: 2097152}\n", "core.bank_bytes: 2,097,152 B is above the limit 1,048,576 B (docs/limits.md)"),
    ("ddr: {bytes: 1000000000000000}\n",
     "ddr.bytes: 1,000,000,000,000,000 B is above the limit 1,099,511,627,776 B (docs/limits.md)"),
    ("rows: 64\ncols: 64\ncore: {data_memory_bytes: 1048576}\n",
     "rows x cols x core.data_memory_bytes + cols x memtile.bytes = 4,328,521,728 B is above the limit "
     "1,073,741,824 B (docs/limits.md)"),
    ("name: " + "n" * 101 + "\n",
     "name: String should have at most 100 characters (got 'nnnnnnnnnnnnnnnnn...nnnnnnnnnnnnnnnnnn')"),
])
def test_array_yaml_values(tmp_path, text, msg):
    assert refusal(tmp_path, "a.yaml", text) == f"a.yaml: {msg}"


def test_array_yaml_at_the_limits_loads(tmp_path):
    p = tmp_path / "max.yaml"
    p.write_text("rows: 64\ncols: 64\nclock_hz: 1.0e11\nmemtile: {bytes: 8388608}\n")
    hw = load_array(p)  # 64 x 64 x 64 KiB + 64 x 8 MiB = 768 MiB on chip
    assert (hw.rows, hw.cols, hw.clock_hz, hw.memtile.bytes) == (64, 64, 1e11, 8 * 2**20)
    p.write_text("memtile: {bytes: 16777216}\ncore: {data_memory_bytes: 1048576}\n")
    assert (load_array(p).memtile.bytes, load_array(p).core.data_memory_bytes) == (16 * 2**20, 2**20)


def test_preset_loaded_through_the_limited_loader():
    assert load_array("aie2").clock_hz == 1e9  # '1.0e9' is a string to PyYAML, a float once validated


def test_huge_offending_value_is_not_formatted_whole():
    """A 10**7-item list was formatted whole ("(got [...])"); a shared nested one never finished."""
    row = list(range(10**6))
    with pytest.raises(ConfigError) as e:
        validate_model(ArrayConfig, {"rows": row, "name": [row] * 10**6}, "big")
    msg = str(e.value)
    assert msg == ("invalid configuration in big:\n  - name: Input should be a valid string "
                   "(got [[0, 1, 2, 3, ...], [0, 1, 2, 3, ...], [0, 1, 2, 3, ...], [0, 1, 2, 3, ...], ...)\n"
                   "  - rows: Input should be a valid integer (got [0, 1, 2, 3, ...])")


def test_many_problems_are_capped():
    data = {"core": {"macs_per_cycle": {"int8": True}}, **{f"f{i}": i for i in range(50)}}
    with pytest.raises(ConfigError) as e:
        validate_model(ArrayConfig, data, "many")
    lines = str(e.value).splitlines()
    assert len(lines) == 1 + MAX_LISTED_ERRORS + 1 and lines[-1] == f"  - ... and {51 - MAX_LISTED_ERRORS} more"


@pytest.mark.parametrize("value,shown", [("x" * 10**6, "'xxxxxxxxxxxxxxxxx...xxxxxxxxxxxxxxxxxx'"),
                                         (list(range(10**6)), "[0, 1, 2, 3, ...]"),
                                         ([[[[1]]]], "[[[...]]]")])
def test_short_repr(value, shown):
    assert short_repr(value) == shown


@pytest.mark.parametrize("data,msg", [
    ({"sparsity": float("nan")}, "sparsity: Input should be a finite number (got nan)"),
    ({"sparsity": -0.1}, "sparsity: expected a number in [0, 1), got -0.1"),
    ({"sparsity": True}, "sparsity: expected a number, not a boolean (got True)"),
    ({"training": {"epochs": True}}, "training.epochs: expected a number, not a boolean (got True)"),
    ({"training": {"lr": float("inf")}}, "training.lr: Input should be a finite number (got inf)"),
    ({"layer_sparsity": {"conv1": 1.5}}, "layer_sparsity: conv1: expected a number in [0, 1), got 1.5"),
    ({"block": [8.5, 8]}, "block: block sizes must be positive integers, got b_o=8.5"),
    ({"block": [True, 8]}, "block: block sizes must be positive integers, got b_o=True"),
    ({"block": "8x8000"}, "block: block b_i 8000 is above the limit 4096 (docs/limits.md)"),
])
def test_recipe_strict_types(data, msg):
    with pytest.raises(ConfigError) as e:
        Recipe.from_dict(data)
    assert str(e.value) == f"recipe: {msg}"


def test_recipe_yaml_through_the_cli(tmp_path, monkeypatch, capsys):
    (tmp_path / "r.yaml").write_text("sparsity: .nan\n")
    monkeypatch.chdir(tmp_path)
    code, err = run(monkeypatch, capsys, "sparsify", "digits_cnn", "--recipe", "r.yaml", "--epochs", "0")
    assert (code, err) == (2, "error: r.yaml: sparsity: Input should be a finite number (got nan)\n")


@pytest.mark.parametrize("text,msg", [
    ("levels: [{name: dram, fanout: true}]\n", "levels.0.fanout: expected a number, not a boolean (got True)"),
    ("clock_hz: .inf\nlevels: [{name: dram}]\n", "clock_hz: Input should be a finite number (got inf)"),
    ("levels: [{name: dram, read_pj_per_byte: .nan}]\n",
     "levels.0.read_pj_per_byte: Input should be a finite number (got nan)"),
])
def test_cost_model_architecture_strict(tmp_path, text, msg):
    Path("arch.yaml").write_text(text)
    with pytest.raises(ConfigError) as e:
        load_arch("arch.yaml")
    assert str(e.value) == f"arch.yaml: {msg}"


def test_load_yaml_plain_values(tmp_path):
    p = tmp_path / "ok.yaml"
    p.write_text("a: &x [1, 2]\nb: *x\nc: {d: 1.5e3}\n")
    assert load_yaml(p) == {"a": [1, 2], "b": [1, 2], "c": {"d": "1.5e3"}}


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.integers()))
def test_clock_accepted_iff_a_finite_positive_number_within_the_limit(v):
    """Property: the clock is accepted exactly when it is a number (not a boolean), finite, > 0 and
    at most 100 GHz; otherwise it is a validation error naming clock_hz."""
    ok = not isinstance(v, bool) and math.isfinite(v) and 0 < v <= 1e11
    if ok:
        assert ArrayConfig(clock_hz=v).clock_hz == v
    else:
        with pytest.raises(ValidationError, match="clock_hz"):
            ArrayConfig(clock_hz=v)
