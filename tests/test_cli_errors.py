"""How the command ends when something goes wrong (tilesparse.cli.failures): one line and an exit
code for every failure (2 refused, 3 internal error), the traceback only with --debug; output
paths refused before any work, nothing written; written files with the usual permissions."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
from torch import nn

from tilesparse.cli.failures import EXIT_INTERNAL, EXIT_REFUSED, debug_requested, describe
from tilesparse.cli.main import main
from tilesparse.models.zoo import register

INTERNAL = "(run with --debug for the traceback; please report it)"


@register("tiny_errors_cnn")
def _tiny(num_classes: int = 10) -> nn.Module:
    """A zoo model without a recorded input shape: its default is 1x3x224x224."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2))


def run(capsys, *args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `tilesparse ARGS` through the console script's entry point."""
    try:
        main(list(args))
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


def files_in(d: Path) -> set[str]:
    return {p.relative_to(d).as_posix() for p in d.rglob("*")}


@pytest.fixture
def place(tmp_path, monkeypatch):
    """A working folder holding a regular file, a folder, and a folder with a folder where a run's
    sparse.pt goes."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TILESPARSE_DEBUG", raising=False)
    (tmp_path / "file.txt").write_text("x\n")
    (tmp_path / "dir").mkdir()
    (tmp_path / "occupied" / "sparse.pt").mkdir(parents=True)
    return tmp_path


def _bug(*args, **kwargs):
    raise RuntimeError("something broke\nsecond line of the message")


def test_an_unexpected_exception_is_one_line_exit_3(place, monkeypatch, capsys):
    monkeypatch.setattr("tilesparse.build.compile_source", _bug)
    code, out, err = run(capsys, "compile", "digits_cnn", "-a", "2x2")
    assert (code, err) == (EXIT_INTERNAL, f"error: internal error: RuntimeError: something broke {INTERNAL}\n")
    assert files_in(place) == {"file.txt", "dir", "occupied", "occupied/sparse.pt"}


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback_then_the_same_line(place, monkeypatch, capsys, how):
    monkeypatch.setattr("tilesparse.build.compile_source", _bug)
    if how == "env":
        monkeypatch.setenv("TILESPARSE_DEBUG", "1")
    code, out, err = run(capsys, *(["--debug"] if how == "flag" else []), "compile", "digits_cnn", "-a", "2x2")
    assert code == EXIT_INTERNAL
    assert err.startswith("Traceback (most recent call last):\n") and "in _bug\n" in err
    assert err.endswith(f"RuntimeError: something broke\nsecond line of the message\n"
                        f"error: internal error: RuntimeError: something broke {INTERNAL}\n")


def test_debug_shows_the_traceback_of_a_refusal_too(place, capsys):
    code, out, err = run(capsys, "--debug", "estimate", "nofile.tsp")
    assert code == EXIT_REFUSED and err.startswith("Traceback (most recent call last):\n")
    assert err.endswith("ProgramError: nofile.tsp: no such program file\nerror: nofile.tsp: no such program file\n")


def test_an_eof_error_is_not_aborted(place, monkeypatch, capsys):
    """The CLI framework takes an escaping EOFError for the end of a prompt: "Aborted.", exit 1."""
    def eof(*args, **kwargs):
        raise EOFError("Ran out of input")

    monkeypatch.setattr("tilesparse.build.compile_source", eof)
    code, out, err = run(capsys, "compile", "digits_cnn", "-a", "2x2")
    assert (code, err) == (EXIT_INTERNAL, f"error: internal error: EOFError: Ran out of input {INTERNAL}\n")


@pytest.mark.parametrize("args,env,want", [
    (["--debug", "compile", "x"], "", True),
    (["compile", "x", "--debug"], "", False),  # after the verb it is the verb's option (none has it)
    (["compile", "x"], "1", True),
    (["compile", "x"], "yes", True),
    (["compile", "x"], "0", False),
    (["compile", "x"], "", False),
])
def test_debug_is_asked_before_the_verb_or_in_the_environment(args, env, want):
    assert debug_requested(args, {"TILESPARSE_DEBUG": env}) is want


@pytest.mark.parametrize("exc,want", [
    (IsADirectoryError(errno.EISDIR, "Is a directory", ".d.x1.tmp", None, "out"),  # a rename: the target
     (2, "out: is a directory, expected a file")),
    (PermissionError(errno.EACCES, "Permission denied", "runs/a.tsp"), (2, "runs/a.tsp: permission denied")),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "x.npy"), (2, "x.npy: no such file or directory")),
    (NotADirectoryError(errno.ENOTDIR, "Not a directory", "f.txt/a"),
     (2, "f.txt/a: not a folder (a part of this path is a file)")),
    (OSError(errno.ENOSPC, "No space left on device", "p.tsp"), (2, "p.tsp: no space left on device")),
    (OSError(errno.EINVAL, "Invalid argument"),  # no path to name: a reader that should have said which file
     (3, f"internal error: OSError: [Errno 22] Invalid argument {INTERNAL}")),
    (MemoryError("Unable to allocate 18.6 GiB for an array with shape (100000, 100000)"),
     (2, "out of memory (Unable to allocate 18.6 GiB for an array with shape (100000, 100000))")),
    (MemoryError(), (2, "out of memory")),
    (OSError("a library's own words"), (3, f"internal error: OSError: a library's own words {INTERNAL}")),
    (KeyError("hw"), (3, f"internal error: KeyError: 'hw' {INTERNAL}")),
    (ValueError("x" * 400), (3, f"internal error: ValueError: {'x' * 300}… {INTERNAL}")),
])
def test_describe(exc, want):
    assert describe(exc) == want


def test_an_os_error_from_a_user_path_is_one_line(place, monkeypatch, capsys):
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", "weights/sd.pth")

    monkeypatch.setattr("tilesparse.build.compile_source", denied)
    code, out, err = run(capsys, "compile", "digits_cnn", "-a", "2x2")
    assert (code, err) == (EXIT_REFUSED, "error: weights/sd.pth: permission denied\n")


def test_usage_errors_keep_the_usage_message(place, capsys):
    code, out, err = run(capsys, "compile", "digits_cnn", "--bogus")
    assert code == 2 and err.startswith("Usage: tilesparse compile [OPTIONS] {SOURCE}\n") and "--bogus" in err
    code, out, err = run(capsys, "--debug", "estimate", "p.tsp", "--top", "-5")
    assert code == 2 and err.startswith("Usage: tilesparse estimate") and "Traceback" not in err
    code, out, err = run(capsys, "bogus")
    assert code == 2 and "No such command 'bogus'" in err


def test_python_dash_m_goes_through_main(place):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    r = subprocess.run([sys.executable, "-m", "tilesparse", "compile", "digits_cnn", "-o", "dir"], cwd=place,
                       capture_output=True, text=True, env=env, check=False)
    assert (r.returncode, r.stderr) == (2, "error: --out dir: is a folder, expected a file name\n")


LAYER = ["--layer", "conv:k=8,c=8,p=4,q=4,r=3,s=3"]
OUTPUTS = [  # every option that writes, checked before any work (each would compile, train or search first)
    (["compile", "digits_cnn", "-o", "dir"], "--out dir: is a folder, expected a file name"),
    (["compile", "digits_cnn", "-o", "dir", "--listing", "l.txt"], "--out dir: is a folder, expected a file name"),
    (["compile", "digits_cnn", "-o", "o.tsp", "--listing", "dir"], "--listing dir: is a folder, expected a file name"),
    (["compile", "digits_cnn", "-o", "o.tsp", "--json", "dir"], "--json dir: is a folder, expected a file name"),
    (["compile", "digits_cnn", "-o", "file.txt/o.tsp"], "--out file.txt/o.tsp: file.txt is a file, not a folder"),
    (["compile", "digits_cnn", "-o", "file.txt/a/b/o.tsp"],
     "--out file.txt/a/b/o.tsp: file.txt is a file, not a folder"),
    (["compile", "digits_cnn", "-o", "o.tsp", "--json", "o.tsp"],
     "--json o.tsp: the same file as --out; give each output its own name"),
    (["compile", "digits_cnn", "--json", "/dev/null"],
     "--json /dev/null: is a device or pipe, not a regular file; give a file name (or '-' for stdout)"),
    (["estimate", "digits_cnn", "--timeline", "file.txt/t.html"],
     "--timeline file.txt/t.html: file.txt is a file, not a folder"),
    (["estimate", "digits_cnn", "-o", "dir"], "--out dir: is a folder, expected a file name"),
    (["estimate", "digits_cnn", "--json", "dir"], "--json dir: is a folder, expected a file name"),
    (["simulate", "digits_cnn", "-o", "dir"], "--out dir: is a folder, expected a file name"),
    (["simulate", "digits_cnn", "--json", "dir"], "--json dir: is a folder, expected a file name"),
    (["map", *LAYER, "--json", "dir"], "--json dir: is a folder, expected a file name"),
    (["map", *LAYER, "-o", "file.txt/m.json"], "--json file.txt/m.json: file.txt is a file, not a folder"),
    (["sparsify", "digits_cnn", "-o", "file.txt"], "--out file.txt: is a file, expected a folder"),
    (["sparsify", "digits_cnn", "-o", "occupied"],
     "--out occupied: occupied/sparse.pt: is a folder, expected a file name"),
    (["sparsify", "digits_cnn", "-o", "r", "--json", "r/report.json"],
     "--json r/report.json: the same file as --out; give each output its own name"),
    (["demo", "-o", "file.txt"], "--out file.txt: is a file, expected a folder"),
    (["demo", "-o", "file.txt/d"], "--out file.txt/d: file.txt is a file, not a folder"),
    (["explore", "--networks", "digits_cnn", "--arrays", "2x2", "-o", "file.txt"],
     "--out file.txt: is a file, expected a folder"),
    (["explore", "--networks", "digits_cnn", "--arrays", "2x2", "--json", "dir"],
     "--json dir: is a folder, expected a file name"),
]


@pytest.mark.parametrize("args,message", OUTPUTS, ids=[" ".join(a) for a, _ in OUTPUTS])
def test_outputs_are_checked_before_any_work(place, capsys, args, message):
    before = files_in(place)
    code, out, err = run(capsys, *args)
    assert (code, err) == (EXIT_REFUSED, f"error: {message}\n")
    assert files_in(place) == before  # nothing written: no program, no listing, no run folder


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc (Linux)")
def test_an_output_where_nothing_can_be_written(place, capsys):
    """/proc takes no new files, for root too (whom permissions do not stop)."""
    code, out, err = run(capsys, "compile", "digits_cnn", "-o", "/proc/o.tsp")
    assert (code, err) == (EXIT_REFUSED,
                           "error: --out /proc/o.tsp: cannot write in /proc (no such file or directory)\n")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes in a read-only folder")
def test_an_output_in_a_read_only_folder(place, capsys):
    (place / "ro").mkdir(mode=0o555)
    code, out, err = run(capsys, "compile", "digits_cnn", "-o", "ro/sub/o.tsp")
    assert (code, err) == (EXIT_REFUSED, "error: --out ro/sub/o.tsp: cannot write in ro (permission denied)\n")


def test_written_files_get_the_usual_permissions(place, capsys):
    """0666 less the umask, as a plain open() gives (mkstemp's 0600 made programs owner-only)."""
    old = os.umask(0o022)
    try:
        code, out, err = run(capsys, "compile", "digits_cnn", "-a", "2x2", "-o", "out/p.tsp", "--listing", "p.txt",
                             "--json", "p.json")
        assert code == 0, err
        assert {f: oct((place / f).stat().st_mode & 0o777) for f in ("out/p.tsp", "p.txt", "p.json")} == \
            dict.fromkeys(("out/p.tsp", "p.txt", "p.json"), "0o644")
        os.umask(0o027)
        code, out, err = run(capsys, "estimate", "out/p.tsp", "--json", "e.json")
        assert code == 0 and oct((place / "e.json").stat().st_mode & 0o777) == "0o640"
    finally:
        os.umask(old)
    assert not [p for p in files_in(place) if p.endswith(".tmp")]


def test_an_atomic_write_names_the_target_not_its_temporary_file(tmp_path):
    from tilesparse.utils.atomic import atomic_write_text

    (tmp_path / "d").mkdir()
    with pytest.raises(IsADirectoryError) as e:
        atomic_write_text(tmp_path / "d", "x")
    assert e.value.filename == str(tmp_path / "d") and os.listdir(tmp_path / "d") == []
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError) as e:  # mkdir's own words: "File exists"
        atomic_write_text(tmp_path / "f" / "b.txt", "x")
    assert describe(e.value) == (2, f"{tmp_path / 'f'}: not a folder (a file is in the way)")
    with pytest.raises(NotADirectoryError) as e:
        atomic_write_text(tmp_path / "f" / "a" / "b.txt", "x")
    assert describe(e.value) == (2, f"{tmp_path / 'f' / 'a'}: not a folder (a part of this path is a file)")
    assert sorted(os.listdir(tmp_path)) == ["d", "f"]


def test_a_program_path_that_does_not_exist(place, capsys):
    assert run(capsys, "estimate", "nofile.tsp")[::2] == (2, "error: nofile.tsp: no such program file\n")
    code, out, err = run(capsys, "estimate", "nofile.onnx")
    assert (code, err) == (2, f"error: nofile.onnx: no such ONNX model file (relative to {place})\n")


@pytest.fixture
def unrecorded(place):
    """A tiny zoo model compiled at 16x16 (its zoo default is 224x224) without provenance, as a
    program compiled from a graph in Python is."""
    from tilesparse.build import build_graph_from
    from tilesparse.compiler.pipeline import compile_graph

    g = build_graph_from("tiny_errors_cnn", input_shape=(1, 3, 16, 16)).graph
    compile_graph(g, "2x2").save(place / "p16.tsp")
    return place / "p16.tsp"


def test_simulate_with_model_rebuilds_at_the_programs_input_shape(unrecorded, capsys):
    """It used to rebuild at the zoo default, 224x224: a reshape traceback."""
    code, out, err = run(capsys, "simulate", "p16.tsp", "--model", "tiny_errors_cnn")
    assert code == 0, err
    assert "reference: all 2 layers bit-exact" in out
    code, out, err = run(capsys, "simulate", "p16.tsp", "--model", "tiny_errors_cnn", "--input-shape", "1,3,32,32")
    assert (code, err) == (2, "error: --input-shape 1,3,32,32: p16.tsp reads an input of 1,3,16,16\n")


def test_simulate_refuses_a_non_finite_or_empty_input(place, capsys):
    import numpy as np

    from tilesparse.build import compile_source

    compile_source("digits_cnn", "2x2").save(place / "p.tsp")
    np.save(place / "nan.npy", np.full((1, 1, 8, 8), np.nan, np.float32))
    (place / "empty.npy").write_bytes(b"")
    code, out, err = run(capsys, "simulate", "p.tsp", "--input", "nan.npy")
    assert (code, err) == (2, "error: nan.npy: input holds 64 NaN or infinite value(s)\n")
    code, out, err = run(capsys, "simulate", "p.tsp", "--input", "empty.npy")
    assert (code, err) == (2, "error: empty.npy: not a readable .npy array (No data left in file)\n")


def test_a_factory_that_exits_is_refused(place, capsys):
    """sys.exit(0) in the user's factory used to end the verb with exit code 0 and no program."""
    (place / "net.py").write_text("import sys\n\n\ndef make():\n    sys.exit(0)\n")
    code, out, err = run(capsys, "compile", "net.py:make", "--input-shape", "1,3,8,8")
    assert (code, err) == (2, f"error: {place / 'net.py'}:make: make() failed: SystemExit: 0\n")
