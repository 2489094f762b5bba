"""Same L2 criterion and sparsity on Linear layers -> the same blocks as torch.ao.pruning's
WeightNormSparsifier(sparse_block_shape=(8, 8), zeros_per_block=64)."""

import pytest
import torch
from torch import nn
from torch.ao.pruning import WeightNormSparsifier

from tilesparse.sparsify import BlockSparsifier, Recipe


@pytest.mark.parametrize("sparsity", [0.1, 0.25, 0.5, 0.75, 0.9])
@pytest.mark.parametrize("shape", [(64, 64), (128, 32), (40, 96)])
def test_matches_weight_norm_sparsifier(shape, sparsity):
    torch.manual_seed(int(sparsity * 100) + shape[0])
    ref_model = nn.Sequential(nn.Linear(shape[1], shape[0]), nn.ReLU(), nn.Linear(shape[0], 16))
    ours_model = nn.Sequential(nn.Linear(shape[1], shape[0]), nn.ReLU(), nn.Linear(shape[0], 16))
    ours_model.load_state_dict(ref_model.state_dict())

    ref = WeightNormSparsifier(sparsity_level=sparsity, sparse_block_shape=(8, 8), zeros_per_block=64)
    ref.prepare(ref_model, config=[{"tensor_fqn": "0.weight"}, {"tensor_fqn": "2.weight"}])
    ref.step()

    recipe = Recipe(sparsity=sparsity, block=(8, 8), score="l2", selection="layer", allow_empty_rows=True,
                    layer_types=("linear",))
    ours = BlockSparsifier(recipe).prepare(ours_model)
    ours.step()
    for name in ("0", "2"):
        ref_mask = ref_model.get_submodule(name).parametrizations.weight[0].mask.bool()
        ours_mask = ours_model.get_submodule(name).weight != 0
        assert torch.equal(ref_mask, ours_mask), name
