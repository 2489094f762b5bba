"""Checkpoint round trip, wrong-model errors, atomic writes."""

from pathlib import Path

import pytest
import torch
from _sparsify_helpers import ToyNet
from torch import nn

from tilesparse.errors import CheckpointError
from tilesparse.sparsify import BlockSparsifier, Recipe, load_checkpoint, plain_state_dict, save_checkpoint
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


# ---- checksums: a damaged file is refused, naming what changed -----------------------------------

_TAIL = ": the file changed after it was written (damaged on disk or in a copy); use an intact copy, or sparsify " \
        "again (--resume needs an intact last.pt)"


def _member_data(path, name_end):
    """(offset, size) of a zip member's bytes in the file: after its local header (30 bytes + name + extra)."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith(name_end))
    raw = path.read_bytes()
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def _largest_storage(path):
    import zipfile

    with zipfile.ZipFile(path) as z:
        return max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size).filename


def test_flipped_byte_in_a_tensor_is_refused_naming_it(tmp_path):
    model, sp = _sparse(sparsity=0.75, block=(4, 16))
    path = save_checkpoint(tmp_path / "ck.pt", model, sp)
    # the largest storage is conv.weight (24x16x3x3 float32 = 13,824 bytes; the next is 1,728)
    start, size = _member_data(path, _largest_storage(path))
    assert size == 24 * 16 * 9 * 4
    raw = bytearray(path.read_bytes())
    raw[start + size // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    # torch itself loads it without a word, with a changed weight
    loaded = torch.load(path, weights_only=True)["model_state"]["conv.weight"]
    assert not torch.equal(loaded, plain_state_dict(model)["conv.weight"])
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path, ToyNet())
    assert str(e.value) == f"{path}: checksum mismatch in tensor model_state/conv.weight{_TAIL}"


def test_edited_recipe_value_is_refused(tmp_path):
    import struct

    model, sp = _sparse(sparsity=0.75)
    path = save_checkpoint(tmp_path / "ck.pt", model, sp)
    start, size = _member_data(path, "data.pkl")
    raw = bytearray(path.read_bytes())
    at = bytes(raw[start:start + size]).find(struct.pack(">d", 0.75))  # the pickled float of sparsity
    raw[start + at:start + at + 8] = struct.pack(">d", 0.5)
    path.write_bytes(bytes(raw))
    assert torch.load(path, weights_only=True)["sparsifier"]["recipe"]["sparsity"] == 0.5  # loads, edited
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(path)
    assert str(e.value) == f"{path}: checksum mismatch in the non-tensor fields (recipe, settings, history){_TAIL}"


def test_truncated_or_foreign_files_are_one_line(tmp_path):
    model, sp = _sparse()
    path = save_checkpoint(tmp_path / "ck.pt", model, sp)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    whole = tmp_path / "module.pt"
    torch.save(nn.Linear(2, 2), whole)  # a pickled module: never unpickled
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    expected = {
        cut: "not a readable checkpoint: truncated torch.save file (the zip archive has no end; was the write cut "
             "short?)",
        whole: "not a readable checkpoint: holds Python objects other than tensors and plain containers (a pickled "
               "nn.Module?), or is corrupt; tilesparse never unpickles code",
        empty: "not a readable checkpoint: empty file, not a torch.save file",
    }
    for p, msg in expected.items():
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(p, ToyNet())
        assert str(e.value) == f"{p}: {msg}"


def test_version_1_is_refused_and_upgraded(tmp_path):
    from tilesparse.sparsify import upgrade_checkpoint

    model, sp = _sparse(sparsity=0.75)
    path = save_checkpoint(tmp_path / "ck.pt", model, sp)
    old = torch.load(path, weights_only=True)
    del old["checksum"]
    old["version"] = 1
    torch.save(old, path)  # as tilesparse wrote it before checksums
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(path)
    assert str(e.value) == (f"{path}: checkpoint version 1 has no checksum, this tilesparse reads version 2; if you "
                            f"trust the file, re-save it with tilesparse.sparsify.upgrade_checkpoint('{path}'), "
                            "else sparsify again")
    upgrade_checkpoint(path)
    ck = load_checkpoint(path, ToyNet())
    assert all(torch.equal(ck.sparsifier.masks[n], sp.masks[n]) for n in sp.masks)
    with pytest.raises(CheckpointError, match="only version 1 files need upgrading"):
        upgrade_checkpoint(path)


def test_checksum_covers_every_tensor_and_field():
    from tilesparse.sparsify.checksum import checksum, mismatches

    payload = {"a": {"w": torch.zeros(3), "m": torch.ones(2, 2, dtype=torch.bool)}, "b": [1, 2.5, "x"],
               "c": torch.tensor(7, dtype=torch.bfloat16)}
    payload["checksum"] = checksum(payload)
    assert mismatches(payload) == []
    assert payload["checksum"]["tensors"].keys() == {"a/w", "a/m", "c"}
    import zlib

    assert payload["checksum"]["tensors"]["a/w"] == zlib.crc32(bytes(12))  # 3 float32 zeros
    payload["a"]["w"][1] = 2.3e-38
    payload["b"][1] = 2.0
    assert mismatches(payload) == ["a/w", "fields"]
    del payload["checksum"]
    assert mismatches(payload) == ["checksum"]
