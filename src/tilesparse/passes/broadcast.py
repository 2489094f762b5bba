"""Expand a per-channel scale to the map it multiplies: the back end multiplies equal shapes.

A squeeze-excitation block ends in ``x * s`` with ``x`` (N, C, H, W) and ``s`` (N, C, 1, 1). This
pass puts an ``adaptive_avgpool`` from 1 × 1 to H × W in front of the ``mul``'s second operand: it
repeats each channel's one value over the plane (every window is the single input position, so
the integer average is the value itself, exactly) and keeps its exponent. The ``mul`` then reads
two tensors of one shape, as an ``add`` does. The price is one more layer that writes C·H·W bytes
(docs/passes.md); streaming the C scale bytes beside the map instead is left for later.
"""

from __future__ import annotations

from tilesparse.ir.graph import Graph, Node, Op, TensorType

__all__ = ["expand_broadcast"]


def _fresh(name: str, taken: set[str]) -> str:
    out, k = name, 1
    while out in taken:
        k += 1
        out = f"{name}_{k}"
    taken.add(out)
    return out


def expand_broadcast(g: Graph) -> Graph:
    """Return ``g`` with each broadcast ``mul``'s (N, C, 1, 1) operand expanded (see module doc)."""
    taken = {n.name for n in g}
    nodes: list[Node] = []
    for n in g:
        if n.op is Op.MUL:
            x, s = (g.node(i).out for i in n.inputs)
            if s.shape != x.shape:
                name = _fresh(f"{n.name}_expand", taken)
                nodes.append(Node(name, Op.ADAPTIVE_AVGPOOL, (n.inputs[1],), TensorType(x.shape, s.dtype, s.scale_exp),
                                  {"output_size": tuple(x.shape[2:])}, source=f"{n.source} (scale expanded)"))
                n = n.with_(inputs=(n.inputs[0], name))
        nodes.append(n)
    return g.replace_nodes(nodes)
