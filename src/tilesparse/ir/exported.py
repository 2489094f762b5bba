"""A ``torch.export`` program as a plain module the capture understands.

``ExportedProgram.module()`` calls ATen ops (``aten.conv2d.default(x, weight, ...)``) on lifted
parameters instead of ``nn.Conv2d`` modules. ``lift_exported`` rewrites that graph: every conv,
linear and batch norm becomes a real module again (named after its parameters, so the layer names
match the original model's), the other ops become the torch functions ``ir.capture_ops`` handles.
"""

from __future__ import annotations

import operator
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import fx, nn

from tilesparse.errors import UnsupportedOpError

__all__ = ["lift_exported"]

aten = torch.ops.aten
_M = TypeVar("_M", bound=nn.Module)
_A = TypeVar("_A", bound=fx.node.Argument)

# ATen op -> (torch function, how to map its arguments)
_FUNCTIONS: dict[Any, Any] = {
    aten.relu.default: torch.relu, aten.relu_.default: torch.relu,
    aten.hardtanh.default: F.hardtanh, aten.hardtanh_.default: F.hardtanh,
    aten.max_pool2d.default: F.max_pool2d, aten.avg_pool2d.default: F.avg_pool2d,
    aten.adaptive_avg_pool2d.default: F.adaptive_avg_pool2d,
    aten.add.Tensor: operator.add, aten.add_.Tensor: operator.add,
    aten.cat.default: torch.cat, aten.concat.default: torch.cat,
    aten.flatten.using_ints: torch.flatten, aten.view.default: torch.reshape, aten.reshape.default: torch.reshape,
}
_IDENTITY = {aten.dropout.default, aten.dropout_.default, aten.clone.default, aten.contiguous.default}


def _attr(gm: fx.GraphModule, node: Any) -> torch.Tensor | None:
    """The parameter or buffer a ``get_attr`` node reads (None for a missing optional argument)."""
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        return None
    obj: Any = gm
    for part in str(node.target).split("."):
        obj = getattr(obj, part)
    return obj.detach()


def _param(gm: fx.GraphModule, node: Any) -> torch.Tensor:
    """The parameter or buffer a required argument reads; an argument the program computes
    instead (not a ``get_attr``) has no module equivalent."""
    t = _attr(gm, node)
    if t is None:
        raise UnsupportedOpError(f"exported argument {node}: expected a parameter or buffer of the program")
    return t


def _args(args: tuple[Any, ...], defaults: tuple[Any, ...]) -> list[Any]:
    return list(args) + list(defaults[len(args):])


def _conv(gm: fx.GraphModule, args: tuple[Any, ...]) -> nn.Module:
    _, wn, bn, stride, padding, dilation, groups = _args(args, (None, None, None, 1, 0, 1, 1))
    w, b = _param(gm, wn), _attr(gm, bn)
    m = nn.Conv2d(w.shape[1] * groups, w.shape[0], (w.shape[2], w.shape[3]), stride=stride, padding=padding,
                  dilation=dilation, groups=groups, bias=b is not None)
    return _load(m, w, b)


def _linear(gm: fx.GraphModule, args: tuple[Any, ...]) -> nn.Module:
    _, wn, bn = _args(args, (None, None, None))
    w, b = _param(gm, wn), _attr(gm, bn)
    return _load(nn.Linear(w.shape[1], w.shape[0], bias=b is not None), w, b)


@torch.no_grad()
def _batchnorm(gm: fx.GraphModule, args: tuple[Any, ...]) -> nn.Module:
    _, wn, bn, mn, vn, _, _, eps = _args(args, (None,) * 7 + (1e-5,))[:8]
    w, b = _attr(gm, wn), _attr(gm, bn)
    mean, var = _param(gm, mn), _param(gm, vn)
    m = nn.BatchNorm2d(mean.shape[0], eps=float(eps), affine=w is not None)
    m.get_buffer("running_mean").copy_(mean)
    m.get_buffer("running_var").copy_(var)
    return _load(m, w, b) if w is not None else m.eval()


@torch.no_grad()
def _load(m: _M, w: torch.Tensor, b: torch.Tensor | None) -> _M:
    m.get_parameter("weight").copy_(w)
    if b is not None:
        m.get_parameter("bias").copy_(b)
    return m.eval()


def _module_path(n: fx.Node) -> str:
    """The original module of a conv / linear / batch-norm call: the owner of its first parameter
    or buffer (a batch norm without affine parameters has only its running statistics)."""
    for a in n.args[1:]:
        if isinstance(a, fx.Node) and a.op == "get_attr":
            return str(a.target).rpartition(".")[0] or n.name
    return n.name


def _value(env: dict[str, fx.Node], v: fx.Node, name: str) -> fx.Node:
    """The lifted graph's node for ``v``; a ``get_attr`` has none (only the lifted modules read
    parameters)."""
    if v.name not in env:
        raise UnsupportedOpError(f"{name}: exported node {v.name!r} reads parameter {v.target} outside a conv, "
                                 "linear or batch norm; the IR has no such op")
    return env[v.name]


_MODULES = {aten.conv2d.default: _conv, aten.linear.default: _linear, aten.batch_norm.default: _batchnorm}


def lift_exported(gm: fx.GraphModule, name: str = "exported") -> fx.GraphModule:
    """The exported module with modules for its conv / linear / batch-norm calls (module doc)."""
    root = nn.Module()
    graph = fx.Graph()
    env: dict[str, fx.Node] = {}

    def arg(a: _A) -> _A:
        return fx.node.map_arg(a, lambda v: _value(env, v, name))

    for n in gm.graph.nodes:
        if n.op == "placeholder":
            env[n.name] = graph.placeholder(n.name)
        elif n.op == "output":
            out = arg(n.args[0])
            graph.output(out[0] if isinstance(out, (tuple, list)) and len(out) == 1 else out)
        elif n.op in ("get_attr",) or (n.op == "call_module" and n.target == "_guards_fn"):
            continue
        elif n.target in _MODULES:
            path = _module_path(n)
            root.add_module(path.replace(".", "_"), _MODULES[n.target](gm, n.args))
            env[n.name] = graph.call_module(path.replace(".", "_"), (_value(env, n.args[0], name),))
        elif n.target in _IDENTITY:
            env[n.name] = _value(env, n.args[0], name)
        elif n.target in _FUNCTIONS:
            env[n.name] = graph.call_function(_FUNCTIONS[n.target], arg(n.args), arg(n.kwargs))
        else:
            raise UnsupportedOpError(f"{name}: exported op {n.target} (node {n.name!r}) has no tilesparse "
                                     "equivalent; the IR needs conv/linear/bn/relu/pool/add/cat/flatten ops")
    return fx.GraphModule(root, graph, class_name=name)
