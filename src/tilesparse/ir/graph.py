"""A small, explicit graph IR.

A ``Graph`` is a tuple of ``Node`` in topological (schedule) order plus a parameter table. Nodes are
frozen; passes build new graphs (``Graph.replace_nodes``). Activations are NCHW (batch 1 in the
compiler); a linear layer's output is (N, C).

Node attributes by op (all ints unless said):

========================  ==============================================================
op                         attrs
========================  ==============================================================
input                      —
conv2d                     kernel (kh, kw), stride (sh, sw), padding (ph, pw),
                           dilation (dh, dw), groups, activation (None | "relu" | "relu6")
linear                     activation
batchnorm                  eps (float)
relu, relu6                —
lut                        fn ("silu" | "sigmoid" | "hardswish" | "hardsigmoid"): an element-wise
                           function run as an int8 → int8 table (``tilesparse.ir.lut``)
maxpool                    kernel, stride, padding, dilation, ceil_mode (bool)
avgpool                    kernel, stride, padding, ceil_mode, count_include_pad (bool)
adaptive_avgpool           output_size (oh, ow)
add                        activation
mul                        — : element-wise product of two tensors; the second may be (N, C, 1, 1)
                           against an (N, C, H, W) first (a per-channel scale: squeeze-excitation),
                           expanded to the first's shape by ``passes.broadcast.expand_broadcast``
concat                     axis
slice                      axis (1), start, stop: channels [start, stop) of the input — a view, no
                           data moves (``x.chunk(k, dim=1)``'s pieces)
channel_shuffle            groups: output channel j is input channel (j mod groups)·(C/groups) +
                           j div groups (torchvision's ``channel_shuffle``), data movement only
flatten                    start_dim
output                     —
========================  ==============================================================

Parameters live in ``Graph.params`` under ``"<node>.<name>"``: ``weight`` (conv: O × I/groups × kh × kw,
linear: O × I), ``bias`` (O), ``mask`` (block mask, bool, O/b_o × I/b_i rounded up, with the block shape
in attr ``block``), batch-norm ``running_mean``, ``running_var``, ``weight``, ``bias``.
After quantization tensors carry ``dtype="int8"`` and a power-of-two ``scale_exp`` (real value =
integer × 2**scale_exp); weights are int8 with their own exponent in attr ``weight_exp`` (or a
per-channel array param ``weight_exps``), bias is int32, and ``shift`` says how requantization
rounds back to int8 (see ``tilesparse.quant``). A conv quantized as SDQ holds ``sdq_sparse``,
``sdq_mask`` and ``sdq_dense`` in place of ``weight``, and attr ``sdq`` (``quant.sdq_graph``).

The passes add more attrs (``write_into``, ``reuse_input``, ``clamp``, ``input_shifts``,
``from_linear``, ``from_batchnorm``): their table is in docs/passes.md, the integer meaning of each
in docs/quantization.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

import numpy as np

__all__ = ["Op", "TensorType", "Node", "Graph", "shuffle_source"]


class Op(StrEnum):
    INPUT = "input"
    CONV2D = "conv2d"
    LINEAR = "linear"
    BATCHNORM = "batchnorm"
    RELU = "relu"
    RELU6 = "relu6"
    LUT = "lut"
    MAXPOOL = "maxpool"
    AVGPOOL = "avgpool"
    ADAPTIVE_AVGPOOL = "adaptive_avgpool"
    ADD = "add"
    MUL = "mul"
    CONCAT = "concat"
    SLICE = "slice"
    CHANNEL_SHUFFLE = "channel_shuffle"
    FLATTEN = "flatten"
    OUTPUT = "output"


def shuffle_source(channels: int, groups: int) -> np.ndarray:
    """Input channel of each output channel of a channel shuffle: ``x[:, shuffle_source(C, g)]``
    is ``x.view(N, g, C // g, H, W).transpose(1, 2).reshape(N, C, H, W)``.

    >>> shuffle_source(6, 2).tolist()
    [0, 3, 1, 4, 2, 5]
    """
    if groups < 1 or channels % groups:
        raise ValueError(f"channel shuffle of {channels} channels into {groups} groups: groups must divide them")
    j = np.arange(channels)
    return (j % groups) * (channels // groups) + j // groups


@dataclass(frozen=True)
class TensorType:
    shape: tuple[int, ...]
    dtype: str = "float32"
    scale_exp: int | None = None  # int8 tensors: real = q * 2**scale_exp

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.numel * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class Node:
    name: str
    op: Op
    inputs: tuple[str, ...]
    out: TensorType
    attrs: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""  # where it came from (e.g. the nn.Module path), for error messages

    def with_(self, **changes: Any) -> Node:
        return replace(self, **changes)


@dataclass(frozen=True)
class Graph:
    nodes: tuple[Node, ...]
    params: Mapping[str, np.ndarray] = field(default_factory=dict)
    name: str = "model"

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for n in self.nodes:
            if n.name in seen:
                raise ValueError(f"graph {self.name}: duplicate node name {n.name!r}")
            for i in n.inputs:
                if i not in seen:
                    raise ValueError(
                        f"graph {self.name}: node {n.name!r} reads {i!r} before it is defined"
                    )
            seen.add(n.name)

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"graph {self.name}: no node named {name!r}")

    def param(self, node: str, name: str) -> np.ndarray:
        key = f"{node}.{name}"
        if key not in self.params:
            if name == "weight" and any(n.name == node and n.attrs.get("sdq") is not None for n in self.nodes):
                from tilesparse.errors import ConfigError

                raise ConfigError(f"graph {self.name}", [
                    f"layer {node!r} is an SDQ layer (a sparse and a dense weight part): only the integer "
                    "reference computes it; this step needs one int8 weight (SDQ elsewhere: issue 19, the "
                    "pattern family's part 2)"])
            raise KeyError(f"graph {self.name}: node {node!r} has no parameter {name!r}")
        return self.params[key]

    def consumers(self, name: str) -> list[Node]:
        return [n for n in self.nodes if name in n.inputs]

    @property
    def inputs(self) -> list[Node]:
        return [n for n in self.nodes if n.op is Op.INPUT]

    @property
    def outputs(self) -> list[Node]:
        return [n for n in self.nodes if n.op is Op.OUTPUT]

    def of(self, *ops: Op) -> list[Node]:
        return [n for n in self.nodes if n.op in ops]

    def replace_nodes(
        self, nodes: Iterable[Node], params: Mapping[str, np.ndarray] | None = None
    ) -> Graph:
        return Graph(tuple(nodes), dict(self.params if params is None else params), self.name)
