"""Block masks read off zero blocks, checked against masks built by hand."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from tilesparse.ir.capture import capture
from tilesparse.passes import attach_block_masks, block_mask, lower, sparsifiable_layers


def _zero_blocks(w: torch.Tensor, kept: np.ndarray, bo: int, bi: int) -> None:
    for r, c in zip(*np.nonzero(~kept), strict=True):
        w[r * bo:(r + 1) * bo, c * bi:(c + 1) * bi] = 0


@settings(max_examples=40, deadline=None)
@given(o=st.integers(1, 20), i=st.integers(1, 20), k=st.sampled_from([1, 3]),
       bo=st.sampled_from([4, 8]), bi=st.sampled_from([4, 8, 16]), seed=st.integers(0, 99))
def test_block_mask_recovers_the_zeroed_blocks(o, i, k, bo, bi, seed):
    rng = np.random.default_rng(seed)
    rows, cols = -(-o // bo), -(-i // bi)
    kept = rng.random((rows, cols)) < 0.5
    w = torch.randn(o, i, k, k) + 0.01  # no accidental zero
    _zero_blocks(w, kept, bo, bi)
    np.testing.assert_array_equal(block_mask(w.numpy(), (bo, bi)), kept)


def test_grouped_mask_stacks_groups_along_rows():
    w = np.ones((16, 4, 3, 3), np.float32)  # 2 groups: O_g = 8, I_g = 4
    w[8:12, 0:4] = 0  # group 1, first 4x4 block of outputs 8..11
    m = block_mask(w, (4, 4), groups=2)
    assert m.shape == (2 * 2, 1)
    np.testing.assert_array_equal(m[:, 0], [True, True, False, True])


def test_masks_in_graph_first_layer_dense():
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.Flatten(),
                          nn.Linear(16 * 4 * 4, 16)).eval()
    with torch.no_grad():
        model[0].weight[:8] = 0             # the first conv is kept dense regardless
        model[2].weight[8:, :8] = 0         # one zero 8x8 block
        model[4].weight[:, :8] = 0          # zero input features 0..7 of the linear
    g = attach_block_masks(lower(capture(model, (1, 3, 8, 8))), (8, 8))
    assert g.param("_0", "mask").all() and g.node("_0").attrs["block"] == (8, 8)
    np.testing.assert_array_equal(g.param("_2", "mask"), [[True, True], [False, True]])
    lin = g.param("_4", "mask")
    assert lin.shape == (2, 32) and not lin[:, 0].any() and lin[:, 1:].all()
    assert sparsifiable_layers(g) == ["_2", "_4"]


def test_bad_block_shape():
    g = lower(capture(nn.Sequential(nn.Conv2d(3, 4, 1)).eval(), (1, 3, 2, 2)))
    with pytest.raises(ValueError, match="block shape"):
        attach_block_masks(g, (0, 8))


def test_parametrized_masked_weights_arrive_as_masks():
    """A model still carrying a mask parametrization (torch.nn.utils.parametrize, as a sparsifier
    leaves it before squashing) is captured with the masked weight, so its zero blocks are seen."""
    from torch.nn.utils import parametrize

    class Mask(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.register_buffer("m", m)

        def forward(self, w):
            return w * self.m

    model = nn.Sequential(nn.Conv2d(3, 16, 1), nn.Conv2d(16, 16, 3)).eval()
    m = torch.ones(16, 16, 1, 1)
    m[:8, 8:] = 0
    parametrize.register_parametrization(model[1], "weight", Mask(m))
    g = attach_block_masks(lower(capture(model, (1, 3, 6, 6))))
    np.testing.assert_array_equal(g.param("_1", "mask"), [[True, False], [True, True]])
