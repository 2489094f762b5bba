"""One-shot block sparsity for compiling and benchmarking: zero the lowest-L2 blocks of every
conv and linear layer but the first conv (the paper's setting), using ``tilesparse.patterns``.

Latency depends on shapes and masks, not on values, so random weights with these masks are what
the Table II benchmark compiles.
"""

from __future__ import annotations

import torch
from torch import nn

from tilesparse.errors import ConfigError
from tilesparse.patterns import (
    BlockGeometry,
    expand_mask,
    l2_scores,
    parse_block_shape,
    select_layer,
)

__all__ = ["apply_block_sparsity", "sparsifiable_layers"]


def sparsifiable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every Conv2d and Linear except the first conv, in module order."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    first_conv = next((n for n, m in layers if isinstance(m, nn.Conv2d)), None)
    return [(n, m) for n, m in layers if n != first_conv]


@torch.no_grad()
def apply_block_sparsity(model: nn.Module, sparsity: float, block: str | tuple[int, int] = (8, 8),
                         name: str = "model") -> nn.Module:
    """Zero the ``sparsity`` fraction of lowest-L2 blocks in each sparsifiable layer (in place)."""
    if not 0.0 <= sparsity < 1.0:
        raise ConfigError("--sparsity", [f"sparsity must be in [0, 1), got {sparsity}"])
    layers = sparsifiable_layers(model)
    if not layers:
        raise ConfigError(name, [(f"model {name} has no sparsifiable layer (a conv or linear after "
                                  f"the first conv); nothing to make block-sparse")])
    shape = parse_block_shape(block)
    for _, m in layers:
        w = m.weight
        assert isinstance(w, torch.Tensor)
        geom = BlockGeometry.of_module(m, shape)
        keep = select_layer(l2_scores(w, geom), sparsity, allow_empty_rows=True)
        w.mul_(expand_mask(keep, geom, w.dim()).to(w.dtype))
    return model
