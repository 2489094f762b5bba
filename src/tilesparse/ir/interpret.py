"""Float execution of an IR graph with PyTorch ops — the reference every pass is checked against
and the source of calibration statistics for quantization."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from tilesparse.ir.graph import Graph, Node, Op, shuffle_source
from tilesparse.ir.lut import apply_lut

__all__ = ["run_float", "apply_activation"]


def apply_activation(x: torch.Tensor, act: str | None) -> torch.Tensor:
    if act is None:
        return x
    if act == "relu":
        return F.relu(x)
    if act == "relu6":
        return F.relu6(x)
    raise ValueError(f"unknown activation {act!r}")


def _t(g: Graph, n: Node, name: str, dtype: torch.dtype) -> torch.Tensor | None:
    a = g.params.get(f"{n.name}.{name}")
    return None if a is None else torch.from_numpy(np.asarray(a)).to(dtype)


def _conv(g: Graph, n: Node, xs: list[torch.Tensor]) -> torch.Tensor:
    a, x = n.attrs, xs[0]
    w = torch.from_numpy(np.asarray(g.param(n.name, "weight"))).to(x.dtype)
    y = F.conv2d(x, w, _t(g, n, "bias", x.dtype), a["stride"], a["padding"], a["dilation"], a["groups"])
    return apply_activation(y, a.get("activation"))


def _linear(g: Graph, n: Node, xs: list[torch.Tensor]) -> torch.Tensor:
    w = torch.from_numpy(np.asarray(g.param(n.name, "weight"))).to(xs[0].dtype)
    y = F.linear(xs[0], w, _t(g, n, "bias", xs[0].dtype))
    return apply_activation(y, n.attrs.get("activation"))


def _bn(g: Graph, n: Node, xs: list[torch.Tensor]) -> torch.Tensor:
    d = xs[0].dtype
    return F.batch_norm(xs[0], _t(g, n, "running_mean", d), _t(g, n, "running_var", d),
                        _t(g, n, "weight", d), _t(g, n, "bias", d), False, 0.0, n.attrs["eps"])


def _maxpool(g: Graph, n: Node, xs: list[torch.Tensor]) -> torch.Tensor:
    a = n.attrs
    return F.max_pool2d(xs[0], a["kernel"], a["stride"], a["padding"], a["dilation"], a["ceil_mode"])


def _avgpool(g: Graph, n: Node, xs: list[torch.Tensor]) -> torch.Tensor:
    a = n.attrs
    return F.avg_pool2d(xs[0], a["kernel"], a["stride"], a["padding"], a["ceil_mode"],
                        a["count_include_pad"])


_RUN: dict[Op, Callable[[Graph, Node, list[torch.Tensor]], torch.Tensor]] = {
    Op.CONV2D: _conv,
    Op.LINEAR: _linear,
    Op.BATCHNORM: _bn,
    Op.RELU: lambda g, n, xs: F.relu(xs[0]),
    Op.RELU6: lambda g, n, xs: F.relu6(xs[0]),
    Op.LUT: lambda g, n, xs: apply_lut(n.attrs["fn"], xs[0]),
    Op.MAXPOOL: _maxpool,
    Op.AVGPOOL: _avgpool,
    Op.ADAPTIVE_AVGPOOL: lambda g, n, xs: F.adaptive_avg_pool2d(xs[0], n.attrs["output_size"]),
    Op.ADD: lambda g, n, xs: apply_activation(xs[0] + xs[1], n.attrs.get("activation")),
    Op.MUL: lambda g, n, xs: xs[0] * xs[1],
    Op.CONCAT: lambda g, n, xs: torch.cat(xs, n.attrs["axis"]),
    Op.FLATTEN: lambda g, n, xs: xs[0].reshape((xs[0].shape[0], *n.out.shape[1:])),
    Op.SLICE: lambda g, n, xs: xs[0][:, n.attrs["start"]:n.attrs["stop"]],
    Op.CHANNEL_SHUFFLE: lambda g, n, xs: xs[0][:, shuffle_source(xs[0].shape[1], n.attrs["groups"])],
    Op.OUTPUT: lambda g, n, xs: xs[0],
}


@torch.no_grad()
def run_float(
    g: Graph, x: torch.Tensor | np.ndarray, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """Run the float graph on input ``x``; return every node's output (node name → tensor).

    ``x`` may hold a batch of several inputs (the graph's own batch size is 1): every shape but the
    batch dimension comes from the graph.
    """
    x = torch.as_tensor(np.asarray(x) if isinstance(x, np.ndarray) else x).to(dtype)
    outs: dict[str, torch.Tensor] = {}
    for n in g:
        if n.op is Op.INPUT:
            outs[n.name] = x.reshape((-1, *n.out.shape[1:]))
        else:
            outs[n.name] = _RUN[n.op](g, n, [outs[i] for i in n.inputs])
    return outs
