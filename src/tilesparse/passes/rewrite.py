"""Small graph-editing helpers shared by the passes (graphs are immutable: these return new ones)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from tilesparse.ir.graph import Graph, Node

__all__ = ["consumers_map", "bypass", "drop_params"]


def consumers_map(g: Graph) -> dict[str, list[Node]]:
    """Node name → the nodes reading it, in schedule order."""
    out: dict[str, list[Node]] = {n.name: [] for n in g}
    for n in g:
        for i in dict.fromkeys(n.inputs):
            out[i].append(n)
    return out


def bypass(nodes: Iterable[Node], removed: Mapping[str, str]) -> list[Node]:
    """Drop the nodes in ``removed`` and point their readers at the replacement name."""

    def resolve(name: str) -> str:
        while name in removed:
            name = removed[name]
        return name

    return [n.with_(inputs=tuple(resolve(i) for i in n.inputs)) for n in nodes if n.name not in removed]


def drop_params(params: Mapping[str, np.ndarray], nodes: Iterable[str]) -> dict[str, np.ndarray]:
    """The parameter table without the parameters of ``nodes``."""
    gone = set(nodes)
    return {k: v for k, v in params.items() if k.rsplit(".", 1)[0] not in gone}
