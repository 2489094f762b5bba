"""The ``sparsify`` and ``demo`` verbs: help, a short real run, resume, and clear errors (exit code 2)."""

import json
import sys

import pytest
from typer.testing import CliRunner

from tilesparse.cli.main import app, main

runner = CliRunner()


def _main(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["tilesparse", *args])
    with pytest.raises(SystemExit) as e:
        main()
    return e.value.code, capsys.readouterr()


@pytest.mark.parametrize("verb", ["sparsify", "demo"])
def test_help(verb):
    r = runner.invoke(app, [verb, "--help"])
    assert r.exit_code == 0 and "Usage" in r.output


def test_sparsify_digits_and_resume(tmp_path):
    out = tmp_path / "run"
    args = ["sparsify", "digits_cnn", "--epochs", "1", "--sparsity", "0.5", "--block", "4x16", "--out", str(out),
            "--dense-epochs", "1"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert {p.name for p in out.iterdir()} == {"sparse.pt", "last.pt", "report.txt", "report.json", "recipe.yaml",
                                               "metrics.csv", "metrics.jsonl"}
    rep = json.loads((out / "report.json").read_text())
    assert rep["block_sparsity"] == 0.5 and rep["layers"][1]["block"] == "4x16"
    assert "accuracy after" in r.output and "dense training: 1 epochs" in r.output
    r = runner.invoke(app, args[:3] + ["2"] + args[4:] + ["--resume", "--override"])  # train one epoch more
    assert r.exit_code == 0, r.output
    assert "dense training" not in r.output  # resume continues the sparse run
    assert "resumed with --override from epoch 2: epochs 1 -> 2" in r.output


def test_sparsify_masks_only_from_recipe(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("method: oneshot\nsparsity: 0.75\nblock: 16x4\nselection: layer\n")
    r = runner.invoke(app, ["sparsify", "resnet18", "--recipe", str(recipe), "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "o" / "report.json").read_text())["layers"][1]["sparsity"] == 0.75
    # a checkpoint is accepted as the model, and re-sparsified
    r = runner.invoke(app, ["sparsify", str(tmp_path / "o" / "sparse.pt"), "--sparsity", "0.5", "--out",
                            str(tmp_path / "o2")])
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("args,needle", [
    (["--block", "0x8"], "b_o=0"),
    (["--sparsity", "1.0"], "sparsity"),
    (["--method", "magic"], "method"),
    (["--data", "nowhere.pt"], "nowhere.pt"),
    (["--device", "warp"], "--device"),
])
def test_bad_flags(monkeypatch, capsys, tmp_path, args, needle):
    out = str(tmp_path / "x")
    code, cap = _main(monkeypatch, capsys, "sparsify", "digits_cnn", "--epochs", "0", "--out", out, *args)
    assert code == 2 and needle in cap.err and "Traceback" not in cap.err
    assert not (tmp_path / "x").exists()  # nothing half-written


def test_bad_recipe_field_and_unknown_model(monkeypatch, capsys, tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("sparsity: 0.5\nlayer_sparsity: {conv99: 0.5}\n")
    out = str(tmp_path / "x")
    code, cap = _main(monkeypatch, capsys, "sparsify", "digits_cnn", "--recipe", str(recipe), "--out", out)
    assert code == 2 and "conv99" in cap.err
    recipe.write_text("sparsity: 0.5\nbloc: 8x8\n")
    code, cap = _main(monkeypatch, capsys, "sparsify", "digits_cnn", "--recipe", str(recipe))
    assert code == 2 and "bad.yaml" in cap.err and "bloc" in cap.err
    code, cap = _main(monkeypatch, capsys, "sparsify", "resnet5000")
    assert code == 2 and "resnet5000" in cap.err


def test_checkpoint_from_other_model(monkeypatch, capsys, tmp_path):
    import torch

    from tilesparse.models.zoo import get_model
    from tilesparse.sparsify import save_checkpoint

    save_checkpoint(tmp_path / "c.pt", get_model("resnet18"), model_name="digits_cnn")  # lying name
    code, cap = _main(monkeypatch, capsys, "sparsify", str(tmp_path / "c.pt"), "--out", str(tmp_path / "x"))
    assert code == 2 and "c.pt" in cap.err and "does not match" in cap.err
    torch.save({"x": 1}, tmp_path / "plain.pt")
    code, cap = _main(monkeypatch, capsys, "sparsify", str(tmp_path / "plain.pt"))
    assert code == 2 and "not a tilesparse checkpoint" in cap.err


def test_resume_without_checkpoint(monkeypatch, capsys, tmp_path):
    code, cap = _main(monkeypatch, capsys, "sparsify", "digits_cnn", "--epochs", "1", "--resume", "--out",
                      str(tmp_path / "none"))
    assert code == 2 and "cannot resume" in cap.err


# ---- --resume compares the command with the checkpoint; --override; --data files -------------------

NET = """
import torch
from torch import nn


def make():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
"""


def _tiny_data(path, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    torch.save({"x_train": torch.randn(32, 3, 6, 6, generator=g), "y_train": torch.randint(0, 10, (32,), generator=g),
                "x_test": torch.randn(8, 3, 6, 6, generator=g), "y_test": torch.randint(0, 10, (8,), generator=g)},
               path)
    return path


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """A project folder with net.py, data.pt and a 1-epoch run (oneshot, 50 %, 2x2 blocks) in run/."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.py").write_text(NET)
    _tiny_data(tmp_path / "data.pt")
    r = runner.invoke(app, [*TINY, "--epochs", "1"])
    assert r.exit_code == 0, r.output
    return tmp_path


TINY = ["sparsify", "net.py:make", "--data", "data.pt", "--sparsity", "0.5", "--block", "2x2", "--lr", "0.05",
        "-o", "run"]
RESUME_HINT = "give the same values, or --override to continue with the new ones"


@pytest.mark.parametrize("flags,was,asks", [
    (["--sparsity", "0.75"], "sparsity 0.5", "sparsity 0.75"),
    (["--seed", "1"], "seed 0", "seed 1"),
    (["--epochs", "3"], "epochs 1", "epochs 3"),
    (["--lr", "0.01"], "lr 0.05", "lr 0.01"),
    (["--selection", "layer", "--score", "l1"], "score l2, selection balanced_rows", "score l1, selection layer"),
])
def test_resume_refuses_a_changed_flag_naming_it(tiny, monkeypatch, capsys, flags, was, asks):
    code, cap = _main(monkeypatch, capsys, "sparsify", "net.py:make", "--data", "data.pt", "-o", "run", "--resume",
                      *flags)
    assert code == 2
    assert cap.err == f"error: --resume: run/last.pt was trained with {was}; this command asks {asks}; {RESUME_HINT}\n"


def test_resume_refuses_other_data_and_a_fixed_field(tiny, monkeypatch, capsys):
    import hashlib

    old = hashlib.sha256((tiny / "data.pt").read_bytes()).hexdigest()[:12]
    _tiny_data(tiny / "data.pt", seed=1)
    new = hashlib.sha256((tiny / "data.pt").read_bytes()).hexdigest()[:12]
    code, cap = _main(monkeypatch, capsys, "sparsify", "net.py:make", "--data", "data.pt", "-o", "run", "--resume")
    assert code == 2
    assert cap.err == (f"error: --resume: run/last.pt was trained with data data.pt (sha256 {old}); this command asks "
                       f"data data.pt (sha256 {new}); {RESUME_HINT}\n")
    code, cap = _main(monkeypatch, capsys, "sparsify", "net.py:make", "--data", "data.pt", "-o", "run", "--resume",
                      "--override", "--block", "4x4")
    assert code == 2
    assert cap.err.startswith(f"error: --resume: run/last.pt was trained with pattern 2x2, data data.pt (sha256 "
                              f"{old}); this command asks pattern 4x4, data data.pt (sha256 {new}); pattern cannot "
                              "change on resume")


def test_resume_with_the_same_flags_continues_exactly(tiny, monkeypatch, capsys):
    """Interrupted-and-resumed equals uninterrupted: a 2-epoch run against 1 epoch + --resume --epochs 2
    --override (recorded), then a resume with the now-same flags (nothing left to train, same weights)."""
    import torch
    import yaml

    from tilesparse.sparsify.recipe import Recipe

    r = runner.invoke(app, [*TINY[:-1], "full", "--epochs", "2"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, [*TINY, "--epochs", "2", "--resume", "--override"])
    assert r.exit_code == 0, r.output
    full, run = (torch.load(tiny / d / "sparse.pt", weights_only=True) for d in ("full", "run"))
    for key, value in full["model_state"].items():
        assert torch.equal(value, run["model_state"][key]), key
    record = [{"epoch": 1, "changed": {"training.epochs": [1, 2]}}]
    assert run["extra"]["overrides"] == record
    assert torch.load(tiny / "run" / "last.pt", weights_only=True)["extra"]["overrides"] == record
    text = (tiny / "run" / "recipe.yaml").read_text()
    assert text.splitlines()[0] == "# resumed with --override from epoch 2: epochs 1 -> 2"
    assert Recipe.from_dict(yaml.safe_load(text)).training.epochs == 2  # still a loadable recipe
    code, _ = _main(monkeypatch, capsys, "sparsify", "net.py:make", "--data", "data.pt", "-o", "run", "--resume")
    assert code == 0
    again = torch.load(tiny / "run" / "sparse.pt", weights_only=True)
    assert all(torch.equal(v, again["model_state"][k]) for k, v in run["model_state"].items())


def test_override_of_the_sparsity_moves_the_masks(tiny):
    """Case 6: the masks follow the recipe (the 16x8 conv's 8x4 blocks: 3 of 4 zero per row at 75 %)."""
    r = runner.invoke(app, [*TINY, "--sparsity", "0.75", "--resume", "--override"])
    assert r.exit_code == 0, r.output
    rep = json.loads((tiny / "run" / "report.json").read_text())
    assert [(la["name"], la["sparsity"]) for la in rep["layers"] if la["block"] != "-"] == [("2", 0.75)]
    assert "sparsity: 0.75" in (tiny / "run" / "recipe.yaml").read_text()


def test_override_needs_resume_and_a_damaged_last_pt_is_refused(tiny, monkeypatch, capsys):
    code, cap = _main(monkeypatch, capsys, *TINY, "--override")
    assert (code, cap.err) == (2, "error: --override: only with --resume: it continues a run with changed settings\n")
    last = tiny / "run" / "last.pt"
    raw = bytearray(last.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    last.write_bytes(bytes(raw))
    code, cap = _main(monkeypatch, capsys, *TINY, "--resume")
    assert code == 2 and cap.err.count("\n") == 1
    assert cap.err.startswith("error: run/last.pt: checksum mismatch in tensor")
    assert cap.err.endswith("use an intact copy, or sparsify again (--resume needs an intact last.pt)\n")


def test_bad_data_files_are_one_line(tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.chdir(tmp_path)
    good = _tiny_data(tmp_path / "good.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(good[: len(good) // 2])
    (tmp_path / "text.pt").write_text("x_train,y_train\n1,2\n")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")
    torch.save({"x_train": torch.zeros(4, 3), "y_train": [1, 2], "x_test": torch.zeros(2, 3)}, tmp_path / "keys.pt")
    torch.save({"x_train": torch.zeros(4, 3), "y_train": torch.zeros(3), "x_test": torch.zeros(2, 3),
                "y_test": torch.zeros(2)}, tmp_path / "sizes.pt")
    expected = "expected a torch.save file of a dict with tensors x_train, y_train, x_test, y_test"
    cases = {
        "cut.pt": f"--data: cut.pt: truncated torch.save file (the zip archive has no end; was the write cut short?); "
                  f"{expected}",
        "text.pt": f"--data: text.pt: not a torch.save file; {expected}",
        "module.pt": "--data: module.pt: holds Python objects other than tensors and plain containers (a pickled "
                     f"nn.Module?), or is corrupt; tilesparse never unpickles code; {expected}",
        "keys.pt": f"--data: keys.pt: 'y_train' is a list, not a tensor; missing tensor 'y_test'; {expected}",
        "sizes.pt": "--data: sizes.pt: 'x_train' has 4 samples and 'y_train' 3; expected the same number in each "
                    "pair, at least 1",
    }
    for name, msg in cases.items():
        code, cap = _main(monkeypatch, capsys, "sparsify", "digits_cnn", "--data", name, "--out", "x")
        assert (code, cap.err) == (2, f"error: {msg}\n"), name
        assert "weights_only" not in cap.err and not (tmp_path / "x").exists()


def test_truncated_weights_file_is_one_line(tmp_path, monkeypatch, capsys):
    import torch

    from tilesparse.models.zoo import get_model

    torch.save(get_model("digits_cnn").state_dict(), tmp_path / "w.pt")
    raw = (tmp_path / "w.pt").read_bytes()
    (tmp_path / "w.pt").write_bytes(raw[: len(raw) // 2])
    code, cap = _main(monkeypatch, capsys, "sparsify", "digits_cnn", "--weights", str(tmp_path / "w.pt"), "--out",
                      str(tmp_path / "x"))
    assert (code, cap.err) == (2, f"error: {tmp_path / 'w.pt'}: not a readable PyTorch state dict (truncated "
                                  "torch.save file (the zip archive has no end; was the write cut short?)); expected "
                                  "torch.save(model.state_dict(), path)\n")


def test_sparsify_shapes_cnn_uses_the_built_in_shapes(tmp_path):
    out = tmp_path / "shapes"
    r = runner.invoke(app, ["sparsify", "shapes_cnn", "--pattern", "2:4", "--epochs", "0", "--out", str(out)])
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "report.json").read_text())
    assert [la["sparsity"] for la in rep["layers"]] == [0.0, 0.5, 0.5, 0.5, 0.0]  # first conv, classifier dense
    assert "accuracy after" in r.output  # auto picked data: shapes_cnn trains and evaluates on shapes
    assert "shapes" in runner.invoke(app, ["sparsify", "--help"]).output
