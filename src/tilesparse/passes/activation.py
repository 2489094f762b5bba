"""Fuse relu / relu6 into the conv or add that produces their input (attr ``activation``)."""

from __future__ import annotations

from tilesparse.ir.graph import Graph, Node, Op
from tilesparse.passes.rewrite import bypass, consumers_map

__all__ = ["fuse_activations"]

_FUSABLE_INTO = (Op.CONV2D, Op.ADD)
_ACT_NAME = {Op.RELU: "relu", Op.RELU6: "relu6"}


def fuse_activations(g: Graph) -> Graph:
    """Fold each relu/relu6 into its producer when the producer is a conv or add with no activation
    yet and the activation is its only reader (else the pre-activation value is needed elsewhere and
    the relu stays a node)."""
    readers = consumers_map(g)
    nodes: dict[str, Node] = {n.name: n for n in g}
    removed: dict[str, str] = {}
    for act in g.of(Op.RELU, Op.RELU6):
        prod = nodes[act.inputs[0]]
        if (prod.op in _FUSABLE_INTO and prod.attrs.get("activation") is None
                and len(readers[prod.name]) == 1):
            nodes[prod.name] = prod.with_(attrs={**prod.attrs, "activation": _ACT_NAME[act.op]})
            removed[act.name] = prod.name
    return g.replace_nodes(bypass([nodes[n.name] for n in g], removed))
