"""The Sparsifier with every pattern: masks against independent references, training keeps the
zeros, schedules by hand, recipes, checkpoints, reports and the command line."""

import math

import pytest
import torch
from _sparsify_helpers import ToyNet, toy_loaders
from hypothesis import given, settings
from hypothesis import strategies as st

from tilesparse.errors import ConfigError
from tilesparse.patterns import NM, parse_pattern
from tilesparse.sparsify import Incremental, OneShot, Recipe, Sparsifier, Trainer, build_report
from tilesparse.sparsify.checkpoint import load_checkpoint, save_checkpoint

ALL = ("conv", "linear")


def _net(seed=0):
    torch.manual_seed(seed)
    return ToyNet()


def _nm_reference(w, n, m):
    """Top-n |w| of every m consecutive input channels at each kernel position (torch.topk)."""
    v = w.detach().abs().movedim(1, -1)  # (O, *kernel, I)
    runs = v.reshape(*v.shape[:-1], v.shape[-1] // m, m)
    keep = torch.zeros_like(runs, dtype=torch.bool).scatter_(-1, runs.topk(n, dim=-1).indices, True)
    return keep.reshape(v.shape).movedim(-1, 1)


def _effective(layer):
    return layer.param.element_mask.expand(layer.shape).bool()


@pytest.mark.parametrize("spec,n,m", [("2:4", 2, 4), ("1:4", 1, 4), ("1:8", 1, 8)])
def test_nm_masks_are_the_top_n_of_every_m_input_channels(spec, n, m):
    sp = Sparsifier(Recipe(pattern=spec, layer_types=ALL)).prepare(_net())
    dense = {name: la.module.weight.detach().clone() for name, la in sp.layers.items()}
    sp.step()
    for name, layer in sp.layers.items():
        if dense[name].shape[1] % m:
            continue  # the linear head's 32 inputs divide every m here; a ragged run is tested in patterns
        ref = _nm_reference(dense[name], n, m)
        assert torch.equal(_effective(layer), ref), name
        assert torch.equal(layer.module.weight, dense[name] * ref)
        assert sp.sparsity()[name] == pytest.approx(1 - n / m)


def test_hierarchy_keeps_half_the_blocks_and_two_of_four_inside():
    sp = Sparsifier(Recipe(pattern="8x8@0.5/2:4", layer_types=ALL)).prepare(_net())
    sp.step()
    w = sp.layers["conv"].module.weight.detach()  # 24 x 16 x 3 x 3: 3 block rows x 2 block cols
    nonzero_blocks = 0
    for r in range(3):
        row = [w[8 * r:8 * r + 8, 8 * c:8 * c + 8] for c in range(2)]
        kept = [b for b in row if b.ne(0).any()]
        assert len(kept) == 1  # balanced rows: half of each row's blocks
        nonzero_blocks += len(kept)
        runs = kept[0].movedim(1, -1).reshape(8, 3, 3, 2, 4)
        assert (runs.ne(0).sum(-1) == 2).all()  # 2:4 inside every kept block, exactly
    assert nonzero_blocks == 3
    assert sp.sparsity()["conv"] == pytest.approx(0.75)


def test_every_pattern_gives_masks_that_obey_it_and_zero_weights_under_them():
    for spec in ["8x8", "4x16", "2:4", "2:4:out", "1:8", "8x8@0.5/2:4", "16x16@0.5/8x8@0.5/2:4", "unstructured",
                 "channel", "filter"]:
        sp = Sparsifier(Recipe(pattern=spec, sparsity=None, layer_types=ALL, include_narrow=True)).prepare(_net())
        sp.step()
        for name, layer in sp.layers.items():
            mask = _effective(layer)
            assert layer.pattern.check(mask, layer.shape, layer.groups) == [], (spec, name)
            assert (layer.module.weight[~mask] == 0).all() and (layer.raw_weight[~mask] == 0).all()
        sp.squash_mask()


def test_training_keeps_the_zeros_of_element_patterns_exactly():
    train, test = toy_loaders()
    for spec, method in [("2:4", OneShot()), ("8x8@0.5/2:4", Incremental())]:
        recipe = Recipe(pattern=spec, method=method.name, layer_types=ALL, bn_recalibration_batches=0,
                        incremental={"step": 0.3, "schedule": "cubic"}, training={"epochs": 3, "lr": 0.05})
        model = _net()
        sp = Sparsifier(recipe).prepare(model)
        fit = Trainer(model, sp, method, train, test, progress=False).fit()
        assert len(fit.history) == 3
        for name, layer in sp.layers.items():
            mask = _effective(layer)
            assert layer.pattern.check(mask, layer.shape, layer.groups) == [], (spec, name)
            assert (layer.raw_weight[~mask] == 0).all()  # momentum and weight decay moved nothing under the mask
            if layer.shape[1] % 8 == 0:  # the grouped conv's 12 inputs per group end in a ragged 8x8 block
                assert sp.sparsity()[name] == pytest.approx(parse_pattern(spec).nominal_sparsity())


def test_cubic_schedule_levels_by_hand():
    recipe = Recipe(pattern="8x8", sparsity=0.5, method="incremental", incremental={"step": 0.2, "schedule": "cubic"})
    sp = Sparsifier(recipe).prepare(_net())
    inc = Incremental()
    from tilesparse.sparsify import TrainContext

    ctx = TrainContext(sp)
    inc.setup(ctx)
    # n = ceil(0.5 / 0.2) = 3 steps along 0.5 * (1 - (1 - j / 3)^3)
    got = [inc.levels(j, ctx)["conv"] for j in (1, 2, 3, 4)]
    assert got == pytest.approx([0.5 * (1 - 8 / 27), 0.5 * (1 - 1 / 27), 0.5, 0.5])
    linear = Recipe(pattern="8x8", sparsity=0.5, method="incremental", incremental={"step": 0.2})
    sp2 = Sparsifier(linear).prepare(_net())
    inc2 = Incremental()
    ctx2 = TrainContext(sp2)
    inc2.setup(ctx2)
    assert [inc2.levels(j, ctx2)["conv"] for j in (1, 2, 3)] == pytest.approx([0.2, 0.4, 0.5])


def test_incremental_steps_below_n_m_land_on_the_pattern_and_keep_earlier_zeros():
    sp = Sparsifier(Recipe(pattern="2:4", layer_types=ALL)).prepare(_net())
    sp.step(sparsity=0.25)
    first = {n: _effective(la).clone() for n, la in sp.layers.items()}
    assert sp.sparsity()["conv"] == pytest.approx(0.25)
    sp.step()
    for name, layer in sp.layers.items():
        mask = _effective(layer)
        assert not (mask & ~first[name]).any()  # zeroed at the first step, still zero
        assert layer.pattern.check(mask, layer.shape, layer.groups) == []


def test_recipe_derives_sparsity_and_selection_from_the_pattern():
    assert Recipe(pattern="1:4").sparsity == 0.75
    assert Recipe(pattern="2:4").selection == "layer"
    hss = Recipe(pattern="8x8@0.5/2:4")
    assert (hss.sparsity, hss.selection, hss.block) == (0.75, "balanced_rows", None)
    free = Recipe(pattern="8x8/2:4", sparsity=0.875)
    assert free.layer_pattern().spec() == "8x8@0.75/2:4"
    old = Recipe(block="4x16", sparsity=0.25)  # recipes written before patterns
    assert (old.pattern, old.block, old.selection) == ("4x16", (4, 16), "balanced_rows")
    from_dict = Recipe.from_dict({"pattern": {"kind": "hierarchical", "levels": [
        {"kind": "block", "out": 8, "in": 8, "sparsity": 0.5}, {"kind": "nm", "n": 2, "m": 4}]}})
    assert from_dict.pattern == "8x8@0.5/2:4"
    assert Recipe.from_dict(hss.model_dump(mode="json")) == hss  # the checkpoint form reads back


@pytest.mark.parametrize("fields,says", [
    ({"pattern": "2:4", "sparsity": 0.75}, "0.5 sparse by construction"),
    ({"pattern": "2:4", "block": "8x8"}, "disagree"),
    ({"pattern": "2:4", "method": "penalty"}, "method: penalty"),
    ({"pattern": "2:4", "score": "variance"}, "score: variance"),
    ({"pattern": "unstructured", "score": "variance"}, "score: variance"),
    ({"pattern": "2:4", "selection": "global"}, "selection: global"),
    ({"pattern": "8x8@0.5/2:4", "selection": "global"}, "selection: global"),
    ({"pattern": "3:2"}, "0 < N < M"),
    ({"pattern": "8x8/16x16"}, "tile"),
])
def test_recipe_refuses_what_has_no_meaning(fields, says):
    with pytest.raises(ConfigError) as e:
        Recipe.from_dict(fields, "r.yaml")
    assert says in str(e.value) and "r.yaml" in str(e.value)


def test_a_layer_target_a_fixed_pattern_cannot_reach_is_named():
    with pytest.raises(ConfigError) as e:
        Sparsifier(Recipe(pattern="2:4", layer_sparsity={"conv": 0.75})).prepare(_net())
    assert "layer_sparsity: conv" in str(e.value) and "by construction" in str(e.value)


def test_set_masks_refuses_a_mask_that_breaks_the_pattern():
    sp = Sparsifier(Recipe(pattern="2:4")).prepare(_net())
    with pytest.raises(ConfigError) as e:
        sp.set_masks({"conv": torch.ones(24, 16, 3, 3, dtype=torch.bool)})
    assert "conv:" in str(e.value) and "keep more than 2" in str(e.value)
    with pytest.raises(ConfigError) as e:
        sp.set_masks({"conv": torch.ones(3, 2, dtype=torch.bool)})
    assert "element mask of shape (24, 16, 3, 3)" in str(e.value)


def test_gates_need_a_grid_pattern():
    sp = Sparsifier(Recipe(pattern="2:4")).prepare(_net())
    with pytest.raises(ConfigError, match="grid pattern"):
        sp.attach_gates()


@pytest.mark.parametrize("spec", ["2:4", "8x8@0.5/2:4", "channel"])
def test_checkpoint_round_trip_keeps_pattern_masks_and_outputs(tmp_path, spec):
    model = _net()
    sp = Sparsifier(Recipe(pattern=spec, layer_types=ALL)).prepare(model)
    sp.step()
    x = torch.randn(2, 3, 6, 6)
    want = model(x)
    save_checkpoint(tmp_path / "c.pt", model, sp)
    ck = load_checkpoint(tmp_path / "c.pt", _net(seed=1))
    assert ck.recipe.pattern == parse_pattern(spec).spec() if "@" in spec else ck.recipe.pattern == spec
    assert all(torch.equal(ck.sparsifier.masks[n], m) for n, m in sp.masks.items())
    assert torch.allclose(ck.model(x), want)


def test_report_counts_kept_weights_and_n_m_metadata_by_hand():
    sp = Sparsifier(Recipe(pattern="2:4")).prepare(_net())
    sp.step()
    row = {r.name: r for r in build_report(sp.model, sp).layers}["conv"]
    # 24 x 16 x 3 x 3 = 3456 weights, half kept; runs: 24 * 9 * (16 / 4) = 864, each 2 indices of 2 bits
    assert (row.block, row.blocks_kept, row.blocks_total) == ("2:4", 1728, 3456)
    assert row.compressed_bytes == 1728 + 864 * 2 * 2 // 8
    assert NM(2, 4).metadata_bits((24, 16, 3, 3)) == 864 * 4


def test_sparsifier_overrides_rederive_from_a_new_pattern():
    sp = Sparsifier(Recipe(method="incremental"), pattern="1:8")  # the default 0.5 was derived, not given
    assert (sp.recipe.pattern, sp.recipe.sparsity, sp.recipe.method) == ("1:8", 0.875, "incremental")
    with pytest.raises(ConfigError, match="0.875 sparse by construction"):
        Sparsifier(Recipe(sparsity=0.5), pattern="1:8")  # given: a conflict, not silently replaced
    assert math.isclose(Sparsifier(Recipe(pattern="2:4"), block=(4, 16)).recipe.sparsity, 0.5)


class _One(torch.nn.Module):
    def __init__(self, out, in_, k, groups):
        super().__init__()
        self.conv = torch.nn.Conv2d(in_, out, k, groups=groups)


@given(st.sampled_from(["2:4", "1:8", "2:4:out", "8x8@0.5/2:4", "unstructured"]),
       st.integers(1, 3), st.sampled_from([2, 4]), st.sampled_from([1, 3]), st.sampled_from([1, 2]),
       st.lists(st.floats(0.05, 0.95), min_size=1, max_size=4), st.integers(0, 2**16))
@settings(max_examples=25)
def test_incremental_steps_are_monotone_and_end_on_the_pattern(spec, o8, i8, k, groups, levels, seed):
    torch.manual_seed(seed)
    model = _One(8 * o8 * groups, 8 * i8 * groups, k, groups)
    sp = Sparsifier(Recipe(pattern=spec, sparsity=None if ":" in spec.split("/")[-1] else 0.75,
                           include_first_conv=True)).prepare(model)
    layer = sp.layers["conv"]
    target = layer.target
    prev = _effective(layer).clone()
    for s in sorted(min(v, target) for v in levels) + [target]:
        sp.step(sparsity=s)
        mask = _effective(layer)
        assert not (mask & ~prev).any()  # what was zero stays zero
        assert 1 - mask.float().mean().item() >= s - 1 / mask.numel() - 1e-9  # a step rounds to whole weights
        prev = mask.clone()
    assert layer.pattern.check(prev, layer.shape, layer.groups) == []
    assert sp.sparsity()["conv"] == pytest.approx(target)  # channels divide every unit; an even count of blocks
    assert (layer.module.weight[~prev] == 0).all()


def test_a_target_the_masks_cannot_reach_is_said_not_passed_silently():
    from tilesparse.models.digits import DigitsCNN
    from tilesparse.sparsify import SparsityShortfall

    torch.manual_seed(0)
    sp = Sparsifier(Recipe(pattern="8x8", sparsity=0.9375)).prepare(DigitsCNN(10, 32))
    with pytest.warns(SparsityShortfall, match=r"features\.3 reached 0\.75 of its target 0\.9375"):
        sp.step()
    # 32 input channels: 4 block columns, and balanced rows keep one in every row -> 0.75 at most
    assert sp.sparsity()["features.3"] == 0.75 and "at least one of the 4" in sp.shortfalls["features.3"]
    row = {r.name: r for r in build_report(sp.model, sp).layers}["features.3"]
    assert row.note == sp.shortfalls["features.3"]
    reach = Sparsifier(Recipe(pattern="8x8", sparsity=0.9375, selection="layer", allow_empty_rows=True))
    reach.prepare(DigitsCNN(10, 32)).step()
    assert reach.shortfalls == {} and reach.sparsity()["features.3"] == 0.9375
