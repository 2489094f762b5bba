"""Sparsity patterns: pure tensor functions (no training loop).

* ``block``     — b_o x b_i block geometry over Conv2d / Linear weights, mask <-> weight expansion;
* ``scores``    — block importance: L1, L2, variance, Taylor, Fisher, Hutchinson diagonal Hessian;
* ``selection`` — per-layer, global and balanced (rows / cols) block selection;
* ``oneshot``   — one-shot lowest-L2 pruning of a whole model, and which conv is "the first conv";
* ``family``    — the structured-sparsity family as values: Block, NM, Channel, Filter, Unstructured,
                  Hierarchical (HSS); masks from scores, mask checks, density and metadata cost;
* ``grammar``   — ``--pattern`` strings (``8x8``, ``2:4``, ``8x8@0.5/2:4``), YAML dicts and files.
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
from tilesparse.patterns.family import (
    NM,
    Block,
    Channel,
    Filter,
    Hierarchical,
    Pattern,
    Unstructured,
    magnitude_scorer,
    prune_mask,
)
from tilesparse.patterns.grammar import GRAMMAR, as_pattern, parse_pattern, pattern_from_dict
from tilesparse.patterns.oneshot import first_conv_name, oneshot_layers, prune_oneshot, prune_pattern_oneshot
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
    unit_scores,
    variance_scores,
)
from tilesparse.patterns.selection import (
    MODES,
    check_sparsity,
    select_global,
    select_layer,
    select_masks,
    sparsity_problem,
    zero_count,
)

__all__ = [
    "BlockGeometry", "BlockShape", "block_counts", "block_reduce", "check_block", "expand_mask",
    "parse_block_shape",
    "GRADIENT_SCORES", "SCORES", "block_scores", "fisher_scores", "hessian_scores", "hutchinson_diag",
    "l1_scores", "l2_scores", "taylor_scores", "unit_scores", "variance_scores",
    "Pattern", "Block", "NM", "Channel", "Filter", "Unstructured", "Hierarchical", "magnitude_scorer", "prune_mask",
    "GRAMMAR", "as_pattern", "parse_pattern", "pattern_from_dict",
    "first_conv_name", "oneshot_layers", "prune_oneshot", "prune_pattern_oneshot",
    "MODES", "check_sparsity", "select_global", "select_layer", "select_masks", "sparsity_problem", "zero_count",
]
