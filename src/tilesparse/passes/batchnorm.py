"""Fold batch-norm into the convolution that produces its input (inference form).

y = γ (x − μ) / √(σ² + ε) + β with x = W * in + b becomes a conv with
W' = W · s and b' = (b − μ) · s + β, where s = γ / √(σ² + ε) per output channel.
A batch-norm whose input is not a conv read only by it becomes a depthwise 1×1 conv (groups = C,
weight s, bias β − μ s) — the paper's "batch-norm as 1×1 conv" — so no batch-norm survives lowering.
Arithmetic is float64, stored back as float32.
"""

from __future__ import annotations

import numpy as np

from tilesparse.ir.graph import Graph, Node, Op
from tilesparse.passes.rewrite import bypass, consumers_map, drop_params

__all__ = ["fold_batchnorm"]


def _scale_shift(g: Graph, bn: Node) -> tuple[np.ndarray, np.ndarray]:
    p = {k: g.param(bn.name, k).astype(np.float64) for k in ("running_mean", "running_var", "weight", "bias")}
    s = p["weight"] / np.sqrt(p["running_var"] + bn.attrs["eps"])
    return s, p["bias"] - p["running_mean"] * s


def fold_batchnorm(g: Graph) -> Graph:
    """Return ``g`` with every batch-norm folded into its conv or turned into a depthwise 1×1 conv."""
    readers = consumers_map(g)
    nodes = {n.name: n for n in g}
    removed: dict[str, str] = {}
    new_params: dict[str, np.ndarray] = {}
    for bn in g.of(Op.BATCHNORM):
        s, t = _scale_shift(g, bn)
        prod = nodes[bn.inputs[0]]
        if prod.op is Op.CONV2D and len(readers[prod.name]) == 1 and prod.attrs["activation"] is None:
            # the producer's current weights: a batch-norm turned into a conv above (BN -> BN) has
            # them in new_params, while g.params still holds its batch-norm γ / β under those names
            cur = {**g.params, **new_params}
            w = cur[f"{prod.name}.weight"].astype(np.float64)
            b = cur.get(f"{prod.name}.bias", np.zeros(w.shape[0])).astype(np.float64)
            new_params[f"{prod.name}.weight"] = (w * s[:, None, None, None]).astype(np.float32)
            new_params[f"{prod.name}.bias"] = (b * s + t).astype(np.float32)
            removed[bn.name] = prod.name
        else:  # keep the node's name and place; it becomes a per-channel affine = depthwise 1x1 conv
            nodes[bn.name] = bn.with_(op=Op.CONV2D, attrs=_DEPTHWISE_1X1 | {"groups": bn.out.shape[1]})
            new_params[f"{bn.name}.weight"] = s.reshape(-1, 1, 1, 1).astype(np.float32)
            new_params[f"{bn.name}.bias"] = t.astype(np.float32)
    params = drop_params(g.params, [b.name for b in g.of(Op.BATCHNORM)]) | new_params
    return g.replace_nodes(bypass([nodes[n.name] for n in g], removed), params)


_DEPTHWISE_1X1 = {"kernel": (1, 1), "stride": (1, 1), "padding": (0, 0), "dilation": (1, 1),
                  "activation": None, "from_batchnorm": True}
