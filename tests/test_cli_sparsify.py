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
    assert {p.name for p in out.iterdir()} == {"sparse.pt", "last.pt", "report.txt", "report.json", "recipe.yaml"}
    rep = json.loads((out / "report.json").read_text())
    assert rep["block_sparsity"] == 0.5 and rep["layers"][1]["block"] == "4x16"
    assert "accuracy after" in r.output and "dense training: 1 epochs" in r.output
    r = runner.invoke(app, args[:3] + ["2"] + args[4:] + ["--resume"])
    assert r.exit_code == 0, r.output
    assert "dense training" not in r.output  # resume continues the sparse run


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
