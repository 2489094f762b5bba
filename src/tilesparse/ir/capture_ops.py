"""Per-op handlers of :mod:`tilesparse.ir.capture`: one small function per PyTorch op family.

A handler gets an :class:`Emit` (the fx node, its module, bound arguments and propagated shapes) and
returns a :class:`Lowered` (IR op, tensor operands, attrs, params), ``Lowered(None, (x,))`` for an
identity, or ``None`` for a helper that produces no tensor (``x.size(0)`` feeding a ``view``).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torchvision.ops import stochastic_depth

from tilesparse.errors import UnsupportedOpError
from tilesparse.ir.graph import Op

__all__ = ["Emit", "Lowered", "MODULE_OPS", "FUNCTION_OPS", "METHOD_OPS"]

RELU6_MAX = 6.0  # hardtanh(0, 6) is relu6; any other bounds are outside the IR


@dataclass
class Lowered:
    op: Op | None  # None: identity of inputs[0] (or no tensor at all if inputs is empty)
    inputs: tuple[Any, ...] = ()
    attrs: dict[str, Any] = field(default_factory=dict)
    params: dict[str, np.ndarray] = field(default_factory=dict)
    flatten_after: bool = False  # op gives (N, C, 1, 1); a FLATTEN(start_dim=1) after it gives the node's (N, C)


class Emit:
    """What a handler may look at: the fx node, its module, its arguments and shapes."""

    def __init__(
        self, gm: fx.GraphModule, fn: fx.Node, err: Callable[[fx.Node, str], UnsupportedOpError]
    ):
        self.gm, self.fn, self._err = gm, fn, err

    @property
    def module(self) -> nn.Module:
        return self.gm.get_submodule(str(self.fn.target))

    def error(self, msg: str) -> UnsupportedOpError:
        return self._err(self.fn, msg)

    def bind(self, names: Sequence[str], **defaults: Any) -> dict[str, Any]:
        """Map positional + keyword args to ``names`` (like a call signature), filling defaults."""
        if len(self.fn.args) > len(names):
            raise self.error(f"too many positional arguments ({len(self.fn.args)})")
        out = dict(defaults)
        out.update(zip(names, self.fn.args, strict=False))
        for k, v in self.fn.kwargs.items():
            if k not in names:
                raise self.error(f"unsupported keyword argument {k!r}")
            out[k] = v
        missing = [n for n in names if n not in out]
        if missing:
            raise self.error(f"missing argument(s) {missing}")
        return out

    def shape(self, a: Any = None) -> tuple[int, ...]:
        node = self.fn if a is None else a
        meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
        if meta is None or not hasattr(meta, "shape"):
            raise self.error(f"operand {node!r} is not a tensor")
        return tuple(int(d) for d in meta.shape)

    def is_tensor(self, a: Any) -> bool:
        return isinstance(a, fx.Node) and hasattr(a.meta.get("tensor_meta"), "shape")


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    t = tuple(int(x) for x in v)
    return (t[0], t[0]) if len(t) == 1 else (t[0], t[1])


def _np(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().cpu().to(torch.float32).numpy().copy()


# -- modules -------------------------------------------------------------------------------------


def _conv(e: Emit) -> Lowered:
    m = e.module
    assert isinstance(m, nn.Conv2d)
    if m.padding_mode != "zeros":
        raise e.error(f"Conv2d padding_mode={m.padding_mode!r}; only 'zeros' is supported")
    kernel, dil = _pair(m.kernel_size), _pair(m.dilation)
    padding = m.padding
    if isinstance(padding, str):  # 'valid' or 'same' (stride 1): symmetric only for odd extents
        ext = [d * (k - 1) for d, k in zip(dil, kernel, strict=True)]
        if padding == "same" and any(x % 2 for x in ext):
            raise e.error(f"Conv2d padding='same' with even extent {ext} is asymmetric")
        padding = (0, 0) if padding == "valid" else (ext[0] // 2, ext[1] // 2)
    attrs = {"kernel": kernel, "stride": _pair(m.stride), "padding": _pair(padding),
             "dilation": dil, "groups": int(m.groups), "activation": None}
    params = {"weight": _np(m.weight)}
    if m.bias is not None:
        params["bias"] = _np(m.bias)
    return Lowered(Op.CONV2D, (e.fn.args[0],), attrs, params)  # type: ignore[arg-type]


def _linear(e: Emit) -> Lowered:
    m = e.module
    assert isinstance(m, nn.Linear)
    if len(e.shape(e.fn.args[0])) != 2:
        raise e.error(f"Linear on a rank-{len(e.shape(e.fn.args[0]))} tensor; only (N, C) inputs")
    params = {"weight": _np(m.weight)}
    if m.bias is not None:
        params["bias"] = _np(m.bias)
    return Lowered(Op.LINEAR, (e.fn.args[0],), {"activation": None}, params)  # type: ignore[arg-type]


def _batchnorm(e: Emit) -> Lowered:
    m = e.module
    assert isinstance(m, nn.BatchNorm2d)
    if m.running_mean is None or m.running_var is None:
        raise e.error("BatchNorm2d without running statistics (track_running_stats=False)")
    c = m.num_features
    params = {
        "running_mean": _np(m.running_mean), "running_var": _np(m.running_var),
        "weight": _np(m.weight) if m.affine else np.ones(c, np.float32),
        "bias": _np(m.bias) if m.affine else np.zeros(c, np.float32),
    }
    return Lowered(Op.BATCHNORM, (e.fn.args[0],), {"eps": float(m.eps)}, params)  # type: ignore[arg-type]


def _relu6_bounds(e: Emit, lo: float, hi: float) -> Lowered:
    if (lo, hi) != (0.0, RELU6_MAX):
        raise e.error(f"hardtanh({lo}, {hi}); only hardtanh(0, 6) = relu6 is in the IR")
    return Lowered(Op.RELU6, (e.fn.args[0],))


def _hardtanh_module(e: Emit) -> Lowered:
    m = e.module
    return _relu6_bounds(e, float(m.min_val), float(m.max_val))  # type: ignore[arg-type]


def _pool_attrs(e: Emit, kernel: Any, stride: Any, padding: Any) -> dict[str, Any]:
    k = _pair(kernel)
    return {"kernel": k, "stride": _pair(stride) if stride not in (None, []) else k,
            "padding": _pair(padding)}


def _maxpool_from(e: Emit, a: dict[str, Any]) -> Lowered:
    if a["return_indices"]:
        raise e.error("max_pool2d with return_indices=True")
    attrs = _pool_attrs(e, a["kernel_size"], a["stride"], a["padding"])
    attrs.update(dilation=_pair(a["dilation"]), ceil_mode=bool(a["ceil_mode"]))
    return Lowered(Op.MAXPOOL, (a["input"],), attrs)


def _avgpool_from(e: Emit, a: dict[str, Any]) -> Lowered:
    if a["divisor_override"] is not None:
        raise e.error("avg_pool2d with divisor_override")
    attrs = _pool_attrs(e, a["kernel_size"], a["stride"], a["padding"])
    attrs.update(ceil_mode=bool(a["ceil_mode"]), count_include_pad=bool(a["count_include_pad"]))
    return Lowered(Op.AVGPOOL, (a["input"],), attrs)


def _module_args(e: Emit, names: Sequence[str]) -> dict[str, Any]:
    m = e.module
    return {"input": e.fn.args[0], **{n: getattr(m, n) for n in names}}


def _maxpool_module(e: Emit) -> Lowered:
    names = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
    return _maxpool_from(e, _module_args(e, names))


def _avgpool_module(e: Emit) -> Lowered:
    names = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
    return _avgpool_from(e, _module_args(e, names))


def _adaptive_from(e: Emit, x: Any, size: Any) -> Lowered:
    h, w = e.shape(x)[-2:]
    oh, ow = (size, size) if isinstance(size, int) or size is None else tuple(size)
    return Lowered(Op.ADAPTIVE_AVGPOOL, (x,), {"output_size": (oh or h, ow or w)})


def _adaptive_module(e: Emit) -> Lowered:
    return _adaptive_from(e, e.fn.args[0], e.module.output_size)


def _flatten_from(e: Emit, x: Any) -> Lowered:
    """Any flatten/view/reshape whose result is ``x`` with its trailing dims merged into one."""
    src, dst = e.shape(x), e.shape()
    if src == dst:
        return Lowered(None, (x,))
    k = len(dst) - 1
    if k < 1 or dst[:k] != src[:k] or dst[k] != int(np.prod(src[k:])):
        raise e.error(f"reshape {src} -> {dst} is not a flatten of the trailing dimensions")
    return Lowered(Op.FLATTEN, (x,), {"start_dim": k})


def _identity(e: Emit) -> Lowered:
    return Lowered(None, (e.fn.args[0],))


def _lut(fn: str) -> Callable[[Emit], Lowered]:
    """An element-wise function run as an int8 lookup table (``ir.lut``): module, function or method
    (``nn.SiLU()``, ``F.silu(x, inplace=True)``, ``x.sigmoid_()``); in-place forms are
    functionalised before (``ir.inplace``)."""
    def handler(e: Emit) -> Lowered:
        if e.fn.op == "call_module":
            return Lowered(Op.LUT, (e.fn.args[0],), {"fn": fn})
        return Lowered(Op.LUT, (e.bind(("input", "inplace"), inplace=False)["input"],), {"fn": fn})
    return handler


SPATIAL_DIMS = (2, 3)


def _mean(e: Emit) -> Lowered:
    """``x.mean([2, 3])`` / ``torch.mean(x, dim=(2, 3), keepdim=True)``: the global average pool the IR
    already has (plus a flatten without keepdim), so nothing after capture needs to know about it."""
    a = e.bind(("input", "dim", "keepdim", "dtype"), dim=None, keepdim=False, dtype=None)
    x = a["input"]
    rank = len(e.shape(x))
    dims = a["dim"]
    dims = tuple(range(rank)) if dims is None else (dims,) if isinstance(dims, int) else tuple(dims)
    norm = tuple(sorted(int(d) % rank for d in dims)) if rank else ()
    if rank != 4 or norm != SPATIAL_DIMS or a["dtype"] is not None:
        raise e.error(f"mean over dim={a['dim']!r} of a rank-{rank} tensor; only the mean over H×W "
                      "(dim=(2, 3) of an NCHW tensor) is supported")
    return Lowered(Op.ADAPTIVE_AVGPOOL, (x,), {"output_size": (1, 1)}, flatten_after=not a["keepdim"])


MODULE_OPS: dict[type, Callable[[Emit], Lowered | None]] = {
    nn.Conv2d: _conv,
    nn.Linear: _linear,
    nn.BatchNorm2d: _batchnorm,
    nn.ReLU: lambda e: Lowered(Op.RELU, (e.fn.args[0],)),
    nn.ReLU6: lambda e: Lowered(Op.RELU6, (e.fn.args[0],)),
    nn.Hardtanh: _hardtanh_module,
    nn.SiLU: _lut("silu"),
    nn.Sigmoid: _lut("sigmoid"),
    nn.Hardswish: _lut("hardswish"),
    nn.Hardsigmoid: _lut("hardsigmoid"),
    nn.MaxPool2d: _maxpool_module,
    nn.AvgPool2d: _avgpool_module,
    nn.AdaptiveAvgPool2d: _adaptive_module,
    nn.Flatten: lambda e: _flatten_from(e, e.fn.args[0]),
    nn.Dropout: _identity,
    nn.Dropout2d: _identity,
    nn.Identity: _identity,
    nn.ChannelShuffle: lambda e: _channel_shuffle_fn(e),
}

# -- functions and methods -----------------------------------------------------------------------


def _relu_fn(e: Emit) -> Lowered:
    return Lowered(Op.RELU, (e.bind(("input", "inplace"), inplace=False)["input"],))


def _relu6_fn(e: Emit) -> Lowered:
    return Lowered(Op.RELU6, (e.bind(("input", "inplace"), inplace=False)["input"],))


def _hardtanh_fn(e: Emit) -> Lowered:
    a = e.bind(("input", "min_val", "max_val", "inplace"), min_val=-1.0, max_val=1.0, inplace=False)
    return _relu6_bounds(e, float(a["min_val"]), float(a["max_val"]))


def _maxpool_fn(e: Emit) -> Lowered:
    names = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
    a = e.bind(names, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False)
    return _maxpool_from(e, a)


def _avgpool_fn(e: Emit) -> Lowered:
    names = ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
             "divisor_override")
    a = e.bind(names, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None)
    return _avgpool_from(e, a)


def _adaptive_fn(e: Emit) -> Lowered:
    a = e.bind(("input", "output_size"))
    return _adaptive_from(e, a["input"], a["output_size"])


def _add(e: Emit) -> Lowered:
    a = e.bind(("input", "other", "alpha"), alpha=1)
    if a["alpha"] != 1:
        raise e.error(f"add with alpha={a['alpha']}; only alpha=1")
    x, y = a["input"], a["other"]
    if not (e.is_tensor(x) and e.is_tensor(y)):
        raise e.error("add of a tensor and a constant; only tensor + tensor is in the IR")
    if e.shape(x) != e.shape(y):
        raise e.error(f"add with broadcasting {e.shape(x)} + {e.shape(y)}; shapes must match")
    return Lowered(Op.ADD, (x, y), {"activation": None})


def _mul(e: Emit) -> Lowered:
    """``x * y`` of equal shapes, or an (N, C, H, W) map times an (N, C, 1, 1) per-channel scale
    (either order: the map comes first in the node)."""
    a = e.bind(("input", "other"))
    x, y = a["input"], a["other"]
    if not (e.is_tensor(x) and e.is_tensor(y)):
        raise e.error("mul of a tensor and a constant; only tensor * tensor is in the IR")
    sx, sy = tuple(e.shape(x)), tuple(e.shape(y))
    if sx != sy and len(sx) == len(sy) == 4 and sx[2:] == (1, 1) and sy[:2] == sx[:2]:
        x, y, sx, sy = y, x, sy, sx
    if sx != sy and not (len(sx) == len(sy) == 4 and sy[:2] == sx[:2] and sy[2:] == (1, 1)):
        raise e.error(f"mul with broadcasting {sx} * {sy}; shapes must match, or one be (N, C, 1, 1) of the "
                      "other's N, C (a per-channel scale)")
    return Lowered(Op.MUL, (x, y), {})


_AXIS_NAMES = ("batch", "channel", "height", "width")
CHANNEL_AXIS = 1  # the back end writes concat operands into channel slices of one buffer


def _cat(e: Emit) -> Lowered:
    a = e.bind(("tensors", "dim"), dim=0)
    tensors = tuple(a["tensors"])
    rank = len(e.shape())
    axis = int(a["dim"]) % rank
    if axis != CHANNEL_AXIS:
        what = _AXIS_NAMES[axis] if rank == 4 else f"axis {axis} of a rank-{rank} tensor"
        raise e.error(f"torch.cat along dim {a['dim']} ({what}); only channel concatenation (dim=1) is supported")
    return Lowered(Op.CONCAT, tensors, {"axis": axis})


def _flatten_fn(e: Emit) -> Lowered:
    return _flatten_from(e, e.fn.args[0])


def _non_tensor(e: Emit) -> Lowered | None:
    """``x.size(0)``, ``x.shape``, ``shape[0]``: fine as long as they produce no tensor."""
    if e.is_tensor(e.fn):
        raise e.error(f"{e.fn.target} producing a tensor (slicing/indexing is not in the IR)")
    return None


def _dropout_fn(e: Emit) -> Lowered:
    """Identity, when it does not drop: ``training=False`` (``training=self.training`` traced in
    eval mode) or p = 0. Its default, training=True, drops at random even in eval mode."""
    a = e.bind(("input", "p", "training", "inplace"), p=0.5, training=True, inplace=False)
    if a["training"] is not False and a["p"] != 0:
        raise e.error(f"{getattr(e.fn.target, '__name__', 'dropout')} with training={a['training']!r} drops at "
                      "random even in eval mode; pass training=self.training")
    return Lowered(None, (a["input"],))


def _stochastic_depth_fn(e: Emit) -> Lowered:
    """torchvision's ``stochastic_depth`` (efficientnet's residual branches): identity in eval mode
    (``training=False``) or with p = 0, like dropout."""
    a = e.bind(("input", "p", "mode", "training"), training=True)
    if a["training"] is not False and a["p"] != 0:
        raise e.error(f"stochastic_depth with training={a['training']!r} drops at random even in eval mode")
    return Lowered(None, (a["input"],))


# ---- channel movement: x.chunk(k, dim=1) pieces and torchvision's channel_shuffle idiom ----------

def _is_call(n: Any, method: str, *functions: Any) -> bool:
    return isinstance(n, fx.Node) and ((n.op == "call_method" and n.target == method)
                                       or (n.op == "call_function" and n.target in functions))


def _split_pieces(e: Emit) -> Lowered | None:
    """``x.chunk(k, dim=1)``, ``torch.chunk``, ``x.split(n, dim=1)``: a tuple, no tensor of its
    own; each piece taken from it (``operator.getitem``) is a channel ``slice`` (``_getitem``)."""
    x: Any = e.fn.args[0] if e.fn.args else e.fn.kwargs.get("input")
    dim: Any = e.fn.args[2] if len(e.fn.args) > 2 else e.fn.kwargs.get("dim", 0)
    rank = len(e.shape(x))
    if rank != 4 or int(dim) % rank != CHANNEL_AXIS:
        raise e.error(f"{e.fn.target} along dim {dim} of a rank-{rank} tensor; only channel pieces "
                      "(dim=1 of NCHW) are supported")
    return None


def _getitem(e: Emit) -> Lowered | None:
    """A piece of a channel chunk/split is the channel range it covers (from the pieces' shapes);
    anything else indexed must produce no tensor (``x.size()[0]``)."""
    src: Any = e.fn.args[0]
    k: Any = e.fn.args[1]
    if _is_call(src, "chunk", torch.chunk) or _is_call(src, "split", torch.split):
        metas = src.meta.get("tensor_meta")
        widths = [int(m.shape[CHANNEL_AXIS]) for m in metas]
        k = int(k) % len(widths)
        start = sum(widths[:k])
        x = src.args[0] if src.args else src.kwargs["input"]
        return Lowered(Op.SLICE, (x,), {"axis": CHANNEL_AXIS, "start": start, "stop": start + widths[k]})
    return _non_tensor(e)


def _shuffle_of(end: Any, shape: Callable[[Any], tuple[int, ...]]) -> tuple[Any, int] | None:
    """(x, groups) if ``end`` is the last view of torchvision's channel shuffle of x:
    ``x.view(N, g, C // g, H, W)``, ``transpose(1, 2)`` (``.contiguous()``), ``.view(N, C, H, W)``."""
    if not (_is_call(end, "view", torch.reshape) or _is_call(end, "reshape", torch.reshape)):
        return None
    t: Any = end.args[0]
    if _is_call(t, "contiguous"):
        t = t.args[0]
    if not _is_call(t, "transpose", torch.transpose) or {int(d) for d in t.args[1:3]} != {1, 2}:
        return None
    split: Any = t.args[0]
    if not (_is_call(split, "view", torch.reshape) or _is_call(split, "reshape", torch.reshape)):
        return None
    x = split.args[0]
    sx, s5 = shape(x), shape(split)
    if len(sx) != 4 or len(s5) != 5 or s5[0] != sx[0] or s5[1] * s5[2] != sx[1] or s5[3:] != sx[2:]:
        return None
    return (x, s5[1]) if shape(end) == sx else None


def _shuffle_ends(n: fx.Node) -> list[fx.Node]:
    """The last views reached from a step of the idiom through transpose/contiguous/view users."""
    ends: list[fx.Node] = []
    todo = [n]
    while todo:
        for u in todo.pop().users:
            if _is_call(u, "transpose", torch.transpose) or _is_call(u, "contiguous"):
                todo.append(u)
            else:
                ends.append(u)
    return ends


def _shuffle_step(e: Emit, what: str) -> Lowered | None:
    """A middle step of the channel-shuffle idiom (the rank-5 view, the transpose, its contiguous):
    no tensor of its own when every path from it ends in a shuffle's last view."""
    ends = _shuffle_ends(e.fn)
    if ends and all(_shuffle_of(u, e.shape) is not None for u in ends):
        return None
    raise e.error(f"{what} outside torchvision's channel-shuffle idiom (x.view(N, g, C // g, H, W)"
                  ".transpose(1, 2).contiguous().view(N, C, H, W)); not in the IR")


def _view(e: Emit) -> Lowered | None:
    """A view/reshape: the last step of a channel shuffle (``channel_shuffle``), a rank-5 view
    inside one, or a flatten."""
    found = _shuffle_of(e.fn, e.shape)
    if found is not None:
        return Lowered(Op.CHANNEL_SHUFFLE, (found[0],), {"groups": int(found[1])})
    if len(e.shape()) == 5:
        return _shuffle_step(e, f"a view to rank 5 {e.shape()}")
    return _flatten_fn(e)


def _transpose(e: Emit) -> Lowered | None:
    return _shuffle_step(e, "transpose")


def _contiguous(e: Emit) -> Lowered | None:
    x: Any = e.fn.args[0]
    if _is_call(x, "transpose", torch.transpose):
        return _shuffle_step(e, "contiguous of a transpose")
    return _identity(e)


def _channel_shuffle_fn(e: Emit) -> Lowered:
    """``F.channel_shuffle(x, groups)`` / ``nn.ChannelShuffle(groups)``."""
    if e.fn.op == "call_module":
        mod: Any = e.module
        x, g = e.fn.args[0], int(mod.groups)
    else:
        a = e.bind(("input", "groups"))
        x, g = a["input"], int(a["groups"])
    sx = e.shape(x)
    if len(sx) != 4 or g < 1 or sx[1] % g:
        raise e.error(f"channel shuffle of {sx} into {g} groups: needs NCHW and groups dividing the channels")
    return Lowered(Op.CHANNEL_SHUFFLE, (x,), {"groups": g})


FUNCTION_OPS: dict[Any, Callable[[Emit], Lowered | None]] = {
    F.relu: _relu_fn, torch.relu: _relu_fn, torch.relu_: _relu_fn, F.relu_: _relu_fn,
    F.relu6: _relu6_fn, F.hardtanh: _hardtanh_fn, F.hardtanh_: _hardtanh_fn,
    F.silu: _lut("silu"), F.hardswish: _lut("hardswish"), F.hardsigmoid: _lut("hardsigmoid"),
    torch.sigmoid: _lut("sigmoid"), torch.sigmoid_: _lut("sigmoid"), F.sigmoid: _lut("sigmoid"),
    torch.special.expit: _lut("sigmoid"),
    F.max_pool2d: _maxpool_fn, torch.max_pool2d: _maxpool_fn,
    F.avg_pool2d: _avgpool_fn, torch._C._nn.avg_pool2d: _avgpool_fn,
    F.adaptive_avg_pool2d: _adaptive_fn,
    operator.add: _add, operator.iadd: _add, torch.add: _add,
    operator.mul: _mul, operator.imul: _mul, torch.mul: _mul, torch.multiply: _mul,
    torch.cat: _cat, torch.concat: _cat, torch.concatenate: _cat,
    torch.flatten: _flatten_fn, torch.reshape: _view, torch.mean: _mean,
    torch.chunk: _split_pieces, torch.split: _split_pieces, torch.transpose: _transpose,
    F.channel_shuffle: _channel_shuffle_fn, torch.channel_shuffle: _channel_shuffle_fn,
    operator.floordiv: _non_tensor,
    F.dropout: _dropout_fn, F.dropout2d: _dropout_fn, stochastic_depth: _stochastic_depth_fn,
    getattr: _non_tensor, operator.getitem: _getitem,
}

METHOD_OPS: dict[str, Callable[[Emit], Lowered | None]] = {
    "relu": _relu_fn, "relu_": _relu_fn, "sigmoid": _lut("sigmoid"), "sigmoid_": _lut("sigmoid"),
    "add": _add, "add_": _add, "__add__": _add, "__iadd__": _add,
    "mul": _mul, "mul_": _mul, "__mul__": _mul, "__rmul__": _mul, "__imul__": _mul, "multiply": _mul,
    "flatten": _flatten_fn, "view": _view, "reshape": _view,
    "chunk": _split_pieces, "split": _split_pieces, "transpose": _transpose,
    "mean": _mean, "contiguous": _contiguous, "size": _non_tensor, "dim": _non_tensor,
}
