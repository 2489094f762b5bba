"""Checkpoint round trip, wrong-model errors, atomic writes."""

from pathlib import Path

import pytest
import torch
from _sparsify_helpers import ToyNet
from torch import nn

from tilesparse.errors import CheckpointError
from tilesparse.sparsify import BlockSparsifier, Recipe, load_checkpoint, save_checkpoint
from tilesparse.sparsify.checkpoint import read_checkpoint


def _sparse(seed=0, **kw):
    torch.manual_seed(seed)
    model = ToyNet()
    sp = BlockSparsifier(Recipe(**kw)).prepare(model)
    sp.step()
    return model, sp


def test_round_trip(tmp_path):
    model, sp = _sparse(sparsity=0.75, block=(4, 16))
    path = save_checkpoint(tmp_path / "ck.pt", model, sp, extra={"note": 1})
    torch.manual_seed(5)
    ck = load_checkpoint(path, ToyNet())
    x = torch.randn(2, 3, 6, 6)
    assert torch.equal(ck.model(x), model(x))
    assert ck.recipe == sp.recipe and ck.extra == {"note": 1}
    assert all(torch.equal(ck.sparsifier.masks[n], sp.masks[n]) for n in sp.masks)


def test_plain_model_loads_hard_masked_state(tmp_path):
    model, sp = _sparse()
    save_checkpoint(tmp_path / "ck.pt", model, sp)
    plain = ToyNet()
    plain.load_state_dict(read_checkpoint(tmp_path / "ck.pt")["model_state"])
    x = torch.randn(2, 3, 6, 6)
    assert torch.allclose(plain(x), model(x))


def test_by_model_name(tmp_path):
    from tilesparse.models.zoo import get_model

    model = get_model("digits_cnn")
    sp = BlockSparsifier(Recipe()).prepare(model)
    sp.step()
    save_checkpoint(tmp_path / "d.pt", model, sp, model_name="digits_cnn")
    ck = load_checkpoint(tmp_path / "d.pt")
    assert ck.model_name == "digits_cnn" and set(ck.sparsifier.masks) == set(sp.masks)


def test_other_model_is_named(tmp_path):
    model, sp = _sparse()
    save_checkpoint(tmp_path / "ck.pt", model, sp)
    other = nn.Sequential(nn.Conv2d(3, 16, 3), nn.Conv2d(16, 32, 3))
    with pytest.raises(CheckpointError, match=r"ck\.pt.*(missing|unexpected) tensors"):
        load_checkpoint(tmp_path / "ck.pt", other)
    wider = ToyNet(classes=12)
    with pytest.raises(CheckpointError, match=r"shape mismatch: fc\.weight"):
        load_checkpoint(tmp_path / "ck.pt", wider)


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not torch")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt", ToyNet())
    torch.save({"a": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a tilesparse checkpoint"):
        load_checkpoint(tmp_path / "other.pt", ToyNet())
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt", ToyNet())


def test_interrupted_save_leaves_old_file(tmp_path, monkeypatch):
    model, sp = _sparse()
    path = save_checkpoint(tmp_path / "ck.pt", model, sp)
    before = path.read_bytes()

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model, sp)
    assert path.read_bytes() == before
    assert sorted(p.name for p in Path(tmp_path).iterdir()) == ["ck.pt"]
