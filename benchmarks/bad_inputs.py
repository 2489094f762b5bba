"""Every bad input we could think of, tried as a user types it: each command runs as its own
`tilesparse` process in a fresh folder (holding the fixture files: good and broken programs,
arrays, recipes, checkpoints, inputs, model files), and the table records what it got: exit
code, stderr's line count and first line, whether a traceback appeared, which files were left
behind, the child's peak memory, and a verdict.

    python benchmarks/bad_inputs.py [--jobs 2] [--timeout 60] [--only TEXT] [--keep]

Writes benchmarks/results/bad_inputs.md (and .json). The cases are data: add a row to ``CASES``
(the issue's item, what is wrong, the command after ``tilesparse``, what should happen) and, if it
needs a file, a line in ``make_fixtures``. The script records what happens; it asserts nothing
(tests/test_cli_errors.py and tests/test_frontdoor_errors.py do).

Peak memory is the child's own maximum resident set (``os.wait4``; the fixtures are made in a
child too, so that this process stays small: a forked child starts with its parent's peak); a child whose resident set
passes ``--max-rss-mb`` is killed (verdict "memory blow-up"), and its address space is capped at
``--max-vm-gb`` (torch alone reserves ~3.5 GB of it), so that no case can take the machine down.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # this checkout's tilesparse, for the fixtures as for the children
RESULTS = ROOT / "benchmarks" / "results"
TRACEBACK = "Traceback (most recent call last)"

# (issue item, what is wrong, command after `tilesparse`, expected: "refuse" (exit 2, one line) or "run").
# Items 3-8 are the cases; "new" are our own; "ok" are good inputs, for the baseline memory.
CASES: tuple[tuple[str, str, str, str], ...] = (
    ("ok", "a good program, estimated (baseline)", "estimate p.tsp", "run"),
    ("ok", "a good program, simulated (baseline)", "simulate p.tsp", "run"),
    ("3", "array 100000x100000 on the command line", "estimate digits_cnn -a 100000x100000", "refuse"),
    ("3", "array 1000x1000", "compile digits_cnn -a 1000x1000 -o o.tsp", "refuse"),
    ("3", "array YAML with rows: 100000", "estimate digits_cnn -a rows_huge.yaml", "refuse"),
    ("3", "program header: iters = 10**12", "simulate iters.tsp", "refuse"),
    ("3", "program header: iters = 10**12", "estimate iters.tsp", "refuse"),
    ("3", "program header: hw.rows = 100000", "simulate rows.tsp", "refuse"),
    ("3", "program header: hw.rows = 100000", "estimate rows.tsp", "refuse"),
    ("4", "array YAML: billion laughs", "estimate digits_cnn -a laughs.yaml", "refuse"),
    ("4", "array YAML: not UTF-8", "estimate digits_cnn -a latin1.yaml", "refuse"),
    ("4", "array YAML: rows: true", "estimate digits_cnn -a rows_true.yaml", "refuse"),
    ("4", "array YAML: clock_hz: .inf", "estimate digits_cnn -a clock_inf.yaml", "refuse"),
    ("5", "--sparsity -0.1", "compile digits_cnn --sparsity -0.1 -o o.tsp", "refuse"),
    ("5", "--sparsity nan", "estimate digits_cnn --sparsity nan", "refuse"),
    ("5", "--sparsity -0.1", "simulate digits_cnn -a 2x2 --sparsity -0.1", "refuse"),
    ("6", "--resume with another --sparsity", "sparsify digits_cnn --resume -o run --sparsity 0.75 --epochs 1",
     "refuse"),
    ("6", "--resume with another --seed", "sparsify digits_cnn --resume -o run --sparsity 0.5 --epochs 1 --seed 7",
     "refuse"),
    ("6", "--resume with another --epochs", "sparsify digits_cnn --resume -o run --sparsity 0.5 --epochs 2", "refuse"),
    ("7", "checkpoint with one byte flipped mid-file", "compile ck_flip.pt -a 2x2 -o o.tsp", "refuse"),
    ("8", "32x32 program without provenance, --model, no --input-shape", "simulate r32.tsp --model resnet18", "run"),
    ("8", ".npy renamed .tsp", "estimate npy.tsp", "refuse"),
    ("8", "program header without hw (valid CRC)", "estimate nohw.tsp", "refuse"),
    ("8", "program header without layers (valid CRC)", "estimate nolayers.tsp", "refuse"),
    ("8", "program header version \"5\" (a string)", "estimate v5str.tsp", "refuse"),
    ("8", "--out names an existing folder", "compile digits_cnn -a 2x2 -o dir", "refuse"),
    ("8", "--listing names a folder (the program must not be written)",
     "compile digits_cnn -a 2x2 -o o.tsp --listing dir", "refuse"),
    ("8", "--out under a regular file", "compile digits_cnn -a 2x2 -o file.txt/o.tsp", "refuse"),
    ("8", "sparsify --data: a truncated file", "sparsify digits_cnn --data data_trunc.pt --epochs 1 -o r", "refuse"),
    ("8", "a program file that does not exist", "estimate nofile.tsp", "refuse"),
    ("new", "program: truncated", "simulate trunc.tsp", "refuse"),
    ("new", "program: random bytes", "estimate garbage.tsp", "refuse"),
    ("new", "program: empty file", "estimate empty.tsp", "refuse"),
    ("new", "program: one weight byte flipped", "simulate flip.tsp", "refuse"),
    ("new", "program: header not JSON", "estimate badjson.tsp", "refuse"),
    ("new", "program: header with another magic", "estimate magic.tsp", "refuse"),
    ("new", "program: iters = -1", "simulate neg_iters.tsp", "refuse"),
    ("new", "program: layers is a string", "estimate layers_str.tsp", "refuse"),
    ("new", "program: a folder named .tsp", "simulate dir.tsp", "refuse"),
    ("new", "program for 2x2 with -a 4x4", "estimate p.tsp -a 4x4", "refuse"),
    ("new", "program given as a model", "compile p.tsp -o o.tsp", "refuse"),
    ("new", "array YAML: truncated", "estimate digits_cnn -a trunc.yaml", "refuse"),
    ("new", "array YAML: random bytes", "estimate digits_cnn -a garbage.yaml", "refuse"),
    ("new", "array YAML: empty file", "estimate digits_cnn -a empty.yaml", "refuse"),
    ("new", "array YAML: a list", "estimate digits_cnn -a list.yaml", "refuse"),
    ("new", "array YAML: 100000 nested lists", "estimate digits_cnn -a deep.yaml", "refuse"),
    ("new", "array YAML: rows: -1", "estimate digits_cnn -a rows_neg.yaml", "refuse"),
    ("new", "array YAML: rows: \"four\"", "estimate digits_cnn -a rows_str.yaml", "refuse"),
    ("new", "array YAML: unknown key rowz", "estimate digits_cnn -a rowz.yaml", "refuse"),
    ("new", "array YAML: clock_hz: 1e400", "estimate digits_cnn -a clock_big.yaml", "refuse"),
    ("new", "array YAML: a folder", "estimate digits_cnn -a dir.yaml", "refuse"),
    ("new", "recipe: truncated", "sparsify digits_cnn --recipe recipe_trunc.yaml --epochs 0 -o r", "refuse"),
    ("new", "recipe: random bytes", "sparsify digits_cnn --recipe garbage.yaml --epochs 0 -o r", "refuse"),
    ("new", "recipe: empty file", "sparsify digits_cnn --recipe empty.yaml --epochs 0 -o r", "refuse"),
    ("new", "recipe: sparsity: half", "sparsify digits_cnn --recipe recipe_types.yaml --epochs 0 -o r", "refuse"),
    ("new", "recipe: billion laughs", "sparsify digits_cnn --recipe laughs.yaml --epochs 0 -o r", "refuse"),
    ("new", "recipe: missing", "sparsify digits_cnn --recipe nofile.yaml --epochs 0 -o r", "refuse"),
    ("new", "recipe: a folder", "sparsify digits_cnn --recipe dir --epochs 0 -o r", "refuse"),
    ("new", "checkpoint: truncated", "compile ck_trunc.pt -a 2x2 -o o.tsp", "refuse"),
    ("new", "checkpoint: random bytes", "compile ck_garbage.pt -a 2x2 -o o.tsp", "refuse"),
    ("new", "checkpoint: empty file", "compile ck_empty.pt -a 2x2 -o o.tsp", "refuse"),
    ("new", "checkpoint: holds a pickled object", "compile ck_pickle.pt -a 2x2 -o o.tsp", "refuse"),
    ("new", "--weights: truncated checkpoint", "compile digits_cnn --weights ck_trunc.pt -a 2x2 -o o.tsp", "refuse"),
    ("new", "--weights: missing", "compile digits_cnn --weights nofile.pth -a 2x2 -o o.tsp", "refuse"),
    ("new", "--weights: a folder", "compile digits_cnn --weights dir -a 2x2 -o o.tsp", "refuse"),
    ("new", "--input .npy: truncated", "simulate p.tsp --input x_trunc.npy", "refuse"),
    ("new", "--input .npy: random bytes", "simulate p.tsp --input garbage.npy", "refuse"),
    ("new", "--input .npy: empty file", "simulate p.tsp --input empty.npy", "refuse"),
    ("new", "--input .npy: object array (pickle)", "simulate p.tsp --input x_obj.npy", "refuse"),
    ("new", "--input .npy: wrong shape", "simulate p.tsp --input x_shape.npy", "refuse"),
    ("new", "--input .npy: NaN values", "simulate p.tsp --input x_nan.npy", "refuse"),
    ("new", "--input .npy: complex values", "simulate p.tsp --input x_complex.npy", "refuse"),
    ("new", "--input: a folder", "simulate p.tsp --input dir", "refuse"),
    ("new", "--input: missing", "simulate p.tsp --input nofile.npy", "refuse"),
    ("new", ".pt2: random bytes", "compile garbage.pt2 -o o.tsp", "refuse"),
    ("new", ".pt2: empty file", "compile empty.pt2 -o o.tsp", "refuse"),
    ("new", ".pt2: a state dict renamed", "compile sd.pt2 -o o.tsp", "refuse"),
    ("new", "file.py: syntax error", "compile broken.py:make --input-shape 1,3,8,8 -o o.tsp", "refuse"),
    ("new", "file.py: imports a missing package", "compile noimport.py:make --input-shape 1,3,8,8 -o o.tsp",
     "refuse"),
    ("new", "file.py:factory raises", "compile models.py:boom --input-shape 1,3,8,8 -o o.tsp", "refuse"),
    ("new", "file.py:factory calls sys.exit(0)", "compile models.py:exits --input-shape 1,3,8,8 -o o.tsp", "refuse"),
    ("new", "file.py:factory recurses forever", "compile models.py:recurse --input-shape 1,3,8,8 -o o.tsp",
     "refuse"),
    ("new", "file.py:factory allocates 4 TB", "compile models.py:huge --input-shape 1,3,8,8 -o o.tsp", "refuse"),
    ("new", "file.py:factory needs an argument", "compile models.py:needs_arg --input-shape 1,3,8,8 -o o.tsp",
     "refuse"),
    ("new", "file.py:factory returns a str", "compile models.py:not_a_model --input-shape 1,3,8,8 -o o.tsp",
     "refuse"),
    ("new", "file.py:factory without --input-shape", "compile models.py:make -o o.tsp", "refuse"),
    ("new", "file.py missing", "compile nofile.py:make -o o.tsp", "refuse"),
    ("new", "checkpoint missing", "compile nofile.pt -o o.tsp", "refuse"),
    ("new", "unknown zoo name", "estimate nofile", "refuse"),
    ("new", "unknown suffix, missing", "estimate nofile.onnx", "refuse"),
    ("new", "--input-shape 1,3,100000,100000", "estimate resnet18 --input-shape 1,3,100000,100000", "refuse"),
    ("new", "--input-shape with a 0", "estimate resnet18 --input-shape 0,3,32,32", "refuse"),
    ("new", "--input-shape with 3 numbers", "estimate resnet18 --input-shape 1,3,32", "refuse"),
    ("new", "--block 100000x100000", "compile digits_cnn --block 100000x100000 -o o.tsp", "refuse"),
    ("new", "--block 0x8", "compile digits_cnn --block 0x8 -o o.tsp", "refuse"),
    ("new", "--sparsity inf", "compile digits_cnn --sparsity inf -o o.tsp", "refuse"),
    ("new", "--sparsity 1e308", "compile digits_cnn --sparsity 1e308 -o o.tsp", "refuse"),
    ("new", "--sparsity abc (not a number)", "compile digits_cnn --sparsity abc -o o.tsp", "refuse"),
    ("new", "--top -5", "estimate p.tsp --top -5", "refuse"),
    ("new", "--seed -1", "simulate p.tsp --seed -1", "refuse"),
    ("new", "--epochs -1", "sparsify digits_cnn --epochs -1 -o r", "refuse"),
    ("new", "--lr nan", "sparsify digits_cnn --lr nan --epochs 1 -o r", "refuse"),
    ("new", "--batch-size 0", "sparsify digits_cnn --batch-size 0 --epochs 1 -o r", "refuse"),
    ("new", "--threads 0", "sparsify digits_cnn --threads 0 --epochs 0 -o r", "refuse"),
    ("new", "--device bogus", "sparsify digits_cnn --device bogus --epochs 0 -o r", "refuse"),
    ("new", "--data a folder", "sparsify digits_cnn --data dir --epochs 1 -o r", "refuse"),
    ("new", "--data random bytes", "sparsify digits_cnn --data garbage.pt --epochs 1 -o r", "refuse"),
    ("new", "map --budget 0", "map --layer conv:k=8,c=8,p=4,q=4,r=3,s=3 --budget 0", "refuse"),
    ("new", "map --budget -1", "map --layer conv:k=8,c=8,p=4,q=4,r=3,s=3 --budget -1", "refuse"),
    ("new", "map --layer k=0", "map --layer conv:k=0,c=8,p=4,q=4,r=3,s=3", "refuse"),
    ("new", "map --layer with 10**9 channels", "map --layer conv:k=1000000000,c=1000000000,p=4,q=4,r=3,s=3", "refuse"),
    ("new", "map --density 1.5", "map --layer conv:k=8,c=8,p=4,q=4,r=3,s=3 --density 1.5", "refuse"),
    ("new", "map --density nan", "map --layer conv:k=8,c=8,p=4,q=4,r=3,s=3 --density nan", "refuse"),
    ("new", "map --objective bogus", "map --layer conv:k=8,c=8,p=4,q=4,r=3,s=3 --objective bogus", "refuse"),
    ("new", "map --mapper bogus", "map --layer conv:k=8,c=8,p=4,q=4,r=3,s=3 --mapper bogus", "refuse"),
    ("new", "map --format bogus", "map --layer conv:k=8,c=8,p=4,q=4,r=3,s=3 --density 0.5 --format bogus", "refuse"),
    ("new", "explore --jobs 0", "explore --networks digits_cnn --arrays 2x2 --rect '' --jobs 0 -o ex", "refuse"),
    ("new", "demo --images 0", "demo --images 0", "refuse"),
    ("new", "demo --seed -1", "demo --seed -1 --networks '' -a 2x2", "refuse"),
    ("new", "map --seed -1", "map --layer conv:k=8,c=8,p=4,q=4,r=3,s=3 --seed -1", "refuse"),
    ("new", "sparsify --seed -1", "sparsify digits_cnn --seed -1 --epochs 0 -o r", "refuse"),
    ("new", "simulate --seed 2**64", "simulate p.tsp --seed 18446744073709551616", "refuse"),
    ("new", "explore --jobs -1", "explore --networks digits_cnn --arrays 2x2 --rect '' --jobs -1 -o ex", "refuse"),
    ("new", "--array '' (empty)", "compile digits_cnn -a '' -o o.tsp", "refuse"),
    ("new", "--out '' (empty: the current folder)", "compile digits_cnn -a 2x2 -o ''", "refuse"),
    ("new", "--input-shape with a negative size", "estimate resnet18 --input-shape 1,3,-32,32", "refuse"),
    ("new", "output: --json names a folder", "compile digits_cnn -a 2x2 -o o.tsp --json dir", "refuse"),
    ("new", "output: --timeline names a folder", "estimate p.tsp --timeline dir.html", "refuse"),
    ("new", "output: --timeline under a file", "estimate p.tsp --timeline file.txt/t.html", "refuse"),
    ("new", "output: simulate --json names a folder", "simulate p.tsp --json dir", "refuse"),
    ("new", "output: sparsify --out is a file", "sparsify digits_cnn --epochs 0 -o file.txt", "refuse"),
    ("new", "output: sparsify --out holds a folder sparse.pt", "sparsify digits_cnn --epochs 0 -o occupied", "refuse"),
    ("new", "output: demo --out is a file", "demo --networks '' -a 2x2 -o file.txt", "refuse"),
    ("new", "output: explore --out is a file", "explore --networks digits_cnn --arrays 2x2 --rect '' -o file.txt",
     "refuse"),
    ("new", "output: map --json names a folder", "map --layer conv:k=8,c=8,p=4,q=4,r=3,s=3 --json dir", "refuse"),
    ("new", "output: under /proc (not writable)", "compile digits_cnn -a 2x2 -o /proc/o.tsp", "refuse"),
    ("new", "output: --json /dev/null (a device)", "compile digits_cnn -a 2x2 -o o.tsp --json /dev/null", "refuse"),
    ("new", "output: --out and --json the same file", "compile digits_cnn -a 2x2 -o o.tsp --json o.tsp", "refuse"),
    ("new", "unknown option", "compile digits_cnn --bogus", "refuse"),
    ("new", "unknown verb", "bogus", "refuse"),
)

MODELS_PY = '''import sys

from torch import nn


def make():
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))


def boom():
    raise RuntimeError("no such layer config")


def exits():
    sys.exit(0)


def recurse():
    return recurse()


def huge():
    return nn.Linear(1 << 20, 1 << 20)


def needs_arg(width):
    return nn.Conv2d(3, width, 3)


def not_a_model():
    return "hello"
'''
ARRAY_YAML = "name: mine\nrows: 2\ncols: 2\n"
LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True))


@dataclass
class Result:
    item: str
    what: str
    command: str
    expect: str
    exit: int | None = None
    stderr_lines: int = 0
    first_line: str = ""
    traceback: bool = False
    left_behind: list[str] = field(default_factory=list)
    peak_mb: float = 0.0
    seconds: float = 0.0
    killed: str = ""  # "timeout" or "memory"
    verdict: str = ""


def _program_variants(d: Path) -> None:
    """Programs edited in their header (a valid zip CRC: rewritten, not flipped) and broken ones."""
    import numpy as np

    good = d / "p.tsp"
    raw = good.read_bytes()
    z = dict(np.load(good))
    h = json.loads(z["header"].tobytes())

    def edited(name: str, header: object) -> None:
        with open(d / name, "wb") as f:
            np.savez(f, **{**z, "header": np.frombuffer(json.dumps(header).encode(), np.uint8)})

    edited("iters.tsp", {**h, "instrs": [{**h["instrs"][0], "iters": 10**12}, *h["instrs"][1:]]})
    edited("neg_iters.tsp", {**h, "instrs": [{**h["instrs"][0], "iters": -1}, *h["instrs"][1:]]})
    edited("rows.tsp", {**h, "hw": {**h["hw"], "rows": 100000}})
    edited("nohw.tsp", {k: v for k, v in h.items() if k != "hw"})
    edited("nolayers.tsp", {k: v for k, v in h.items() if k != "layers"})
    edited("v5str.tsp", {**h, "version": str(h["version"])})
    edited("magic.tsp", {**h, "magic": "something-else"})
    edited("layers_str.tsp", {**h, "layers": "x"})
    with open(d / "badjson.tsp", "wb") as f:
        np.savez(f, **{**z, "header": np.frombuffer(b"{not json", np.uint8)})
    (d / "trunc.tsp").write_bytes(raw[: len(raw) // 2])
    flip = bytearray(raw)
    flip[len(raw) // 2] ^= 0xFF
    (d / "flip.tsp").write_bytes(bytes(flip))
    np.save(d / "npy.npy", np.zeros((4, 4), np.float32))
    (d / "npy.npy").rename(d / "npy.tsp")


def _checkpoint_variants(d: Path) -> None:
    import zipfile

    import torch

    raw = (d / "run" / "sparse.pt").read_bytes()
    (d / "ck_trunc.pt").write_bytes(raw[: len(raw) // 2])
    with zipfile.ZipFile(d / "run" / "sparse.pt") as zf:  # the middle of the largest tensor's bytes
        big = max(zf.infolist(), key=lambda i: i.file_size)
        start = big.header_offset + 30 + len(big.filename.encode()) + len(big.extra)
    flip = bytearray(raw)
    flip[start + big.file_size // 2] ^= 0x40
    (d / "ck_flip.pt").write_bytes(bytes(flip))
    torch.save({"format": "tilesparse-checkpoint", "obj": argparse.Namespace(x=1)}, d / "ck_pickle.pt")
    torch.save(torch.nn.Linear(2, 2).state_dict(), d / "sd.pt2")
    data = {"x_train": torch.randn(64, 1, 8, 8), "y_train": torch.randint(0, 10, (64,)),
            "x_test": torch.randn(16, 1, 8, 8), "y_test": torch.randint(0, 10, (16,))}
    torch.save(data, d / "data.pt")
    raw = (d / "data.pt").read_bytes()
    (d / "data_trunc.pt").write_bytes(raw[: len(raw) // 2])


def _text_files(d: Path) -> None:
    rng = __import__("random").Random(0)
    garbage = bytes(rng.randrange(256) for _ in range(4096))
    for name in ("garbage.tsp", "garbage.yaml", "ck_garbage.pt", "garbage.npy", "garbage.pt2", "garbage.pt"):
        (d / name).write_bytes(garbage)
    for name in ("empty.tsp", "empty.yaml", "ck_empty.pt", "empty.npy", "empty.pt2"):
        (d / name).write_bytes(b"")
    yamls = {"rows_huge.yaml": ARRAY_YAML.replace("rows: 2", "rows: 100000"), "laughs.yaml": LAUGHS,
             "rows_true.yaml": ARRAY_YAML.replace("rows: 2", "rows: true"),
             "clock_inf.yaml": ARRAY_YAML + "clock_hz: .inf\n", "trunc.yaml": "name: mine\nrows: [2,\n",
             "list.yaml": "- 4\n- 4\n", "deep.yaml": "[" * 100000 + "]" * 100000 + "\n",
             "rows_neg.yaml": ARRAY_YAML.replace("rows: 2", "rows: -1"),
             "rows_str.yaml": ARRAY_YAML.replace("rows: 2", "rows: four"),
             "rowz.yaml": ARRAY_YAML + "rowz: 4\n", "clock_big.yaml": ARRAY_YAML + "clock_hz: 1e400\n",
             "recipe_trunc.yaml": "method: oneshot\nsparsity: [0.5,\n",
             "recipe_types.yaml": "method: oneshot\nsparsity: half\n"}
    for name, text in yamls.items():
        (d / name).write_text(text)
    (d / "latin1.yaml").write_bytes("name: caf\u00e9\nrows: 2\ncols: 2\n".encode("latin-1"))
    (d / "models.py").write_text(MODELS_PY)
    (d / "broken.py").write_text("def make(:\n    pass\n")
    (d / "noimport.py").write_text("import nosuchpackage_xyz\n\n\ndef make():\n    return None\n")
    (d / "file.txt").write_text("a regular file\n")
    for folder in ("dir", "dir.tsp", "dir.yaml", "dir.html", "occupied/sparse.pt"):
        (d / folder).mkdir(parents=True)


def _npy_inputs(d: Path) -> None:
    import numpy as np

    x = np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype(np.float32)
    np.save(d / "x.npy", x)
    raw = (d / "x.npy").read_bytes()
    (d / "x_trunc.npy").write_bytes(raw[: len(raw) - 40])
    np.save(d / "x_obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(d / "x_shape.npy", np.zeros((1, 3, 8, 8), np.float32))
    np.save(d / "x_nan.npy", np.full((1, 1, 8, 8), np.nan, np.float32))
    np.save(d / "x_complex.npy", x.astype(np.complex64))


def make_fixtures(d: Path, env: dict[str, str]) -> None:
    """Good artifacts (a digits program, a resnet18 32x32 program without provenance, a sparsify run
    with last.pt) and every broken file the cases name."""
    from tilesparse.build import build_graph_from, compile_source
    from tilesparse.compiler.pipeline import compile_graph

    compile_source("digits_cnn", "2x2", sparsity=0.5).save(d / "p.tsp")
    compile_graph(build_graph_from("resnet18", input_shape=(1, 3, 32, 32)).graph, "2x2").save(d / "r32.tsp")
    subprocess.run([sys.executable, "-m", "tilesparse", "sparsify", "digits_cnn", "--sparsity", "0.5", "--epochs",
                    "1", "--seed", "0", "-o", "run"], cwd=d, env=env, check=True, capture_output=True)
    _program_variants(d)
    _checkpoint_variants(d)
    _text_files(d)
    _npy_inputs(d)


def _link_tree(src: Path, dst: Path) -> None:
    """``dst`` as a copy of ``src`` made of hard links (cheap; tilesparse replaces files, never edits them)."""
    shutil.copytree(src, dst, copy_function=os.link, symlinks=True)


def _snapshot(d: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for p in d.rglob("*"):
        st = p.lstat()
        key = p.relative_to(d).as_posix()
        out[key + "/" if p.is_dir() else key] = (0, 0) if p.is_dir() else (st.st_size, st.st_mtime_ns)
    return out


def _launcher(max_vm_gb: float) -> str:
    """The child: an address-space cap, then `python -m tilesparse` (sys.argv set by the parent)."""
    cap = int(max_vm_gb * 2**30)
    return ("import resource, runpy; resource.setrlimit(resource.RLIMIT_AS, "
            f"({cap}, {cap})); runpy.run_module('tilesparse', run_name='__main__')")


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
    except (OSError, StopIteration, ValueError):
        return 0.0


def _wait(proc: subprocess.Popen, timeout: float, max_rss_mb: float) -> tuple[int | None, float, str]:
    """(exit code or None if killed, peak RSS in MB, "timeout" / "memory" / "")."""
    t0, killed = time.monotonic(), ""
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, with its rusage
            return (None if killed else proc.returncode), usage.ru_maxrss / 1024, killed
        if not killed and time.monotonic() - t0 > timeout:
            killed = "timeout"
        elif not killed and _rss_mb(proc.pid) > max_rss_mb:
            killed = "memory"
        if killed:
            os.killpg(proc.pid, signal.SIGKILL)  # the child's own process group (start_new_session)
        time.sleep(0.05)


def run_case(case: tuple[str, str, str, str], fixtures: Path, work: Path, env: dict[str, str],
             args: argparse.Namespace) -> Result:
    item, what, command, expect = case
    r = Result(item, what, command, expect)
    d = Path(tempfile.mkdtemp(dir=work))
    case_dir = d / "case"
    _link_tree(fixtures, case_dir)
    before = _snapshot(case_dir)
    with open(d / "stdout", "wb") as out, open(d / "stderr", "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", _launcher(args.max_vm_gb), *shlex.split(command)],
                                cwd=case_dir, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        r.exit, r.peak_mb, r.killed = _wait(proc, args.timeout, args.max_rss_mb)
        r.seconds = time.perf_counter() - t0
    text = (d / "stderr").read_text(errors="replace")
    lines = [line for line in text.splitlines() if line.strip()]
    r.stderr_lines, r.first_line = len(lines), (lines[0].strip() if lines else "")
    r.traceback = TRACEBACK in text
    after = _snapshot(case_dir)
    r.left_behind = sorted([p for p in after if p not in before] + [f"{p} (changed)" for p in before
                                                                    if p in after and after[p] != before[p]])
    r.verdict = verdict(r)
    if not args.keep:
        shutil.rmtree(d, ignore_errors=True)
    return r


def verdict(r: Result) -> str:
    """What the user got, in a few words."""
    if r.killed == "timeout":
        return "hang (killed at the timeout)"
    if r.killed == "memory":
        return "memory blow-up (killed)"
    if r.traceback:
        return "traceback"
    if r.expect == "run" and r.exit == 0:
        return "ran (as expected)"
    if r.exit == 0:
        return "accepted silently"
    if r.exit == 2 and r.first_line.startswith("error: out of memory"):
        return "out of memory (one line)"
    if r.exit == 2 and r.stderr_lines == 1 and r.first_line.startswith("error: "):
        return "refused in one line" + (", left files" if r.left_behind else "")
    if r.exit == 2 and r.first_line.startswith("Usage:"):
        return "refused (usage message)"
    if r.exit == 3:
        return "internal error (one line)"
    return f"other (exit {r.exit}, {r.stderr_lines} lines)"


KINDS = ("refused", "ran", "traceback", "hang", "memory", "silent", "internal", "other")


def kind(v: str) -> str:
    return {"accepted silently": "silent", "hang (killed at the timeout)": "hang", "ran (as expected)": "ran",
            "memory blow-up (killed)": "memory", "out of memory (one line)": "memory",
            "internal error (one line)": "internal", "traceback": "traceback"}.get(
        v, "refused" if v.startswith("refused") else "other")


def _cell(text: str, width: int = 150) -> str:
    text = text if len(text) <= width else text[:width] + "…"
    return text.replace("|", "\\|").replace("`", "'")


def markdown(results: list[Result], cmd: str, args: argparse.Namespace, wall_s: float) -> str:
    counts = {k: sum(kind(r.verdict) == k for r in results) for k in KINDS}
    summary = ", ".join(f"{k} {n}" for k, n in counts.items() if n)
    base = max((r.peak_mb for r in results if r.item == "ok"), default=0.0)
    worst = max(results, key=lambda r: r.peak_mb)
    out = ["# Bad inputs: what each gets", "", f"Command: `{cmd}`  ",
           f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
           f"{len(results)} cases in {wall_s:.0f} s, {args.jobs} at a time; per case: timeout {args.timeout:.0f} s, "
           f"killed above {args.max_rss_mb:.0f} MB resident, address space capped at {args.max_vm_gb:g} GB.", "",
           f"**Verdicts:** {summary} (of {len(results)}).  ",
           f"Peak memory: a good program simulated takes {base:.0f} MB (torch's import is most of it); the largest "
           f"case took {worst.peak_mb:.0f} MB ({_cell(worst.command, 80)}).", "",
           "Each case ran in a fresh folder holding the fixtures; *left behind* lists files that appeared or "
           "changed. Items 3-8 are the issue's cases, *new* our own, *ok* good inputs for the baseline.", "",
           "| # | item | what is wrong | command | exit | stderr lines | first stderr line | traceback | left behind "
           "| peak MB | s | verdict |", "|" + "---|" * 12]
    for i, r in enumerate(results, 1):
        out.append(f"| {i} | {r.item} | {_cell(r.what)} | `tilesparse {_cell(r.command)}` | "
                   f"{'killed' if r.exit is None else r.exit} | {r.stderr_lines} | {_cell(r.first_line)} | "
                   f"{'yes' if r.traceback else 'no'} | {_cell(', '.join(r.left_behind), 80) or '-'} | "
                   f"{r.peak_mb:.0f} | {r.seconds:.1f} | {r.verdict} |")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--max-rss-mb", type=float, default=3000.0)
    ap.add_argument("--max-vm-gb", type=float, default=8.0)
    ap.add_argument("--only", default="", help="Run only the cases whose command or description holds this text.")
    ap.add_argument("--keep", action="store_true", help="Keep each case's folder (printed).")
    ap.add_argument("--make-fixtures", type=Path, help=argparse.SUPPRESS)  # the child that makes them
    args = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if k not in ("TILESPARSE_DEBUG", "CI")}
    env.update(PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", COLUMNS="120")
    if args.make_fixtures:
        return make_fixtures(args.make_fixtures, env)
    cases = [c for c in CASES if args.only in c[2] or args.only in c[1]]
    work = Path(tempfile.mkdtemp(prefix="bad_inputs."))
    t0 = time.perf_counter()
    try:
        fixtures = work / "fixtures"
        fixtures.mkdir()
        subprocess.run([sys.executable, __file__, "--make-fixtures", str(fixtures)], env=env, check=True)
        with ThreadPoolExecutor(args.jobs) as pool:
            results = list(pool.map(lambda c: run_case(c, fixtures, work, env, args), cases))
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    wall = time.perf_counter() - t0
    for r in results:
        print(f"{r.verdict:32s} {r.exit!s:>4} {r.peak_mb:6.0f} MB  tilesparse {r.command}")
    if args.only:
        return
    cmd = "python benchmarks/bad_inputs.py" + "".join(f" {a}" for a in sys.argv[1:])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bad_inputs.md").write_text(markdown(results, cmd, args, wall))
    (RESULTS / "bad_inputs.json").write_text(json.dumps([asdict(r) for r in results], indent=1) + "\n")
    print(f"wrote {RESULTS / 'bad_inputs.md'}")


if __name__ == "__main__":
    main()
