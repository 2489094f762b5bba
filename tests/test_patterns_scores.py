"""Block scores against numpy per-block references; Hutchinson against exact Hessians."""

import numpy as np
import pytest
import torch

from tilesparse.errors import ConfigError
from tilesparse.patterns.block import BlockGeometry, BlockShape
from tilesparse.patterns.scores import block_scores, hutchinson_diag


def _blocks(w: np.ndarray, bo: int, bi: int):
    """Reference: yield ((r, c), elements) for every (ragged) block of an (O, I, ...) array."""
    for r in range(0, w.shape[0], bo):
        for c in range(0, w.shape[1], bi):
            yield (r // bo, c // bi), w[r:r + bo, c:c + bi].ravel()


@pytest.mark.parametrize("shape,block", [((20, 12, 3, 3), (8, 8)), ((32, 48), (4, 16)), ((48, 20), (16, 4))])
def test_magnitude_scores(shape, block):
    torch.manual_seed(0)
    w = torch.randn(shape, dtype=torch.float64)
    g = BlockGeometry.of_weight(shape, BlockShape(*block))
    refs = {"l1": lambda e: np.abs(e).sum(), "l2": lambda e: np.sqrt((e ** 2).sum()), "variance": np.var}
    for name, fn in refs.items():
        got = block_scores(name, w, g)
        for (r, c), e in _blocks(w.numpy(), *block):
            assert got[r, c].item() == pytest.approx(fn(e), rel=1e-9), (name, r, c)


def test_gradient_scores():
    torch.manual_seed(1)
    w, s = torch.randn(16, 24, dtype=torch.float64), torch.randn(16, 24, dtype=torch.float64)
    g = BlockGeometry.of_weight(w.shape, BlockShape(8, 8))
    taylor, fisher, hess = (block_scores(n, w, g, s) for n in ("taylor", "fisher", "hessian"))
    for (r, c), e in _blocks((w * s).numpy(), 8, 8):
        assert taylor[r, c].item() == pytest.approx(abs(e.sum()))
    for (r, c), e in _blocks((w * w * s).numpy(), 8, 8):
        assert fisher[r, c].item() == pytest.approx(0.5 * e.sum())
        assert hess[r, c].item() == pytest.approx(0.5 * e.sum())


def test_gradient_score_needs_stats():
    g = BlockGeometry.of_weight((8, 8), BlockShape(8, 8))
    with pytest.raises(ConfigError, match="fisher"):
        block_scores("fisher", torch.ones(8, 8), g)
    with pytest.raises(ConfigError, match="unknown score"):
        block_scores("l3", torch.ones(8, 8), g)


def test_hutchinson_exact_on_diagonal_quadratic():
    """For a diagonal Hessian, z * Hz = diag(H) for every Rademacher z (z^2 = 1): exact with one sample."""
    a = torch.tensor([0.5, 2.0, -1.0, 3.0], dtype=torch.float64)
    x = torch.randn(4, dtype=torch.float64, requires_grad=True)
    loss = 0.5 * (a * x * x).sum()
    (est,) = hutchinson_diag(loss, [x], n_samples=1)
    assert torch.allclose(est, a)


def test_hutchinson_monte_carlo_matches_exact_hessian():
    torch.manual_seed(0)
    w = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randn(16, 3, dtype=torch.float64)

    def f(w_):
        return (torch.tanh(x @ w_.T) - y).pow(2).mean()

    exact = torch.autograd.functional.hessian(f, w).reshape(12, 12).diagonal().reshape(3, 4)
    (est,) = hutchinson_diag(f(w), [w], n_samples=4000, generator=torch.Generator().manual_seed(0))
    # Monte-Carlo error ~ off-diagonal mass / sqrt(n): loose but decisive tolerance
    assert torch.allclose(est, exact, atol=0.05 * exact.abs().max().item())
