"""Layers of a network as cost-model problems: from the IR graph (the front door,
``tilesparse.build``), or, if the front end is unavailable, from forward hooks on the module's
Conv2d / Linear layers. Sparse layers carry the graph's actual block masks (``mask_specs``), or,
for a model trained to N:M or HSS, the pattern's format and rate with each layer's measured
density (``pattern_specs``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from tilesparse.costmodel.model import SparseSpec
from tilesparse.costmodel.problem import Problem
from tilesparse.ir.graph import Graph, Op

__all__ = ["graph_problems", "mask_specs", "network_build", "network_graph", "network_problems", "pattern_specs"]


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
    built = network_build(source, input_shape, sparsity=sparsity, weights=weights, block=block)
    return built.graph if built is not None else None


def network_build(source: str, input_shape: Sequence[int] | None = None, *, sparsity: float | None = None,
                  weights: str | None = None, block: str | tuple[int, int] | None = None) -> Any:
    """``network_graph``'s ``tilesparse.build.Built`` (the graph and the pattern its weights follow)."""
    try:
        from tilesparse.build import build_graph_from
    except ImportError:
        return None
    return build_graph_from(source, weights=weights, sparsity=sparsity, block=block, input_shape=input_shape,
                            quantized=False)


def pattern_specs(graph: Graph, problems: Sequence[Problem], pattern: str, *, hw: object = None,
                  action: str = "skip") -> list[SparseSpec | None]:
    """Per conv2d / linear node (``problems`` in the same order): a layer whose non-zero weights obey
    ``pattern`` (an N:M or HSS spec, e.g. a checkpoint's) is priced in the pattern's format and rate
    (``costmodel.pattern.pattern_terms``) with its measured density — the weights' actual non-zero
    mask (``Actual``), and for a hierarchy the MACs performed from its measured kept-block fraction
    instead of the nominal one; any other sparsifiable layer as ``mask_specs`` prices it (its
    all-zero blocks); None for the layers never sparsified."""
    from tilesparse.costmodel.density import Actual
    from tilesparse.costmodel.pattern import pattern_terms
    from tilesparse.patterns import Hierarchical, parse_pattern

    pat = parse_pattern(pattern)
    priced = _filled(pat)
    blocks = mask_specs(graph, action=action)
    out: list[SparseSpec | None] = []
    for n, prob, fallback in zip(graph.of(Op.CONV2D, Op.LINEAR), problems, blocks, strict=True):
        w = np.asarray(graph.param(n.name, "weight"))
        groups = int(n.attrs.get("groups", 1))
        keep = w != 0
        if fallback is None or pat.eligible(w.shape, groups) is not None or pat.check(
                torch.from_numpy(keep), w.shape, groups):
            out.append(fallback)
            continue
        term = pattern_terms(prob, priced.spec(), hw=hw)[0]
        actual = Actual(keep, name=n.name)
        frac = term.spec.mac_fraction
        if isinstance(priced, Hierarchical) and frac is not None:  # kept blocks measured, the rate unchanged
            top = priced.patterns[0]
            nominal = 1.0 - (getattr(top, "sparsity", None) or 0.0)
            bo, bi = getattr(top, "out", 8), getattr(top, "in_", 8)
            frac = frac / nominal * (1.0 - float(actual.prob_empty(bo, bi)))
        out.append(replace(term.spec, density={"W": actual}, mac_fraction=frac))
    return out


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


def _filled(pat: Any) -> Any:
    """``pat`` with a free level filled (a checkpoint records ``8x8/2:4`` and its sparsity apart):
    any legal value, since the measured kept fraction replaces the nominal one."""
    if not pat.free_levels():
        return pat
    from tilesparse.errors import ConfigError

    for s in FILL_SPARSITIES:
        try:
            return pat.with_sparsity(s)
        except ConfigError:
            continue
    return pat.with_sparsity(FILL_SPARSITIES[-1])  # the error names the pattern


FILL_SPARSITIES = (0.5, 0.75, 0.875)  # tried in turn to fill a free level (N:M levels fix the lower bound)
