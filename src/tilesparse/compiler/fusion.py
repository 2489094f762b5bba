"""Residual adds fused into convs: which conv may take an add, and which one should.

An add runs inside the conv that produces one of its operands and is computed last; the other
operand streams in as a residual tile with the conv's input (time-model rule 1: over the same
column channel as LOADFM), and the conv's own output is never stored. Where both operands are
convs (a ResNet block's ``conv3`` and ``downsample``), either order of the two branches is a
valid schedule, and the graph's order (``conv3`` first, so the downsample takes the add) is the
worse one: a strided downsample reads 2× conv3's input channels and re-reads them once per
output-channel chunk, so the residual on top makes its LOADFM stream the layer's limit.
``order_add_branches`` gives the add to the conv that reads less input per pass
(``input_pass_bytes``). ResNet50 4×4 sparse: layer2_0_downsample 51.4 µs with the residual and
29.7 µs without, its conv3 26.4 µs without and 33.6 µs with it.

Planning both convs both ways instead (four searches per add) differs from this rule only in
pairs within a few µs of a tie (on 2×2, 4×4 and 8×2: three pairs, the largest 8×2 dense layer3_0 by
2.1 µs), and cost ~12 % more ResNet50 compile time, which its 5 s target could not afford.
"""

from __future__ import annotations

from tilesparse.compiler.layers import chw, layer_spec
from tilesparse.ir.graph import Graph, Node, Op

__all__ = ["buffer_of", "can_fuse", "fusable_adds", "input_pass_bytes", "order_add_branches"]


def buffer_of(g: Graph, name: str, rename: dict[str, str] | None = None) -> tuple[str, int, int]:
    """(buffer, its channel count, channel offset) where node ``name``'s output is stored (a
    channel slice lives in its producer's buffer);
    ``rename`` maps a fused conv (whose own output is never stored) to its add's buffer."""
    off = 0
    rename = rename or {}
    while True:
        n = g.node(name)
        if (w := n.attrs.get("write_into")) is not None:
            name, o = w
            off += o
        elif n.op is Op.ADD and (r := n.attrs.get("reuse_input")) is not None:
            name = r
        elif n.op is Op.SLICE:  # a view: its channel range of the producer's buffer
            name = n.inputs[0]
            off += int(n.attrs["start"])
        else:
            name = rename.get(name, name)
            return name, chw(g.node(name))[0], off


def can_fuse(g: Graph, add: Node, conv: str, other: str, order: dict[str, int] | None = None) -> bool:
    """Whether ``add`` can run inside ``conv`` with ``other`` as its residual: the conv's only
    reader is the add, it writes no concat slice, ``other`` is computed before the conv (so it is
    ready when the conv's output tiles are), and the add does not overwrite a buffer the conv
    reads (``y + conv(y)`` reusing y's buffer: fused, the sum of an early tile would overwrite
    input a later tile or channel chunk still reads)."""
    order = order if order is not None else {n.name: i for i, n in enumerate(g)}
    src = g.node(conv)
    return (len(add.inputs) == 2 and "write_into" not in add.attrs and src.op is Op.CONV2D
            and "write_into" not in src.attrs and conv != other
            and [r.name for r in g.consumers(conv)] == [add.name] and order[other] < order[conv]
            and buffer_of(g, add.name)[0] not in {buffer_of(g, i)[0] for i in src.inputs})


def fusable_adds(g: Graph) -> dict[str, tuple[str, str]]:
    """conv -> (add, other operand) for each add that can run inside a conv (``can_fuse``)."""
    order = {n.name: i for i, n in enumerate(g)}
    out: dict[str, tuple[str, str]] = {}
    for add in g.of(Op.ADD):
        for a, b in (add.inputs, add.inputs[::-1]):
            if can_fuse(g, add, a, b, order):
                out[a] = (add.name, b)
                break
    return out


def order_add_branches(g: Graph) -> Graph:
    """``g`` with, for every add that the conv computed last takes while the other conv could
    take it instead, the other conv's branch moved just before it when that conv reads less input
    per pass over its output (module doc; the graph's order on a tie). The branch is the conv and
    those of its ancestors that come after the conv it moves before."""
    for add in list(g.of(Op.ADD)):
        if len(add.inputs) != 2:
            continue
        order = {n.name: i for i, n in enumerate(g)}
        late, early = sorted(add.inputs, key=order.__getitem__, reverse=True)
        if g.node(early).op is not Op.CONV2D or not can_fuse(g, add, late, early, order):
            continue
        if input_pass_bytes(g, early) < input_pass_bytes(g, late):
            swapped = _first(g, late, before=early)
            if swapped is not None and can_fuse(swapped, add, early, late):
                g = swapped
    return g


def input_pass_bytes(g: Graph, conv: str) -> int:
    """Bytes of input a conv's cores read per pass over its whole output (its LOADFM traffic per
    output-channel chunk): the input channels times the window positions of the output map."""
    sp = layer_spec(g.node(conv), g)
    return sp.ci * sp.window_positions(sp.ho, sp.wo)


def _first(g: Graph, name: str, before: str) -> Graph | None:
    """``g`` with ``name`` and its ancestors that come after ``before`` moved just before it (in
    their order), or None if ``name`` depends on ``before``."""
    order = {n.name: i for i, n in enumerate(g)}
    need: set[str] = set()
    todo = [name]
    while todo:
        n = todo.pop()
        if n == before:
            return None
        if n not in need and order[n] > order[before]:
            need.add(n)
            todo += g.node(n).inputs
    at = order[before]
    tail = g.nodes[at:]
    return Graph(g.nodes[:at] + tuple(n for n in tail if n.name in need)
                 + tuple(n for n in tail if n.name not in need), g.params, g.name)
