"""In-place tensor ops of a traced module made explicit (functionalised), or refused.

torch.fx records ``z = y.relu_()`` as a node reading ``y``, but every later reader of ``y`` still
names ``y``: in eager PyTorch they read the *changed* tensor. The IR has values, not memory, so
:func:`functionalize` points every reader that comes after an in-place op — of the changed tensor
or of an alias of it (``nn.Identity``, ``Dropout``, ``contiguous``, an earlier in-place result) —
at the in-place node instead. The in-place node then is an ordinary value (``relu_`` is a relu).

Refused with one line naming the node and the module: an in-place op on the graph input (the
program cannot change its caller's tensor), and one whose change is read later through a view of
another shape (``y.flatten(1)`` taken before ``y.relu_()``): the view would need the change
reshaped. In-place ops the IR has no op for (``mul_``, ``clamp_``) are functionalised too and then
refused by the capture as unsupported ops, by name.

``out += y`` on tensors is traced as ``operator.iadd`` (:class:`InplaceTracer`), so it is
functionalised like ``add_``; plain ``torch.fx`` traces it as an out-of-place add, which is wrong
when ``out`` is read again.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from tilesparse.errors import UnsupportedOpError

__all__ = ["InplaceTracer", "functionalize"]

_INPLACE_OPERATORS = {operator.iadd: "+=", operator.isub: "-=", operator.imul: "*=", operator.itruediv: "/="}
_IDENTITY_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
_VIEW_METHODS = {"view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "contiguous", "detach",
                 "squeeze", "unsqueeze", "expand", "expand_as", "permute", "transpose", "t", "narrow",
                 "select", "unfold", "as_strided", "movedim", "__getitem__"}
_VIEW_FUNCTIONS: set[Any] = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, torch.permute,
                             torch.transpose, torch.narrow, torch.select, torch.detach, operator.getitem,
                             F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout}


class _InplaceProxy(fx.Proxy):
    """A proxy that records ``a += b`` as ``operator.iadd`` (named "add", as fx names an add)."""

    def __iadd__(self, other: Any) -> fx.Proxy:
        return self.tracer.create_proxy("call_function", operator.iadd, (self, other), {}, name="add")


class InplaceTracer(fx.Tracer):
    """``torch.fx.Tracer`` that keeps ``+=`` in place (see the module doc)."""

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _InplaceProxy(node, self)


def functionalize(gm: fx.GraphModule, name: str, where: Callable[[fx.Node], str]) -> None:
    """Rewrite ``gm``'s graph so no reader depends on an in-place change (module doc), drop the
    nodes that no longer feed the output, and recompile. ``where(node)`` says which module it is in
    (for messages); errors are ``UnsupportedOpError`` naming graph ``name`` and the node."""
    nodes = list(gm.graph.nodes)
    order = {n: i for i, n in enumerate(nodes)}
    root = _alias_roots(gm, nodes)
    members: dict[fx.Node, list[fx.Node]] = {}
    for n in nodes:
        members.setdefault(root[n], []).append(n)
    for n in nodes:
        target = _mutated(gm, n)
        if target is None:
            continue
        what = describe(gm, n)
        for k in [k for k in members[root[target]] if order[k] < order[n]]:  # later aliases read n already
            if k.op == "placeholder":
                raise UnsupportedOpError(f"{name}: node {n.name!r}{where(n)}: in-place {what} modifies the graph "
                                         f"input {k.name!r}; use the out-of-place form")
            for u in [u for u in k.users if u is not n and order[u] > order[n]]:
                if _shape(k) != _shape(target):
                    raise UnsupportedOpError(
                        f"{name}: node {n.name!r}{where(n)}: in-place {what} modifies {target.name!r}, which "
                        f"node {u.name!r} reads again through {k.name!r}, a {_shape(k)} view of it; use the "
                        "out-of-place form")
                u.replace_input_with(k, n)
    gm.graph.eliminate_dead_code()
    gm.recompile()


def describe(gm: fx.GraphModule, n: fx.Node) -> str:
    """How the user wrote an in-place op: ``relu_``, ``+=``, ``ReLU(inplace=True)``."""
    if n.op == "call_module":
        return f"{type(gm.get_submodule(str(n.target))).__name__}(inplace=True)"
    if n.op == "call_function" and n.target in _INPLACE_OPERATORS:
        return _INPLACE_OPERATORS[n.target]
    name = getattr(n.target, "__name__", str(n.target))
    return f"{name}(inplace=True)" if _inplace_arg(n) else str(name)


def _mutated(gm: fx.GraphModule, n: fx.Node) -> fx.Node | None:
    """The tensor node ``n`` changes in place, if any (always its first argument; ``n += 1`` on a
    traced int rebinds, it changes nothing)."""
    first = n.args[0] if n.args else n.kwargs.get("input")
    if not isinstance(first, fx.Node) or _shape(first) is None:
        return None
    if n.op == "call_method":
        t = str(n.target)
        hit = (t.endswith("_") and not t.startswith("_")) or t in ("__iadd__", "__isub__", "__imul__")
    elif n.op == "call_function":
        t = getattr(n.target, "__name__", "")
        hit = n.target in _INPLACE_OPERATORS or (t.endswith("_") and not t.startswith("_")) or (
            n.target not in _VIEW_FUNCTIONS and _inplace_arg(n))
    elif n.op == "call_module":
        mod = gm.get_submodule(str(n.target))
        hit = getattr(mod, "inplace", False) is True and not isinstance(mod, _IDENTITY_MODULES)
    else:
        hit = False
    return first if hit else None


def _inplace_arg(n: fx.Node) -> bool:
    """``F.relu(x, inplace=True)`` / ``F.relu(x, True)``: a function with an ``inplace`` parameter."""
    import inspect

    if n.kwargs.get("inplace") is True:
        return True
    try:
        params = list(inspect.signature(n.target).parameters)  # type: ignore[arg-type]
    except (TypeError, ValueError):  # builtins have no signature
        return False
    i = params.index("inplace") if "inplace" in params else -1
    return 0 <= i < len(n.args) and n.args[i] is True


def _aliases(gm: fx.GraphModule, n: fx.Node) -> bool:
    """Whether ``n``'s result shares memory with its first argument."""
    if n.op == "call_module":
        return isinstance(gm.get_submodule(str(n.target)), (*_IDENTITY_MODULES, nn.Flatten))
    if n.op == "call_method" and str(n.target) in _VIEW_METHODS:
        return True
    return n.op == "call_function" and n.target in _VIEW_FUNCTIONS


def _alias_roots(gm: fx.GraphModule, nodes: list[fx.Node]) -> dict[fx.Node, fx.Node]:
    """Each node's alias class (nodes sharing one tensor's memory), named by its first node."""
    root: dict[fx.Node, fx.Node] = {}
    for n in nodes:
        first = n.args[0] if n.args else None
        shares = isinstance(first, fx.Node) and (_aliases(gm, n) or _mutated(gm, n) is not None)
        root[n] = root[first] if shares else n  # type: ignore[index]
    return root


def _shape(n: fx.Node) -> tuple[int, ...] | None:
    shape = getattr(n.meta.get("tensor_meta"), "shape", None)
    return None if shape is None else tuple(int(d) for d in shape)
