"""Programs and their sources on the move, and flags checked against a program's provenance by
every verb that reads programs (simulate and estimate)."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest
import torch
from test_frontdoor_cli import kept_blocks
from typer.testing import CliRunner

from tilesparse.cli.main import app
from tilesparse.errors import ProvenanceError
from tilesparse.program import Program
from tilesparse.program.provenance import Provenance, provenance_of

runner = CliRunner()

NET = '''
import torch
from torch import nn


class Net(nn.Module):
    """odd channels, a grouped and a depthwise conv, max/avg pools, a residual add, a concat, a Linear head"""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 15, 3, padding=1), nn.BatchNorm2d(15), nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.grouped = nn.Conv2d(15, 21, 3, padding=1, groups=3)
        self.dw = nn.Conv2d(21, 21, 3, padding=1, groups=21)
        self.pw = nn.Conv2d(21, 21, 1)
        self.branch = nn.Conv2d(21, 11, 1)
        self.avg = nn.AvgPool2d(2)
        self.head = nn.Conv2d(32, 37, 3, padding=1)
        self.fc = nn.Linear(37, 10)

    def forward(self, x):
        x = self.pool(self.stem(x))
        g = torch.relu(self.grouped(x))
        y = torch.relu(self.pw(torch.relu(self.dw(g))) + g)
        z = self.avg(torch.cat([y, torch.relu(self.branch(y))], dim=1))
        z = torch.relu(self.head(z))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(z, 1), 1))


def make():
    return Net()
'''


def _ok(args):
    r = runner.invoke(app, args)
    assert r.exit_code == 0, (r.output, r.exception)
    return r.output


def _refused(args, exc=ProvenanceError):
    r = runner.invoke(app, args)
    assert isinstance(r.exception, exc), (r.output, r.exception)
    assert "simulated" not in r.output and "total" not in r.output  # refused before any work
    return str(r.exception)


@pytest.fixture
def project(tmp_path, monkeypatch):
    """proj/models/net.py compiled from inside proj with a relative source path."""
    proj = tmp_path / "proj"
    (proj / "models").mkdir(parents=True)
    (proj / "models" / "net.py").write_text(NET)
    monkeypatch.chdir(proj)
    _ok(["compile", "models/net.py:make", "--input-shape", "1,3,16,16", "--sparsity", "0.5", "-a", "2x2",
         "-o", "prog.tsp"])
    return proj


def test_a_project_moved_as_a_whole_finds_its_source_from_the_same_folder(project, tmp_path, monkeypatch):
    prov = provenance_of(Program.load(project / "prog.tsp"))
    assert prov.source == f"{project / 'models' / 'net.py'}:make" and prov.source_given == "models/net.py"
    moved = tmp_path / "moved"
    shutil.move(project, moved)
    monkeypatch.chdir(moved)
    out = _ok(["simulate", "prog.tsp"])
    assert f"source file {project / 'models' / 'net.py'} not found; using models/net.py (as given at compile" in out
    assert "all 11 layers bit-exact" in out and f"verifying against {moved / 'models' / 'net.py'}:make" in out


def test_a_program_shipped_with_its_source_next_to_it(project, tmp_path, monkeypatch):
    ship = tmp_path / "ship"
    ship.mkdir()
    shutil.copy(project / "prog.tsp", ship)
    shutil.copy(project / "models" / "net.py", ship)
    shutil.rmtree(project)
    monkeypatch.chdir(tmp_path)
    out = _ok(["simulate", "ship/prog.tsp"])
    assert "using ship/net.py (next to ship/prog.tsp, same sha256)" in out and "all 11 layers bit-exact" in out
    # the same name with other contents is not the source: refused, naming both files
    (ship / "net.py").write_text(NET + "\n# edited\n")
    msg = _refused(["simulate", "ship/prog.tsp"])
    assert f"source file {project / 'models' / 'net.py'} is gone, and ship/net.py in its stead has other " \
           "contents" in msg and "restore the file or recompile" in msg
    (ship / "net.py").unlink()
    msg = _refused(["simulate", "ship/prog.tsp"])
    assert "which no longer exists (nor at models/net.py, ship/net.py)" in msg


def test_a_source_named_again_with_model_is_used_if_its_hash_agrees(project, tmp_path, monkeypatch):
    elsewhere = tmp_path / "lib" / "renamed.py"
    elsewhere.parent.mkdir()
    shutil.move(project / "models" / "net.py", elsewhere)
    out = _ok(["simulate", "prog.tsp", "--model", f"{elsewhere}:make"])
    assert f"using {elsewhere} (given with --model, same sha256)" in out and "all 11 layers bit-exact" in out
    elsewhere.write_text(NET.replace("nn.Conv2d(21, 11, 1)", "nn.Conv2d(21, 12, 1)"))
    msg = _refused(["simulate", "prog.tsp", "--model", f"{elsewhere}:make"])
    assert f"--model {elsewhere}:make contradicts the provenance of prog.tsp" in msg


def test_an_edited_source_in_place_is_refused(project):
    (project / "models" / "net.py").write_text(NET + "\n# edited\n")
    msg = _refused(["simulate", "prog.tsp"])
    assert f"source file {project / 'models' / 'net.py'} changed since prog.tsp was compiled (sha256" in msg


def test_records_without_the_given_paths_still_load():
    """Programs saved before source_given / weights_given existed keep loading (None)."""
    rec = dict(source="digits_cnn", source_kind="zoo", source_sha256=None, weights=None, weights_sha256=None,
               pattern="block", block=[8, 8], sparsity=0.5, selection="l2-oneshot", seed=0,
               quantization="int8 power-of-two, per-tensor weights", calibration="random normal, n=2, seed=0",
               input_shape=[1, 1, 8, 8], array="aie2-2x2", time_model="tilesparse-v1", balance=True, version="0.1.0")
    p = Provenance.from_dict(rec, "old.tsp")
    assert p.source_given is None and p.weights_given is None
    assert Provenance.from_dict(p.to_dict(), "new.tsp") == p


def test_estimate_checks_flags_against_the_program_and_says_what_to_run(project):
    """estimate used to ignore --sparsity / --block / --input-shape on a program file."""
    src = f"{project / 'models' / 'net.py'}:make"
    msg = _refused(["estimate", "prog.tsp", "--sparsity", "0.3"])
    assert msg.startswith("--sparsity 0.3 contradicts the provenance of prog.tsp (sparsity 0.5)")
    assert f"tilesparse compile {src} --sparsity 0.3 --input-shape 1,3,16,16 -a aie2-2x2 -o new.tsp" in msg
    msg = _refused(["estimate", "prog.tsp", "--block", "4x4"])
    assert "(block 8x8)" in msg and "--sparsity 0.5 --block 4x4 --input-shape 1,3,16,16" in msg
    msg = _refused(["estimate", "prog.tsp", "--input-shape", "1,3,32,32"])
    assert "(input_shape 1,3,16,16)" in msg
    msg = _refused(["estimate", "prog.tsp", "-a", "4x4"])
    assert "(array aie2-2x2)" in msg and "-a 4x4 -o new.tsp" in msg
    assert "total" in _ok(["estimate", "prog.tsp", "--sparsity", "0.5", "--block", "8x8", "-a", "2x2"])


def test_a_checkpoint_program_points_to_sparsify_for_another_sparsity(tmp_path):
    run = tmp_path / "run"
    _ok(["sparsify", "digits_cnn", "--sparsity", "0.5", "--epochs", "0", "-o", str(run)])
    _ok(["compile", str(run / "sparse.pt"), "-a", "2x2", "-o", str(tmp_path / "d.tsp")])
    msg = _refused(["simulate", str(tmp_path / "d.tsp"), "--sparsity", "0.3"])
    assert "(sparsity 0.5)" in msg and f"tilesparse sparsify {run / 'sparse.pt'} --sparsity 0.3" in msg


def test_a_torch_export_source_sparsified_compiles_from_its_checkpoint(tmp_path, monkeypatch):
    """sparsify NET.pt2 records the .pt2 in its checkpoint (it recorded nothing: the checkpoint
    then failed to compile, 'names no model architecture'); the program carries the trained masks."""
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "usernet.py").write_text(NET)
    from usernet import make

    torch.manual_seed(0)
    ep = torch.export.export(make().eval(), (torch.randn(1, 3, 16, 16),))
    torch.export.save(ep, tmp_path / "net.pt2")
    monkeypatch.chdir(tmp_path)
    _ok(["sparsify", "net.pt2", "--sparsity", "0.5", "--block", "4x4", "--data", "none"])
    ck = tmp_path / "runs" / "net-oneshot-0.5" / "sparse.pt"  # the default folder: the .pt2's stem
    assert torch.load(ck, weights_only=True)["model_name"] == str(tmp_path / "net.pt2")
    _ok(["compile", str(ck), "-a", "2x2", "-o", "c.tsp"])  # input shape: the .pt2's example input
    prog = Program.load(tmp_path / "c.tsp")
    assert provenance_of(prog).input_shape == (1, 3, 16, 16)
    assert provenance_of(prog).selection == "checkpoint-masks" and provenance_of(prog).block == (4, 4)
    masks = torch.load(ck, weights_only=True)["sparsifier"]["masks"]
    head = masks["head"].numpy()  # 37x32 in 4x4 blocks: 10 x 8
    assert head.shape == (10, 8) and 0 < head.sum() < head.size
    np.testing.assert_array_equal(kept_blocks(prog, "head"), head)  # decoded from the packed bitmaps
    assert "all 11 layers bit-exact" in _ok(["simulate", "c.tsp"])


def test_a_checkpoint_of_a_user_file_moves_with_its_project(project, tmp_path, monkeypatch):
    """sparsify records the model file's sha256 and the path as given: a project moved as a whole
    compiles and verifies its checkpoint from the same folder; an edited model file is refused."""
    _ok(["sparsify", "models/net.py:make", "--sparsity", "0.5", "--data", "none", "-o", "runs/u"])
    extra = torch.load(project / "runs" / "u" / "sparse.pt", weights_only=True)["extra"]
    assert extra["model_given"] == "models/net.py"
    assert extra["model_sha256"] == hashlib.sha256(NET.encode()).hexdigest()
    _ok(["compile", "runs/u/sparse.pt", "--input-shape", "1,3,16,16", "-a", "2x2", "-o", "c.tsp"])
    moved = tmp_path / "moved"
    shutil.move(project, moved)
    monkeypatch.chdir(moved)
    out = _ok(["simulate", "c.tsp"])
    assert f"model file {project / 'models' / 'net.py'} not found; using models/net.py (as given at sparsify" in out
    assert "all 11 layers bit-exact" in out
    (moved / "models" / "net.py").write_text(NET + "\n# edited\n")
    msg = _refused(["compile", "runs/u/sparse.pt", "--input-shape", "1,3,16,16", "-o", "d.tsp"])
    assert "models/net.py in its stead has other contents" in msg and "sparsify again" in msg


def test_a_weights_file_moved_is_found_as_given_or_named_again(tmp_path, monkeypatch):
    from tilesparse.models import get_model

    (tmp_path / "a").mkdir()
    torch.save(get_model("digits_cnn", seed=3).state_dict(), tmp_path / "a" / "sd.pth")
    monkeypatch.chdir(tmp_path / "a")
    _ok(["compile", "digits_cnn", "--weights", "sd.pth", "--sparsity", "0.5", "-a", "2x2", "-o", "w.tsp"])
    assert provenance_of(Program.load(tmp_path / "a" / "w.tsp")).weights_given == "sd.pth"
    shutil.move(tmp_path / "a", tmp_path / "b")
    monkeypatch.chdir(tmp_path / "b")
    out = _ok(["simulate", "w.tsp"])
    assert f"weights file {tmp_path / 'a' / 'sd.pth'} not found; using sd.pth (as given at compile" in out
    assert "all 8 layers bit-exact" in out
    shutil.move(tmp_path / "b" / "sd.pth", tmp_path / "kept.pth")
    msg = _refused(["simulate", "w.tsp"])
    assert "which no longer exists (nor at sd.pth); restore it, or put it next to w.tsp, or recompile" in msg
    out = _ok(["simulate", "w.tsp", "--weights", str(tmp_path / "kept.pth")])
    assert "given with --weights, same sha256" in out and "all 8 layers bit-exact" in out


def test_artifacts_get_the_permissions_of_any_new_file(tmp_path):
    """A program or checkpoint is meant to be shared and moved: written atomically, it used to be
    owner-only (mkstemp's 0600) whatever the umask."""
    import os

    from tilesparse.utils.atomic import atomic_write_text

    old = os.umask(0o022)
    try:
        assert (atomic_write_text(tmp_path / "a.txt", "x").stat().st_mode & 0o777) == 0o644
        os.umask(0o077)
        assert (atomic_write_text(tmp_path / "b.txt", "x").stat().st_mode & 0o777) == 0o600
        (tmp_path / "c.txt").write_text("old")
        (tmp_path / "c.txt").chmod(0o640)  # replacing a file keeps its permissions
        assert (atomic_write_text(tmp_path / "c.txt", "new").stat().st_mode & 0o777) == 0o640
    finally:
        os.umask(old)


def test_sparsify_takes_its_own_checkpoint_of_a_user_file(project):
    """Sparsifying a checkpoint again (a file.py:factory model): the new checkpoint names the model
    file too (it named nothing, so it could not be compiled alone), and keeps the first masks' zeros."""
    _ok(["sparsify", "models/net.py:make", "--sparsity", "0.5", "--block", "4x4", "--data", "none", "-o", "r1"])
    _ok(["sparsify", "r1/sparse.pt", "--sparsity", "0.75", "--block", "4x4", "--data", "none", "-o", "r2"])
    first = torch.load(project / "r1" / "sparse.pt", weights_only=True)
    second = torch.load(project / "r2" / "sparse.pt", weights_only=True)
    assert second["model_name"] == first["model_name"] == f"{project / 'models' / 'net.py'}:make"
    assert second["extra"]["model_sha256"] == first["extra"]["model_sha256"]
    kept = [0, 0]
    for name, m1 in first["sparsifier"]["masks"].items():
        m2 = second["sparsifier"]["masks"][name]
        assert not (m2 & ~m1).any(), name  # 75 % keeps a subset of the 50 % blocks (zeros have the lowest L2)
        kept = [kept[0] + int(m1.sum()), kept[1] + int(m2.sum())]
    assert kept[1] < kept[0]
    _ok(["compile", "r2/sparse.pt", "--input-shape", "1,3,16,16", "-a", "2x2", "-o", "c.tsp"])
    assert "all 11 layers bit-exact" in _ok(["simulate", "c.tsp"])


def test_a_program_from_another_tilesparse_version_says_so(tmp_path):
    from dataclasses import replace
    from importlib.metadata import version

    from tilesparse.build import compile_source

    prog = compile_source("digits_cnn", "2x2", sparsity=0.5)
    prog.provenance = replace(prog.provenance, version="0.0.1")
    prog.save(tmp_path / "old.tsp")
    out = _ok(["simulate", str(tmp_path / "old.tsp")])
    assert f"was compiled by tilesparse 0.0.1, this is {version('tilesparse')}" in out
    assert "all 8 layers bit-exact" in out
