"""BlockSparsifier: layer choice, exact mask sparsity, zeros under optimizer steps, squash, state."""

import pytest
import torch
from _sparsify_helpers import ToyNet
from torch import nn
from torch.nn.utils import parametrize

from tilesparse.errors import ConfigError
from tilesparse.patterns.block import BlockGeometry, BlockShape, expand_mask
from tilesparse.sparsify import BlockSparsifier, Recipe

BLOCKS = [(8, 8), (4, 16), (16, 4)]
MODES = ["layer", "global", "balanced_rows", "balanced_cols"]


def _net(seed=0):
    torch.manual_seed(seed)
    return ToyNet()


def test_layer_choice_and_messages():
    sp = BlockSparsifier(Recipe(layer_types=("conv", "linear"))).prepare(_net())
    assert set(sp.layers) == {"conv", "grouped", "fc"}
    assert "first convolution" in sp.skipped["stem"]
    assert "depthwise" in sp.skipped["dw"] and "block width 8" in sp.skipped["dw"]
    assert not parametrize.is_parametrized(sp.model.stem)


def test_grouped_conv_per_group_layout():
    sp = BlockSparsifier(Recipe(block=(8, 8))).prepare(_net())
    layer = sp.layers["grouped"]  # 2 groups of 16 out x 12 in -> 2 rows x 2 cols per group
    assert layer.geom.grid == (4, 2)
    mask = torch.tensor([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=torch.bool)
    mask[3, 0] = True
    sp.set_masks({"grouped": mask})
    w = sp.model.grouped.weight
    # group 1 (out 16..31), second block row (out 24..31), in 8..11 -> mask[3, 1] = 0
    assert (w[24:32, 8:12] == 0).all() and (w[24:32, 0:8] != 0).all()
    assert (w[0:8, 8:12] == 0).all() and (w[8:16, 0:8] == 0).all()


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("mode", MODES)
def test_exact_sparsity_all_blocks_and_modes(block, mode):
    model = nn.Sequential(nn.Conv2d(3, 64, 3), nn.Conv2d(64, 128, 3), nn.Conv2d(128, 64, 1), nn.Flatten(),
                          nn.Linear(64, 96))
    recipe = Recipe(block=block, selection=mode, sparsity=0.5, layer_types=("conv", "linear"))
    sp = BlockSparsifier(recipe).prepare(model)
    sp.step()
    bo, bi = block
    for name, layer in sp.layers.items():
        w = layer.module.weight
        assert layer.mask.shape == (-(-w.shape[0] // bo), -(-w.shape[1] // bi)), name
        if mode != "global":
            assert sp.sparsity()[name] == pytest.approx(0.5), name
    total = sum(int((~lay.mask).sum()) for lay in sp.layers.values())
    assert total == sum(lay.geom.n_blocks for lay in sp.layers.values()) // 2


@pytest.mark.parametrize("opt_name", ["sgd", "adam", "adamw"])
def test_masked_weights_stay_zero(opt_name):
    model = _net()
    sp = BlockSparsifier(Recipe(sparsity=0.75, layer_types=("conv", "linear"))).prepare(model)
    sp.step()
    opts = {"sgd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-2),
            "adam": lambda p: torch.optim.Adam(p, lr=0.1), "adamw": lambda p: torch.optim.AdamW(p, lr=0.1)}
    opt = opts[opt_name](model.parameters())
    for _ in range(5):
        loss = model(torch.randn(4, 3, 6, 6)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for name, layer in sp.layers.items():
        zero = ~expand_mask(layer.mask, layer.geom, layer.module.weight.dim()).expand_as(layer.module.weight)
        assert (layer.module.weight[zero] == 0).all(), name
        assert (layer.raw_weight[zero] == 0).all(), name
        assert (layer.module.weight[~zero] != 0).any(), name


def test_forward_is_weight_times_mask():
    model = _net()
    ref = _net()
    sp = BlockSparsifier(Recipe(sparsity=0.5)).prepare(model)
    sp.step()
    with torch.no_grad():
        for name, layer in sp.layers.items():
            m = expand_mask(layer.mask, layer.geom, 4).float()
            ref.get_submodule(name).weight.mul_(m)
    x = torch.randn(2, 3, 6, 6)
    assert torch.allclose(model(x), ref(x), atol=1e-6)


def test_squash_mask_keeps_function_and_removes_machinery():
    model = _net()
    sp = BlockSparsifier(Recipe(sparsity=0.5)).prepare(model)
    sp.step()
    x = torch.randn(2, 3, 6, 6)
    before = model(x)
    masks = sp.masks
    sp.squash_mask()
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert torch.allclose(model(x), before)
    assert int((model.conv.weight.abs().sum(dim=(2, 3)) == 0).sum()) == int((~masks["conv"]).sum()) * 64


def test_state_dict_round_trip():
    a = BlockSparsifier(Recipe(sparsity=0.5)).prepare(_net())
    a.step()
    b = BlockSparsifier(Recipe(sparsity=0.5)).prepare(_net(1))
    b.load_state_dict(a.state_dict())
    assert all(torch.equal(a.masks[n], b.masks[n]) for n in a.masks)
    assert b.state_dict()["recipe"] == a.state_dict()["recipe"]


def test_unknown_layer_names_are_named():
    with pytest.raises(ConfigError, match="'conv9'"):
        BlockSparsifier(Recipe(layer_sparsity={"conv9": 0.5})).prepare(_net())
    with pytest.raises(ConfigError, match="'nope.*'"):
        BlockSparsifier(Recipe(exclude=("nope.*",))).prepare(_net())
    sp = BlockSparsifier(Recipe()).prepare(_net())
    with pytest.raises(ConfigError, match="'fc'"):
        sp.step(sparsity={"fc": 0.5})
    with pytest.raises(ConfigError, match=r"sparsity: expected a number in \[0, 1\), got 1.0"):
        sp.step(sparsity=1.0)


def test_per_layer_targets_and_exclude():
    sp = BlockSparsifier(Recipe(sparsity=0.5, layer_sparsity={"conv": 0.0}, exclude=("group*",))).prepare(_net())
    sp.step()
    assert sp.sparsity() == {"conv": 0.0}
    assert sp.skipped["grouped"] == "excluded by the recipe"


def test_include_narrow_sparsifies_depthwise_per_group():
    sp = BlockSparsifier(Recipe(include_narrow=True, allow_empty_rows=True, selection="layer")).prepare(_net())
    assert sp.layers["dw"].geom.grid == (32, 1)
    sp.step()
    assert sp.sparsity()["dw"] == pytest.approx(0.5)


def test_works_on_other_dtype_and_after_to():
    model = _net().double()
    sp = BlockSparsifier(Recipe()).prepare(model)
    sp.step()
    model.to("cpu")
    assert model(torch.randn(1, 3, 6, 6, dtype=torch.float64)).dtype == torch.float64


def test_prepare_twice_rejected():
    sp = BlockSparsifier().prepare(_net())
    with pytest.raises(ConfigError, match="already prepared"):
        sp.prepare(_net())


def test_geometry_of_module():
    g = BlockGeometry.of_module(nn.Conv2d(24, 32, 1, groups=2), BlockShape(8, 8))
    assert (g.groups, g.out_per_group, g.in_per_group, g.grid) == (2, 16, 12, (4, 2))


def test_constructor_overrides_are_validated():
    assert BlockSparsifier(sparsity=0.75, block=(4, 16)).recipe.block == (4, 16)
    with pytest.raises(ConfigError, match="sparsty: unknown field"):
        BlockSparsifier(sparsty=0.5)
    with pytest.raises(ConfigError, match="block"):
        BlockSparsifier(block=(0, 8))
