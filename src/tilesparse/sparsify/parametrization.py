"""The mask parametrization attached to each sparsified weight: forward = W * mask (* gate).

The element mask is kept pre-expanded as a broadcastable (O, I_g, 1, 1) float buffer, so a forward
costs one broadcast multiply (no block expansion per step); the block mask (rows, cols) is kept beside
it as the source of truth. A soft gate (penalty method) is a trainable (rows, cols) parameter expanded
on the fly, since it changes every step.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tilesparse.patterns.block import BlockGeometry, expand_mask

__all__ = ["BlockMaskParametrization"]


class BlockMaskParametrization(nn.Module):
    """``W -> W * expand(block_mask) [* expand(gate)]`` for one Conv2d / Linear weight."""

    def __init__(self, geom: BlockGeometry, ndim: int, dtype: torch.dtype, device: torch.device | None = None):
        super().__init__()
        self.geom = geom
        self.ndim = ndim
        self.register_buffer("block_mask", torch.ones(geom.grid, dtype=torch.bool, device=device))
        self.register_buffer("element_mask", expand_mask(self.block_mask, geom, ndim).to(dtype))
        self.gate: nn.Parameter | None = None

    def forward(self, weight: Tensor) -> Tensor:
        w = weight * self.element_mask
        if self.gate is not None:
            w = w * expand_mask(self.gate, self.geom, self.ndim)
        return w

    @torch.no_grad()
    def set_mask(self, block_mask: Tensor) -> None:
        self.block_mask.copy_(block_mask.to(self.block_mask.device, torch.bool))
        self.element_mask.copy_(expand_mask(self.block_mask, self.geom, self.ndim))

    def attach_gate(self, init: float = 1.0) -> nn.Parameter:
        g = torch.full(self.geom.grid, init, dtype=self.element_mask.dtype, device=self.element_mask.device)
        self.gate = nn.Parameter(g)
        return self.gate

    def detach_gate(self) -> None:
        self.gate = None
