"""torchvision resnet50 / inception_v3 / vgg16 (random weights): 50 % 8x8 on every conv but the first.
Mask selection only — no training — so this stays fast."""

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from tilesparse.models.zoo import get_model
from tilesparse.sparsify import BlockSparsifier, Recipe, build_report


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet50", "inception_v3", "vgg16"])
def test_torchvision_50_percent_8x8(name):
    model = get_model(name)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    sp = BlockSparsifier(Recipe(sparsity=0.5, block=(8, 8))).prepare(model)
    sp.step()
    assert list(sp.layers) == convs[1:]
    assert not parametrize.is_parametrized(model.get_submodule(convs[0]), "weight")
    assert all(v == 0.5 for v in sp.sparsity().values())
    for name_, layer in sp.layers.items():  # balanced rows: every block row keeps exactly half
        assert (layer.mask.sum(dim=1) == layer.geom.cols // 2).all(), name_
    rep = build_report(model, sp)
    assert rep.block_sparsity == 0.5
    with torch.no_grad():
        first = model.get_submodule(convs[1]).weight
        assert (first == 0).float().mean().item() == pytest.approx(0.5)
