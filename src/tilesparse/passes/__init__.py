"""Graph passes: each a function ``Graph -> Graph``; :func:`lower` runs them as one flat, named
pipeline and verifies the graph after each (see docs/passes.md)."""

from __future__ import annotations

from collections.abc import Callable

from tilesparse.ir.graph import Graph
from tilesparse.passes.activation import fuse_activations
from tilesparse.passes.batchnorm import fold_batchnorm
from tilesparse.passes.broadcast import expand_broadcast
from tilesparse.passes.downsample import fuse_downsample
from tilesparse.passes.linear import lower_linear
from tilesparse.passes.masks import attach_block_masks, block_mask, sparsifiable_layers
from tilesparse.passes.reuse import (
    drop_shifted_slices,
    mark_buffer_reuse,
    resolve_write_into,
)
from tilesparse.passes.verify import GraphVerifyError, verify

__all__ = [
    "PASSES",
    "GraphVerifyError",
    "attach_block_masks",
    "block_mask",
    "drop_shifted_slices",
    "expand_broadcast",
    "fold_batchnorm",
    "fuse_activations",
    "fuse_downsample",
    "lower",
    "lower_linear",
    "mark_buffer_reuse",
    "resolve_write_into",
    "sparsifiable_layers",
    "verify",
]

PASSES: tuple[Callable[[Graph], Graph], ...] = (
    fold_batchnorm,     # BN → conv weights/bias (or a depthwise 1x1 conv): no BN op reaches the back end
    lower_linear,       # linear → 1x1 conv, flatten → (N, CHW, 1, 1) view: every tensor is NCHW
    expand_broadcast,   # a mul's (N, C, 1, 1) scale → adaptive pool to the map's H x W: equal shapes
    fuse_activations,   # relu/relu6 → attr of the producing conv/add: applied on the accumulator
    fuse_downsample,    # 1x1 stride-s subsampling pool → the adjacent conv's stride
    mark_buffer_reuse,  # concat operands write into their slice; adds overwrite a dead operand
)


def lower(g: Graph) -> Graph:
    """Run :data:`PASSES` in order, verifying the graph before and after each one."""
    verify(g, after="capture")
    for p in PASSES:
        g = verify(p(g), after=p.__name__)
    return g
