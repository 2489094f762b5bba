"""Block masks in the IR, read off the zero blocks of each conv weight.

``attach_block_masks`` sets param ``<conv>.mask`` (bool) and attr ``block = (b_o, b_i)`` on every
conv2d (and linear, if any is left). For a conv with O outputs, I inputs and G groups the mask has
shape ``(G · ceil(O_g / b_o), ceil(I_g / b_i))`` with O_g = O / G, I_g = I / G: the groups' masks
stacked along the rows (group g owns rows ``g·ceil(O_g/b_o) …``); for G = 1 it is the usual
``ceil(O / b_o) × ceil(I / b_i)``. Block (r, c) of group g covers output channels
``g·O_g + r·b_o …`` (clipped to the group) × inputs ``c·b_i …`` × the whole kernel window; it is kept
(True) iff any weight in it is non-zero. The first conv (the one reading a graph input, as in the
paper, which never sparsifies it) and any conv without a zero block get an all-ones (dense) mask.
"""

from __future__ import annotations

import math

import numpy as np

from tilesparse.ir.graph import Graph, Node, Op

__all__ = ["attach_block_masks", "block_mask", "is_first_layer", "sparsifiable_layers"]

DEFAULT_BLOCK = (8, 8)  # the AIE2 int8 matmul consumes 8 inputs x 8 outputs per step


def block_mask(weight: np.ndarray, block: tuple[int, int], groups: int = 1) -> np.ndarray:
    """Kept-block mask of a conv weight (O × I_g × kh × kw) or linear weight (O × I); see module doc."""
    bo, bi = block
    w = weight.reshape(weight.shape[0], weight.shape[1], -1)
    o, i_g = w.shape[0], w.shape[1]
    o_g = o // groups
    rows, cols = math.ceil(o_g / bo), math.ceil(i_g / bi)
    nz = (w != 0).any(axis=2)
    # Pad each group's (O_g, I_g) non-zero map to whole blocks, then reduce each block with any().
    nz = nz.reshape(groups, o_g, i_g)
    padded = np.zeros((groups, rows * bo, cols * bi), bool)
    padded[:, :o_g, :i_g] = nz
    blocks = padded.reshape(groups, rows, bo, cols, bi).any(axis=(2, 4))
    return blocks.reshape(groups * rows, cols)


def is_first_layer(g: Graph, n: Node) -> bool:
    """True if ``n`` reads a graph input directly (the paper keeps that layer dense)."""
    return any(g.node(i).op is Op.INPUT for i in n.inputs)


def attach_block_masks(g: Graph, block: tuple[int, int] = DEFAULT_BLOCK) -> Graph:
    """Return ``g`` with a ``mask`` param and ``block`` attr on every conv2d/linear (module doc)."""
    block = (int(block[0]), int(block[1]))
    if min(block) < 1:
        raise ValueError(f"block shape must be positive, got {block}")
    params = dict(g.params)
    nodes = []
    for n in g:
        if n.op in (Op.CONV2D, Op.LINEAR):
            groups = int(n.attrs.get("groups", 1))
            m = block_mask(g.param(n.name, "weight"), block, groups)
            params[f"{n.name}.mask"] = np.ones_like(m) if is_first_layer(g, n) else m
            n = n.with_(attrs={**n.attrs, "block": block})
        nodes.append(n)
    return g.replace_nodes(nodes, params)


def sparsifiable_layers(g: Graph) -> list[str]:
    """Convs whose weights may carry zero blocks: every conv2d/linear except the first layer and the
    depthwise convs that stand for a batch-norm (the paper sparsifies all convs but the first)."""
    return [n.name for n in g.of(Op.CONV2D, Op.LINEAR)
            if not is_first_layer(g, n) and not n.attrs.get("from_batchnorm")]
