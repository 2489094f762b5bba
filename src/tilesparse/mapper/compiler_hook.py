"""Let the compiler take its per-layer sub-volumes from the mapper instead of its heuristic.

>>> from tilesparse.frontend import build_graph                       # doctest: +SKIP
>>> from tilesparse.compiler.pipeline import compile_graph            # doctest: +SKIP
>>> g = build_graph("resnet18")                                       # doctest: +SKIP
>>> prog = compile_graph(g, "4x4", chooser=mapper_chooser(g, "4x4"))  # doctest: +SKIP

Every conv2d / linear node is mapped on the AIE2 preset derived from the same array description,
with 32-bit outputs at the core (the compiler keeps int32 accumulators there), so the core-level
tile (K x C x P x Q extents) becomes the ``SubVolume(oc, ci, h, w)``. It is rounded to the
compiler's granularity (whole block rows / columns) and shrunk until the compiler's own ``fits``
accepts it; a layer whose tile cannot be made to fit falls back to the heuristic (``None``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tilesparse.costmodel.arch import aie2_arch
from tilesparse.costmodel.mapping import Mapping
from tilesparse.costmodel.problem import DIMS, Problem
from tilesparse.ir.graph import Graph, Node, Op

__all__ = ["MapperChooser", "mapper_chooser"]

ACC_BITS = 32  # int32 accumulators per output element in the core's output buffer


@dataclass
class MapperChooser:
    """A ``chooser(node, hw)`` for ``compile_graph``; ``fallbacks`` lists layers left to the heuristic."""

    subvolumes: dict[str, object]
    mappings: dict[str, Mapping]
    fallbacks: list[str] = field(default_factory=list)

    def __call__(self, node: object, hw: object):
        name = getattr(node, "name", None)
        return self.subvolumes.get(name) if name is not None else None


def mapper_chooser(graph: Graph, hw: object = "4x4", *, mapper: str = "genetic", budget: int = 3000,
                   objective: str = "latency", seed: int = 0, progress: bool = False) -> MapperChooser:
    """Map every conv2d / linear node of ``graph`` and turn the core-level tiles into sub-volumes."""
    from tilesparse.hw import load_array
    from tilesparse.mapper import map_network

    hwc = load_array(hw)  # type: ignore[arg-type]
    arch = aie2_arch(hwc)
    nodes = graph.of(Op.CONV2D, Op.LINEAR)
    problems = []
    for n in nodes:
        p = Problem.from_node(n, in_shape=graph.node(n.inputs[0]).out.shape)
        problems.append(Problem(p.bounds, p.stride, p.dilation, (8, 8, ACC_BITS), p.name, p.kind))
    results = map_network(problems, arch, mapper=mapper, budget=budget, objective=objective, seed=seed,
                          progress=progress)
    out = MapperChooser({}, {})
    for n, r in zip(nodes, results, strict=True):
        out.mappings[n.name] = r.mapping
        sub = _subvolume(graph, n, r.mapping, hwc)
        if sub is None:
            out.fallbacks.append(n.name)
        else:
            out.subvolumes[n.name] = sub
    return out


def _core_extents(m: Mapping) -> dict[str, int]:
    return {d: m.temporal[0][i] * m.spatial[0][i] for i, d in enumerate(DIMS)}


def _subvolume(graph: Graph, node: Node, m: Mapping, hw):
    """The mapping's core tile as a SubVolume the compiler accepts, or None."""
    from tilesparse.compiler.layers import layer_spec
    from tilesparse.compiler.partition import SubVolume, fits

    spec = layer_spec(node, graph)
    ext = _core_extents(m)
    unit = spec.block[0] if spec.kind == "conv" else hw.core.matmul_shape[2]
    oc = max(unit, ext["K"] * ext["G"] // unit * unit)
    ci = ext["C"] * ext["G"]
    if ci < spec.ci and spec.kind == "conv" and spec.groups == 1:
        ci = max(spec.block[1], ci // spec.block[1] * spec.block[1])
    h, w = ext["P"], ext["Q"]
    kh, kw = spec.kernel if spec.kind == "conv" else (1, 1)
    while True:
        sub = SubVolume(int(oc), int(ci), int(h), int(w))
        chunk = _chunk_bound(spec, min(oc, spec.co), min(ci, spec.ci), kh * kw)
        if not fits(spec, hw, sub, chunk, 1):
            return sub
        if h * w > 1:  # shrink the output tile first, then the channels
            h, w = (max(1, h // 2), w) if h >= w else (h, max(1, w // 2))
        elif ci > spec.block[1] and ci // 2 % spec.block[1] == 0:
            ci //= 2
        elif oc > unit and oc // 2 % unit == 0:
            oc //= 2
        else:
            return None


BIAS_BYTES = 4  # int32 bias per output channel, packed with each weight chunk


def _chunk_bound(spec, oc: int, ci: int, taps: int) -> int:
    """Upper bound of a packed weight chunk: dense blocks + the block bitmap + the bias."""
    bo, bi = spec.block
    bitmap = -(-(-(-oc // bo) * -(-ci // bi)) // 8)
    return oc * ci * taps + bitmap + oc * BIAS_BYTES
