"""Layers of a network as cost-model problems: from the IR graph (the front door,
``tilesparse.build``), or, if the front end is unavailable, from forward hooks on the module's
Conv2d / Linear layers. Sparse layers carry the graph's actual block masks (``mask_specs``)."""

from __future__ import annotations

from collections.abc import Sequence

from tilesparse.costmodel.model import SparseSpec
from tilesparse.costmodel.problem import Problem
from tilesparse.ir.graph import Graph, Op

__all__ = ["graph_problems", "mask_specs", "network_graph", "network_problems"]


def graph_problems(graph: Graph) -> list[Problem]:
    """One problem per conv2d / linear node, in schedule order."""
    out = []
    for n in graph.of(Op.CONV2D, Op.LINEAR):
        in_shape = graph.node(n.inputs[0]).out.shape
        out.append(Problem.from_node(n, in_shape=in_shape))
    return out


def network_graph(source: str, input_shape: Sequence[int] | None = None, *, sparsity: float | None = None,
                  weights: str | None = None, block: str | tuple[int, int] | None = None) -> Graph | None:
    """The float IR graph of a model source (zoo name, checkpoint, file.py:factory, .pt2) through
    the front door (``tilesparse.build``), with its block masks (``sparsity``: one-shot lowest-L2
    pruning, as the compiler sees it); None without the front end."""
    try:
        from tilesparse.build import build_graph_from
    except ImportError:
        return None
    return build_graph_from(source, weights=weights, sparsity=sparsity, block=block, input_shape=input_shape,
                            quantized=False).graph


def network_problems(name: str, input_shape: Sequence[int] | None = None) -> list[Problem]:
    """Problems of a network by model source (random weights, nothing downloaded)."""
    g = network_graph(name, input_shape)
    return graph_problems(g) if g is not None else _hooked_problems(name, input_shape)


def mask_specs(graph: Graph, *, fmt: str = "block_index", action: str = "skip") -> list[SparseSpec | None]:
    """Per conv2d / linear node: the graph's actual block mask (from pruning or a checkpoint) as a
    sparse spec with ``fmt`` and ``action``; None for layers never sparsified (the first layer,
    batch-norm convs)."""
    from tilesparse.costmodel.density import Actual
    from tilesparse.costmodel.formats import make_format
    from tilesparse.passes.masks import sparsifiable_layers

    prunable = set(sparsifiable_layers(graph))
    out: list[SparseSpec | None] = []
    for n in graph.of(Op.CONV2D, Op.LINEAR):
        if n.name not in prunable:
            out.append(None)
            continue
        shape = tuple(graph.param(n.name, "weight").shape)
        block = tuple(n.attrs.get("block", (8, 8)))
        keep = graph.param(n.name, "mask")
        mask = Actual.from_block_mask(keep, shape, block, int(n.attrs.get("groups", 1)), name=n.name)
        f = make_format(fmt, bo=block[0], bi=block[1]) if fmt == "block_index" else make_format(fmt)
        out.append(SparseSpec(density={"W": mask}, formats={"W": f}, action=action))  # type: ignore[arg-type]
    return out


def _hooked_problems(name: str, input_shape: Sequence[int] | None) -> list[Problem]:
    import torch
    from torch import nn

    from tilesparse.models.zoo import INPUT_SHAPES, get_model

    model = get_model(name).eval()
    shape = tuple(input_shape) if input_shape else (1, *INPUT_SHAPES.get(name, (3, 224, 224)))
    found: list[Problem] = []

    def hook(mod, inp, out, path):
        x = inp[0]
        if isinstance(mod, nn.Conv2d):
            found.append(Problem.conv(
                k=mod.out_channels, c=mod.in_channels, p=out.shape[2], q=out.shape[3],
                r=mod.kernel_size[0], s=mod.kernel_size[1], n=x.shape[0], groups=mod.groups,
                stride=mod.stride, dilation=mod.dilation, name=path))
        else:
            found.append(Problem.matmul(x.shape[0], mod.in_features, mod.out_features, name=path))

    handles = [m.register_forward_hook(lambda mod, i, o, p=path: hook(mod, i, o, p))
               for path, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(torch.zeros(shape))
    for h in handles:
        h.remove()
    return found
