"""Sparsity patterns: pure tensor functions (no training loop).

* ``block``     — b_o x b_i block geometry over Conv2d / Linear weights, mask <-> weight expansion;
* ``scores``    — block importance: L1, L2, variance, Taylor, Fisher, Hutchinson diagonal Hessian;
* ``selection`` — per-layer, global and balanced (rows / cols) block selection;
* ``oneshot``   — one-shot lowest-L2 pruning of a whole model, and which conv is "the first conv".
"""

from tilesparse.patterns.block import (
    BlockGeometry,
    BlockShape,
    block_counts,
    block_reduce,
    check_block,
    expand_mask,
    parse_block_shape,
)
from tilesparse.patterns.oneshot import first_conv_name, oneshot_layers, prune_oneshot
from tilesparse.patterns.scores import (
    GRADIENT_SCORES,
    SCORES,
    block_scores,
    fisher_scores,
    hessian_scores,
    hutchinson_diag,
    l1_scores,
    l2_scores,
    taylor_scores,
    variance_scores,
)
from tilesparse.patterns.selection import (
    MODES,
    check_sparsity,
    select_layer,
    select_masks,
    sparsity_problem,
    zero_count,
)

__all__ = [
    "BlockGeometry", "BlockShape", "block_counts", "block_reduce", "check_block", "expand_mask",
    "parse_block_shape",
    "GRADIENT_SCORES", "SCORES", "block_scores", "fisher_scores", "hessian_scores", "hutchinson_diag",
    "l1_scores", "l2_scores", "taylor_scores", "variance_scores",
    "first_conv_name", "oneshot_layers", "prune_oneshot",
    "MODES", "check_sparsity", "select_global", "select_layer", "select_masks", "sparsity_problem", "zero_count",
]
