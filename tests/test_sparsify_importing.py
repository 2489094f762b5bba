"""Masks from other tools: torch.ao.pruning's own WeightNormSparsifier (PyTorch as the oracle), NVIDIA
ASP's mask buffers built by hand to its documented layout, and plain zeroed state dicts, imported as
tilesparse checkpoints; masks that break the pattern are refused, naming the layer; the CLI verb end
to end, then compiled."""

from __future__ import annotations

import copy
import sys

import pytest
import torch
from torch import nn
from torch.ao.pruning import WeightNormSparsifier
from typer.testing import CliRunner

from tilesparse.cli.main import app, main
from tilesparse.errors import ConfigError
from tilesparse.patterns import NM, Block, Unstructured, parse_pattern
from tilesparse.sparsify import build_report, load_checkpoint, save_checkpoint
from tilesparse.sparsify.importing import detect_format, import_masks

runner = CliRunner()

NET = '''
from torch import nn


def make():
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(16 * 2 * 2, 12), nn.ReLU(), nn.Linear(12, 6))
'''
CONVS, LINEARS = ("0", "2"), ("5", "7")


def make() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(16 * 2 * 2, 12), nn.ReLU(), nn.Linear(12, 6))


def _seeded(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return make()


def _torch_ao(seed: int = 0):
    """A model pruned 2:4 by torch.ao's WeightNormSparsifier on its Linear layers (torch.ao prunes
    2-D weights only), prepared and stepped: (model, its state dict, the sparsifier's state dict)."""
    model = _seeded(seed)
    sp = WeightNormSparsifier(sparsity_level=1.0, sparse_block_shape=(1, 4), zeros_per_block=2)
    sp.prepare(model, [{"tensor_fqn": f"{n}.weight"} for n in LINEARS])
    sp.step()
    return model, sp, copy.deepcopy(model.state_dict()), copy.deepcopy(sp.state_dict())


def _x(seed: int = 1) -> torch.Tensor:
    return torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(seed))


def test_torch_ao_masks_and_outputs_survive_the_checkpoint(tmp_path):
    ao_model, _, state, sp_state = _torch_ao()
    assert not any(k.endswith(".mask") for k in state)  # torch.ao's FakeSparsity keeps masks out of the model's
    imported = import_masks(make(), state, masks_state=sp_state)
    assert imported.format == "torch-ao" and imported.pattern == NM(2, 4)  # from the groups' settings
    assert set(imported.dense) == set(CONVS)
    save_checkpoint(tmp_path / "ao.pt", imported.model, imported.sparsifier, model_name=None)
    ck = load_checkpoint(tmp_path / "ao.pt", make())
    for name in LINEARS:
        assert torch.equal(ck.sparsifier.masks[name], sp_state["state"][f"{name}.weight"]["mask"]), name
    with torch.no_grad():
        torch.testing.assert_close(ck.model(_x()), ao_model(_x()), rtol=0, atol=0)
    report = build_report(ck.model, imported.sparsifier)
    assert {r.name: r.note for r in report.layers if r.block == "-"} == {n: "no mask in file" for n in CONVS}


def test_torch_ao_whole_blocks_import_as_their_block_grid():
    """zeros_per_block left out zeroes whole 1x4 blocks: the groups' settings name Block(1, 4, 0.5), and
    the stored block grid expands back to torch.ao's element masks."""
    model = _seeded(2)
    sp = WeightNormSparsifier(sparsity_level=0.5, sparse_block_shape=(1, 4))
    sp.prepare(model, [{"tensor_fqn": f"{n}.weight"} for n in LINEARS])
    sp.step()
    imported = import_masks(make(), copy.deepcopy(model.state_dict()), masks_state=sp.state_dict())
    assert imported.pattern == Block(1, 4, 0.5)
    for name in LINEARS:
        layer = imported.sparsifier.layers[name]
        assert layer.mask.shape == (layer.shape[0], layer.shape[1] // 4), name
        assert torch.equal(layer.param.element_mask.bool(), sp.state_dict()["state"][f"{name}.weight"]["mask"]), name
    with torch.no_grad():
        torch.testing.assert_close(imported.model(_x()), model(_x()), rtol=0, atol=0)


def test_torch_ao_squashed_model_imports_by_its_zeros():
    ao_model, sp, _, sp_state = _torch_ao(seed=3)
    sp.squash_mask()
    state = ao_model.state_dict()
    assert detect_format(state) == "zeros"
    imported = import_masks(make(), state)
    assert imported.pattern == NM(2, 4) and set(imported.sparsifier.layers) == set(LINEARS)
    for name in LINEARS:
        assert torch.equal(imported.sparsifier.masks[name], sp_state["state"][f"{name}.weight"]["mask"]), name
    assert imported.dense == {n: "no zero weight" for n in CONVS}


def test_torch_ao_model_state_alone_is_refused_saying_where_the_masks_are():
    _, _, state, _ = _torch_ao()
    with pytest.raises(ConfigError, match="FakeSparsity saves none"):
        import_masks(make(), state)


def _asp_mask(w: torch.Tensor) -> torch.Tensor:
    """ASP's m4n2_1d, as its docs lay it out: the weight viewed as (kernel positions x out, in) and the
    2 largest |w| kept of every 4 consecutive input channels."""
    if w.dim() == 4:
        o, i, kh, kw = w.shape
        flat = w.permute(2, 3, 0, 1).reshape(kh * kw * o, i)
    else:
        flat = w
    runs = flat.abs().reshape(flat.shape[0], -1, 4)
    keep = torch.zeros_like(runs, dtype=torch.bool).scatter_(-1, runs.topk(2, dim=-1).indices, True)
    keep = keep.reshape(flat.shape)
    return keep.reshape(kh, kw, o, i).permute(2, 3, 0, 1) if w.dim() == 4 else keep


def _asp_state(model: nn.Module, layers=("2", "5", "7")) -> dict[str, torch.Tensor]:
    """A state dict as ASP leaves it: weights zeroed under the masks, and each pruned module's
    '__weight_mma_mask' buffer (and '__weight_mma_pruned_p' of allow_recompute_mask)."""
    state = dict(model.state_dict())
    for name in layers:
        w = state[f"{name}.weight"]
        mask = _asp_mask(w)
        state[f"{name}.weight"] = w * mask
        state[f"{name}.__weight_mma_mask"] = mask
        state[f"{name}.__weight_mma_pruned_p"] = torch.zeros_like(w)
    return state


def test_asp_buffers_give_the_masks_and_the_weights():
    state = _asp_state(_seeded(5))
    assert detect_format(state) == "asp"
    imported = import_masks(make(), state)
    assert imported.format == "asp" and imported.pattern == NM(2, 4)
    assert set(imported.sparsifier.layers) == {"2", "5", "7"} and set(imported.dense) == {"0"}
    for name in ("2", "5", "7"):
        assert torch.equal(imported.sparsifier.masks[name], state[f"{name}.__weight_mma_mask"]), name
        assert torch.equal(imported.model.get_submodule(name).weight, state[f"{name}.weight"]), name
    assert imported.sparsifier.sparsity() == {"2": 0.5, "5": 0.5, "7": 0.5}


def test_a_mask_breaking_2_of_4_is_refused_naming_the_layer():
    state = _asp_state(_seeded(6))
    mask = state["5.__weight_mma_mask"]
    mask[3, :4] = torch.tensor([True, True, True, False])  # 3 kept in one run of 4
    with pytest.raises(ConfigError) as e:
        import_masks(make(), state, pattern=parse_pattern("2:4"))
    assert e.value.errors == ["5: 1 of 192 runs of 4 along the in channels keep more than 2 (worst: 3)"]
    assert "pattern 2:4" in e.value.source
    inferred = import_masks(make(), state)  # no pattern given: the first that every mask obeys, at its sparsity
    masks = [state[f"{n}.__weight_mma_mask"] for n in ("2", "5", "7")]
    zeros = sum(int((~m).sum()) for m in masks) / sum(m.numel() for m in masks)
    assert isinstance(inferred.pattern, Unstructured) and inferred.pattern.sparsity == pytest.approx(zeros)
    assert torch.equal(inferred.sparsifier.masks["5"].reshape(mask.shape), mask)


def _blocky(model: nn.Module, name: str, grid: torch.Tensor) -> None:
    """Zero the 8x8 blocks (kernel included) of ``name``'s weight where ``grid`` is False."""
    w = model.get_submodule(name).weight
    rows = grid.repeat_interleave(8, 0)[: w.shape[0]]
    keep = rows.repeat_interleave(8, 1)[:, : w.shape[1]]
    with torch.no_grad():
        w.mul_(keep.reshape(keep.shape + (1,) * (w.dim() - 2)))


def test_zeroed_blocks_are_inferred_as_8x8_at_their_sparsity_and_partial_blocks_refused():
    model = _seeded(7)
    grids = {"2": torch.tensor([[True], [False]]), "5": torch.tensor([[True, False, False, True, False, True, True,
                                                                       False], [False, True, True, True, False,
                                                                                False, False, True]])}
    for name, grid in grids.items():
        _blocky(model, name, grid)
    imported = import_masks(make(), model.state_dict())
    assert imported.format == "zeros" and imported.pattern.spec() == "8x8@0.5"
    assert imported.sparsifier.recipe.layer_sparsity == {"2": 0.5, "5": 0.5}
    for name, grid in grids.items():
        assert torch.equal(imported.sparsifier.masks[name], grid), name
    with pytest.raises(ConfigError, match="5: 1 of 16 blocks are partly zero"):
        state = model.state_dict()
        state["5.weight"][0, 0] = 0.0  # inside a kept block
        import_masks(make(), state, pattern=Block(8, 8))


@pytest.mark.parametrize("edit,needle", [
    (lambda s: s.update({"6.__weight_mma_mask": torch.ones(1)}), "6: a ReLU; tilesparse sparsifies Conv2d and Linear"),
    (lambda s: s.update({"9.__weight_mma_mask": torch.ones(1)}), "9: no such layer in the model"),
    (lambda s: s.update({"5.__bias_mma_mask": torch.ones(12)}), "masks parameter 'bias'"),
    (lambda s: s.update({"5.__weight_mma_mask": torch.ones(3, 3)}), "5: mask of shape (3, 3) does not fit"),
])
def test_masks_that_name_no_weight_are_refused(edit, needle):
    state = _asp_state(_seeded(8))
    edit(state)
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        import_masks(make(), state)


def test_wrapped_and_ddp_state_dicts_are_read():
    state = _asp_state(_seeded(9))
    wrapped = {"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}
    imported = import_masks(make(), wrapped, fmt="asp")
    assert torch.equal(imported.sparsifier.masks["5"], state["5.__weight_mma_mask"])


def _main(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["tilesparse", *args])
    with pytest.raises(SystemExit) as e:
        main()
    return e.value.code, capsys.readouterr()


def test_cli_imports_then_compiles(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.py").write_text(NET)
    ao_model, _, state, sp_state = _torch_ao(seed=11)
    torch.save(state, tmp_path / "model.pt")
    torch.save(sp_state, tmp_path / "as_is.pt")  # its "state" is a defaultdict: no safe load reads it
    code, cap = _main(monkeypatch, capsys, "import-masks", "net.py:make", "model.pt", "--masks", "as_is.pt", "-o",
                      "out.pt")
    assert code == 2 and "torch.save({'state': dict(sd['state'])" in cap.err
    torch.save({"state": dict(sp_state["state"]), "groups": sp_state["groups"]}, tmp_path / "sparsifier.pt")
    r = runner.invoke(app, ["import-masks", "net.py:make", "model.pt", "--masks", "sparsifier.pt", "-o", "out.pt",
                            "--json", "report.json"])
    assert r.exit_code == 0, r.output
    assert "(no mask in model.pt)" in r.output and "imported 2 masks (torch-ao, pattern 2:4)" in r.output
    ck = load_checkpoint(tmp_path / "out.pt", make())
    with torch.no_grad():
        torch.testing.assert_close(ck.model(_x()), ao_model(_x()), rtol=0, atol=0)
    r = runner.invoke(app, ["compile", "out.pt", "--input-shape", "1,3,6,6", "-a", "2x2", "-o", "out.tsp"])
    assert r.exit_code == 0, (r.output, r.exception)
    # a mask breaking the pattern: exit 2, one line naming the layer, nothing written
    bad = _asp_state(_seeded(12))
    bad["7.__weight_mma_mask"][0] = True
    torch.save(bad, tmp_path / "bad.pt")
    code, cap = _main(monkeypatch, capsys, "import-masks", "net.py:make", "bad.pt", "--pattern", "2:4", "-o", "b.pt")
    assert code == 2 and "Traceback" not in cap.err
    assert "error: bad.pt (pattern 2:4): 7: 3 of 18 runs of 4 along the in channels keep more than 2" in cap.err
    assert not (tmp_path / "b.pt").exists()
    code, cap = _main(monkeypatch, capsys, "import-masks", "net.py:make", "model.pt", "--format", "onnx", "-o", "c.pt")
    assert code == 2 and "--format" in cap.err


def test_cli_help_has_examples():
    r = runner.invoke(app, ["import-masks", "--help"], env={"COLUMNS": "120"})
    assert r.exit_code == 0 and "Example" in r.output and "__weight_mma_mask" in r.output
