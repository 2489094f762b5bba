"""Reorder a conv's output channels so that every run of its block rows keeps about the same blocks.

The compiler gives each core contiguous output channels and cuts them into contiguous chunks; the
cores run in lockstep, so a step lasts as long as the core with the most kept blocks in it (COMP)
or the row with the largest weight chunk (LOADWM halts the cores). A random block mask makes
neighbouring block rows unequal. Reordering the producer's output channels — and the input
channels of the convs that read them — changes no value of the network, only which channels
sit together. ``balance_order`` interleaves heavy and light block rows so that each prefix of
the order keeps, per block column, as close as possible to its share of the kept blocks: then
any contiguous run (a core's range, a chunk, an input-channel chunk of it) holds its share.

A conv is reordered only when its output reaches nothing but convs that read all its channels
(``groups = 1``, blocks as tall as its blocks are wide), through channel-wise pools or
activations: an add, a concat, a flatten or a graph output would see the new order.
"""

from __future__ import annotations

import numpy as np

from tilesparse.ir.graph import Graph, Node, Op

__all__ = ["balance_channels", "balance_order", "prefix_gap", "reorder_channels", "reorderable"]

_PASS_THROUGH = (Op.MAXPOOL, Op.AVGPOOL, Op.ADAPTIVE_AVGPOOL, Op.RELU, Op.RELU6, Op.LUT)


def prefix_gap(mask: np.ndarray, order: np.ndarray) -> float:
    """The largest deviation, over the prefixes of ``order`` and the block columns, of the kept
    count from its share: max over i, j of |Σ_{t<=i} mask[order[t], j] − (i + 1) · mean_j|.

    >>> prefix_gap(np.array([[1, 1], [1, 1], [0, 0], [0, 0]]), np.array([0, 1, 2, 3]))
    1.0
    """
    m = np.asarray(mask, dtype=np.float64)[np.asarray(order)]
    n = len(m)
    # in units of 1/n, so that every term is an integer and equal gaps compare equal exactly
    dev = n * np.cumsum(m, axis=0) - np.arange(1, n + 1)[:, None] * m.sum(axis=0)
    return float(np.abs(dev).max(initial=0.0)) / max(n, 1)


def _greedy_order(m: np.ndarray) -> np.ndarray:
    """Greedily, the row that brings the running kept count per block column closest (in squared
    distance) to its share; ties: the lowest index, so a uniform mask keeps its order."""
    n = len(m)
    mean = m.mean(axis=0)
    norms = (m * m).sum(axis=1)
    cum = np.zeros(m.shape[1])
    order = np.empty(n, np.int64)
    for i in range(n):
        # |cum + m_r - target|^2 less the part common to every r: one matrix-vector product
        gap = 2 * (m @ (cum - (i + 1) * mean)) + norms
        gap[order[:i]] = np.inf
        r = int(gap.argmin())
        order[i] = r
        cum += m[r]
    return order


def balance_order(mask: np.ndarray) -> np.ndarray:
    """An order of ``mask``'s rows (block rows) whose prefix sums track the mean row.

    The greedy order (``_greedy_order``), unless the stored order has a strictly smaller
    ``prefix_gap``: each greedy step is the best next step, but a myopic one, and on a few small
    masks (about 1 in 1 000 random ones under 12 rows) it ends further from the mean than the
    order it started from. Guarantees: a permutation; ``prefix_gap`` never above the stored
    order's; with one block column, at most 1/2 (the nearest integer to every prefix's share).

    >>> balance_order(np.array([[1, 1], [1, 1], [0, 0], [0, 0]])).tolist()  # alternate full and empty
    [0, 2, 1, 3]
    """
    m = np.asarray(mask, dtype=np.float64)
    order = _greedy_order(m)
    stored = np.arange(len(m))
    return stored if prefix_gap(m, stored) < prefix_gap(m, order) else order


def _readers(g: Graph, node: Node, bo: int) -> tuple[list[Node], list[Node]] | None:
    """(convs that read ``node``'s channels, pass-through nodes on the way), or None if some
    reader would see the new channel order."""
    convs, via, todo = [], [], [node.name]
    while todo:
        for c in g.consumers(todo.pop()):
            if "write_into" in c.attrs or "reuse_input" in c.attrs:
                return None
            if (c.op is Op.CONV2D and int(c.attrs.get("groups", 1)) == 1 and len(c.inputs) == 1
                    and tuple(c.attrs.get("block", (0, 0)))[1] == bo):
                convs.append(c)
            elif c.op in _PASS_THROUGH and len(c.inputs) == 1:
                via.append(c)
                todo.append(c.name)
            else:
                return None
    return (convs, via) if convs else None


def reorderable(g: Graph, node: Node) -> tuple[list[Node], list[Node]] | None:
    """(convs that read ``node``'s channels, pass-through nodes on the way) if ``node`` is a sparse
    conv whose output channels may be reordered (module doc), else None."""
    mask = g.params.get(f"{node.name}.mask")
    w = g.params.get(f"{node.name}.weight")
    bo = tuple(node.attrs.get("block", (0, 0)))[0]
    if (node.op is not Op.CONV2D or mask is None or w is None or mask.all()
            or int(node.attrs.get("groups", 1)) != 1 or "write_into" in node.attrs
            or not bo or w.shape[0] % bo or len(mask) * bo != w.shape[0]):
        return None
    return _readers(g, node, bo)


def reorder_channels(g: Graph, node: Node, rows: np.ndarray, readers: tuple[list[Node], list[Node]],
                     orders: dict[str, np.ndarray]) -> Graph:
    """``g`` with ``node``'s block rows in the order ``rows`` (stored block row i holds block row
    ``rows[i]``): its weight, bias, mask rows and per-channel parameters, and the input channels
    of the ``readers`` (``reorderable``). ``orders`` (node -> stored channel c holds original
    channel ``order[c]``) is updated in place for the node and the pass-through nodes after it."""
    params = dict(g.params)
    co = params[f"{node.name}.weight"].shape[0]
    bo = co // len(params[f"{node.name}.mask"])
    ch = (np.asarray(rows)[:, None] * bo + np.arange(bo)[None, :]).ravel()
    for key in [k for k in params if k.startswith(f"{node.name}.")]:
        p = params[key]
        if key.endswith(".mask"):
            params[key] = p[rows]
        elif np.ndim(p) and len(p) == co:  # weight, bias, per-channel exponents and shifts
            params[key] = p[ch]
    convs, via = readers
    for c in convs:
        params[f"{c.name}.weight"] = params[f"{c.name}.weight"][:, ch]
        if f"{c.name}.mask" in params:
            params[f"{c.name}.mask"] = params[f"{c.name}.mask"][:, rows]
    for m in [node, *via]:
        orders[m.name] = orders[m.name][ch] if m.name in orders else ch
    return g.replace_nodes(list(g.nodes), params)


def balance_channels(g: Graph) -> tuple[Graph, dict[str, np.ndarray]]:
    """``g`` with the output channels of every eligible sparse conv reordered (module doc), and
    per reordered node (the conv and the pools / activations after it) its channel order:
    stored channel c holds the original channel ``order[c]``. Values are unchanged."""
    orders: dict[str, np.ndarray] = {}
    for n in list(g.of(Op.CONV2D)):
        readers = reorderable(g, n)
        if readers is None:
            continue
        rows = balance_order(g.params[f"{n.name}.mask"])
        if not np.array_equal(rows, np.arange(len(rows))):
            g = reorder_channels(g, n, rows, readers, orders)
    return g, orders
