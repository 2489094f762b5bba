"""One-shot block pruning of a whole model, and the one rule for which conv is "the first conv".

``prune_oneshot`` zeroes the ``sparsity`` fraction of lowest-L2 b_o x b_i blocks in every Conv2d
and Linear but the first conv (the paper's setting). Latency depends on shapes and masks, not on
values, so random weights pruned this way are what the Table II benchmark compiles; the compiled
figures depend on these masks bit for bit, so the rule and the tie-breaking (stable sort, lowest
index first; ``patterns.selection``) must not change.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tilesparse.errors import ConfigError
from tilesparse.patterns.block import BlockGeometry, BlockShape, expand_mask, parse_block_shape
from tilesparse.patterns.family import Pattern, prune_mask
from tilesparse.patterns.scores import l2_scores
from tilesparse.patterns.selection import check_sparsity, select_layer

__all__ = ["first_conv_name", "oneshot_layers", "prune_oneshot", "prune_pattern_oneshot"]


def first_conv_name(model: nn.Module) -> str | None:
    """The first Conv2d in module order (the network's stem, which the paper keeps dense)."""
    return next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)


def oneshot_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d | nn.Linear]]:
    """Every Conv2d and Linear except the first conv, in module order."""
    first = first_conv_name(model)
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and n != first]


@torch.no_grad()
def prune_oneshot(model: nn.Module, sparsity: float, block: str | tuple[int, int] | BlockShape = (8, 8),
                  name: str = "model") -> dict[str, Tensor]:
    """Zero the ``sparsity`` fraction of lowest-L2 blocks of each layer of ``oneshot_layers`` in
    place (layers are pruned independently; a block row may end up empty). Returns the bool
    block keep-masks by module name."""
    check_sparsity(sparsity, "--sparsity")
    layers = oneshot_layers(model)
    if not layers:
        raise ConfigError(name, [f"model {name} has no sparsifiable layer (a conv or linear after "
                                 f"the first conv); nothing to make block-sparse"])
    shape = parse_block_shape(block)
    masks: dict[str, Tensor] = {}
    for n, m in layers:
        w = m.weight
        geom = BlockGeometry.of_module(m, shape)
        keep = select_layer(l2_scores(w, geom), sparsity, allow_empty_rows=True)
        w.mul_(expand_mask(keep, geom, w.dim()).to(w.dtype))
        masks[n] = keep
    return masks


@torch.no_grad()
def prune_pattern_oneshot(model: nn.Module, pattern: Pattern, name: str = "model") -> dict[str, str]:
    """Zero, in place, the lowest-magnitude weights of every layer of ``oneshot_layers`` that
    ``pattern`` (its sparsity fixed: ``Pattern.with_sparsity``) would zero — 2:4, 1:4, 8x8@0.5/2:4
    — each layer on its own (``family.prune_mask``). Returns, for each layer the pattern cannot
    take (``Pattern.eligible``: e.g. fewer input channels than M), why it stays dense."""
    layers = oneshot_layers(model)
    if not layers:
        raise ConfigError(name, [f"model {name} has no sparsifiable layer (a conv or linear after the first conv); "
                                 f"nothing to prune to {pattern.spec()}"])
    skipped: dict[str, str] = {}
    for n, m in layers:
        groups = m.groups if isinstance(m, nn.Conv2d) else 1
        why = pattern.eligible(tuple(m.weight.shape), groups)
        if why is not None:
            skipped[n] = why
            continue
        m.weight.mul_(prune_mask(pattern, m.weight, groups).to(m.weight.dtype))
    return skipped
