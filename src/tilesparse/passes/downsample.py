"""Fuse a subsampling op into a neighbouring conv as a stride (the paper's "downsample fused into the
next conv as a stride").

A *subsampler* is a max or average pool with kernel 1×1, padding 0 and stride s: it keeps every s-th
row and column. Two rewrites are exact and applied:

1. conv (any kernel, stride c, padding p) → subsampler(s), the subsampler its only reader:
   the conv gets stride c·s (output i of the pool is conv output i·s, which reads input i·s·c − p);
2. subsampler(s) → 1×1 convs with stride 1 and padding 0, all of its readers being such convs:
   each conv reads the pool's input with stride s, the pool disappears.

Nothing else is fused: a k×k (k > 1) conv after a subsampler would need dilation s, and a pool with a
real window (e.g. ResNet-D's 2×2 average pool) averages, it does not subsample. Output shapes are
re-checked, so a rewrite that would change a shape is skipped.
"""

from __future__ import annotations

from tilesparse.ir.graph import Graph, Node, Op
from tilesparse.passes.rewrite import bypass, consumers_map
from tilesparse.passes.shapes import infer_shape

__all__ = ["fuse_downsample"]

_UNIT = (1, 1)
_ZERO = (0, 0)


def _subsample_stride(n: Node) -> tuple[int, int] | None:
    a = n.attrs
    if n.op in (Op.MAXPOOL, Op.AVGPOOL) and a["kernel"] == _UNIT and a["padding"] == _ZERO:
        return (int(a["stride"][0]), int(a["stride"][1]))
    return None


def _is_plain_1x1(n: Node) -> bool:
    a = n.attrs
    return n.op is Op.CONV2D and (a["kernel"], a["stride"], a["padding"]) == (_UNIT, _UNIT, _ZERO)


def fuse_downsample(g: Graph) -> Graph:
    """Return ``g`` with subsamplers fused into the adjacent conv's stride where exact (module doc)."""
    readers = consumers_map(g)
    nodes = {n.name: n for n in g}
    removed: dict[str, str] = {}
    shapes = {n.name: n.out.shape for n in g}
    for pool in g.of(Op.MAXPOOL, Op.AVGPOOL):
        s = _subsample_stride(pool)
        if s is None or s == _UNIT:
            continue
        prod, outs = nodes[pool.inputs[0]], readers[pool.name]
        if prod.op is Op.CONV2D and len(readers[prod.name]) == 1:
            stride = tuple(c * k for c, k in zip(prod.attrs["stride"], s, strict=True))
            new = prod.with_(attrs={**prod.attrs, "stride": stride}, out=pool.out)
            if _same_shape(new, shapes, g, pool.out.shape):
                nodes[prod.name], removed[pool.name] = new, prod.name
        elif outs and all(_is_plain_1x1(nodes[c.name]) for c in outs):
            news = {c.name: nodes[c.name].with_(
                attrs={**nodes[c.name].attrs, "stride": s},
                inputs=tuple(pool.inputs[0] if i == pool.name else i for i in c.inputs)) for c in outs}
            if all(_same_shape(n, shapes, g, n.out.shape) for n in news.values()):
                nodes.update(news)
                removed[pool.name] = pool.inputs[0]
    return g.replace_nodes(bypass([nodes[n.name] for n in g], removed))


def _same_shape(n: Node, shapes: dict[str, tuple[int, ...]], g: Graph, want: tuple[int, ...]) -> bool:
    return tuple(infer_shape(n, [shapes[i] for i in n.inputs], g.params)) == tuple(want)
