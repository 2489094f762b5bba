"""The mask parametrization attached to each sparsified weight: forward = W * mask (* gate).

The pattern's *native* mask (``patterns.family``: the unit grid of a grid pattern, the element mask
of N:M and hierarchies) is the source of truth; beside it the element mask is kept pre-expanded as a
float buffer broadcastable to the weight ((O, I_g, 1, 1) for blocks), so a forward costs one
broadcast multiply. A soft gate (penalty method, grid patterns) is a trainable parameter of the
native shape expanded on the fly, since it changes every step.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tilesparse.patterns.family import Pattern

__all__ = ["MaskParametrization", "BlockMaskParametrization"]


class MaskParametrization(nn.Module):
    """``W -> W * expand(mask) [* expand(gate)]`` for one Conv2d / Linear weight under ``pattern``."""

    def __init__(self, pattern: Pattern, shape: tuple[int, ...], groups: int, dtype: torch.dtype,
                 device: torch.device | None = None):
        super().__init__()
        self.pattern, self.shape, self.groups = pattern, tuple(shape), groups
        self.register_buffer("mask", torch.ones(pattern.native_shape(self.shape, groups), dtype=torch.bool,
                                                device=device))
        self.register_buffer("element_mask", self._expand(self.mask).to(dtype))
        self.gate: nn.Parameter | None = None

    def _expand(self, native: Tensor) -> Tensor:
        return self.pattern.expand(native, self.shape, self.groups)

    def forward(self, weight: Tensor) -> Tensor:
        w = weight * self.element_mask
        if self.gate is not None:
            w = w * self._expand(self.gate)
        return w

    @property
    def block_mask(self) -> Tensor:
        """The native mask under its name from before patterns (the block grid for blocks)."""
        return self.mask

    @torch.no_grad()
    def set_mask(self, native: Tensor) -> None:
        self.mask.copy_(native.to(self.mask.device, torch.bool))
        self.element_mask.copy_(self._expand(self.mask))

    def attach_gate(self, init: float = 1.0) -> nn.Parameter:
        g = torch.full(self.mask.shape, init, dtype=self.element_mask.dtype, device=self.element_mask.device)
        self.gate = nn.Parameter(g)
        return self.gate

    def detach_gate(self) -> None:
        self.gate = None


BlockMaskParametrization = MaskParametrization  # the name before patterns
