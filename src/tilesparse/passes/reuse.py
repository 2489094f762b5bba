"""Mark buffer reuse so the back end allocates no buffer for concat or element-wise add outputs.

* concat: each operand's producer gets ``write_into = (concat_node, channel_offset)`` — it writes
  its output straight into that channel slice of the concat's buffer. Nested concats chain
  (an inner concat writes into the outer one); :func:`resolve_write_into` follows the chain.
* add: gets ``reuse_input = <operand>`` — the sum overwrites that operand's buffer, which must be
  dead afterwards (the add is its last reader).

A producer is eligible only if it owns a fresh buffer (not a graph input, not a flatten view or a
channel slice, not a channel shuffle, whose strided copies write only its own buffer), the
concat/add is its only reader where a slice is involved, and no other mark already claims it.

Quantization may then find that an operand cannot write its slice as is: its exponent differs from
the concat's (a non-zero ``input_shifts`` entry, e.g. a max-pool branch, which cannot requantize).
:func:`drop_shifted_slices` removes those marks; the back end then copies the operand into its
slice with the shift (a ``copy`` layer).
"""

from __future__ import annotations

from tilesparse.ir.graph import Graph, Node, Op
from tilesparse.passes.rewrite import consumers_map

__all__ = ["drop_shifted_slices", "mark_buffer_reuse", "resolve_write_into"]

_NO_BUFFER = (Op.INPUT, Op.FLATTEN, Op.OUTPUT, Op.SLICE, Op.CHANNEL_SHUFFLE)
CHANNEL_AXIS = 1  # slices are channel ranges of an NCHW buffer


def mark_buffer_reuse(g: Graph) -> Graph:
    """Return ``g`` with ``write_into`` on concat operands and ``reuse_input`` on adds (module doc)."""
    readers = consumers_map(g)
    nodes = {n.name: n for n in g}
    for cat in g.of(Op.CONCAT):
        if cat.attrs["axis"] != CHANNEL_AXIS:
            continue
        offset = 0
        for name in cat.inputs:
            p = nodes[name]
            if (p.op not in _NO_BUFFER and cat.inputs.count(name) == 1
                    and [r.name for r in readers[name]] == [cat.name] and "write_into" not in p.attrs):
                nodes[name] = p.with_(attrs={**p.attrs, "write_into": (cat.name, offset)})
            offset += p.out.shape[CHANNEL_AXIS]
    order = {n.name: i for i, n in enumerate(g)}
    for add in g.of(Op.ADD):
        if "write_into" in nodes[add.name].attrs:
            continue
        for name in add.inputs:
            if _can_overwrite(nodes[name], add, readers[name], order):
                nodes[add.name] = nodes[add.name].with_(attrs={**nodes[add.name].attrs, "reuse_input": name})
                break
    return g.replace_nodes(nodes[n.name] for n in g)


def _can_overwrite(p: Node, add: Node, readers: list[Node], order: dict[str, int]) -> bool:
    return (p.op not in _NO_BUFFER and add.inputs.count(p.name) == 1 and p.out.shape == add.out.shape
            and not any(r.op is Op.SLICE for r in readers)  # a slice's readers read p's buffer later
            and "write_into" not in p.attrs and max(order[r.name] for r in readers) == order[add.name])


def resolve_write_into(g: Graph, name: str) -> tuple[str, int]:
    """The buffer ``name`` really lives in and its channel offset there (follows nested concats);
    ``(name, 0)`` if it owns its buffer."""
    offset = 0
    while (w := g.node(name).attrs.get("write_into")) is not None:
        name, off = w
        offset += off
    return name, offset


def drop_shifted_slices(g: Graph) -> Graph:
    """Return ``g`` without the ``write_into`` marks of concat operands whose quantized
    ``input_shifts`` entry is non-zero: such an operand's values must be shifted on the way into
    the concat, which writing straight into the slice cannot do (module doc)."""
    drop: set[str] = set()
    for cat in g.of(Op.CONCAT):
        for name, s in zip(cat.inputs, cat.attrs.get("input_shifts", ()), strict=False):
            w = g.node(name).attrs.get("write_into")
            if s and w is not None and w[0] == cat.name:
                drop.add(name)
    if not drop:
        return g
    return g.replace_nodes(
        n.with_(attrs={k: v for k, v in n.attrs.items() if k != "write_into"}) if n.name in drop else n
        for n in g)
