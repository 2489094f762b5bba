"""Other tools' patterns: torch.ao's own WeightNormSparsifier gives the same masks as NM(2, 4) and
Block patterns for the same weights."""

from __future__ import annotations

import pytest
import torch
from torch.ao.pruning import WeightNormSparsifier

from tilesparse.errors import ConfigError
from tilesparse.patterns import NM, Block, prune_mask
from tilesparse.patterns.interop import from_asp, from_inc, from_torch_ao


def _torch_ao_mask(weight: torch.Tensor, **kw) -> torch.Tensor:
    model = torch.nn.Sequential(torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False))
    with torch.no_grad():
        model[0].weight.copy_(weight)
    sp = WeightNormSparsifier(**kw)
    sp.prepare(model, [{"tensor_fqn": "0.weight"}])
    sp.step()
    return model[0].parametrizations.weight[0].mask.bool()


@pytest.mark.parametrize("seed", range(5))
def test_torch_ao_2_of_4_equals_nm_2_4(seed):
    w = torch.randn(16, 32, generator=torch.Generator().manual_seed(seed))
    ao = _torch_ao_mask(w, sparsity_level=1.0, sparse_block_shape=(1, 4), zeros_per_block=2)
    p = from_torch_ao((1, 4), 2)
    assert p == NM(2, 4)
    assert torch.equal(ao, prune_mask(p, w))


def test_torch_ao_whole_blocks_equal_block_pattern():
    w = torch.randn(8, 16, generator=torch.Generator().manual_seed(7))
    ao = _torch_ao_mask(w, sparsity_level=0.5, sparse_block_shape=(1, 4), zeros_per_block=4)
    p = from_torch_ao((1, 4), 4, 0.5)
    assert p == Block(1, 4, 0.5)
    # torch.ao ranks blocks over the whole layer and may empty a row: tilesparse's layer mode with empty rows
    native = p.select(lambda reduce: reduce(w.double().square()).sqrt(), (8, 16), mode="layer", allow_empty_rows=True)
    assert torch.equal(ao, p.expand(native, (8, 16)).expand(8, 16))


def test_asp_and_inc_names():
    assert from_asp("m4n2_1d") == NM(2, 4)
    assert from_inc("4x1", 0.8) == Block(4, 1, 0.8)
    assert from_inc("2:4") == NM(2, 4)
    assert from_inc("1:4") == NM(3, 4)  # INC prunes N of every M
    with pytest.raises(ConfigError, match="2-D ASP"):
        from_asp("m4n2_2d_best")
    with pytest.raises(ConfigError, match="1 x M"):
        from_torch_ao((2, 4), 3)
