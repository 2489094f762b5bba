"""What the back end needs to know about one IR node, in one flat record.

``layer_spec(node, graph)`` turns a conv / pool / add / concat / flatten / relu node into a
``LayerSpec``: channel counts, the sliding-window geometry (every op is a window op; element-wise
ops are 1×1 windows), the block mask of a conv and the op kind executed by COMP. Nodes that move no
data (input, output) and nodes the front end must have removed (batch-norm, linear) are rejected
here with an error that names the node.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from tilesparse.errors import UnsupportedOpError
from tilesparse.ir.graph import Graph, Node, Op
from tilesparse.program.geometry import TWO_INPUT_KINDS, WindowRules
from tilesparse.quant import rounding as R

__all__ = ["LayerSpec", "chw", "copy_spec", "shuffle_specs", "is_compute", "kept_block_mask", "layer_spec"]

# Ops executed on the cores; everything else is a view (flatten of 1×1) or bookkeeping.
_COMPUTE = (Op.CONV2D, Op.MAXPOOL, Op.AVGPOOL, Op.ADAPTIVE_AVGPOOL, Op.ADD, Op.MUL, Op.RELU, Op.RELU6, Op.LUT,
            Op.CONCAT, Op.FLATTEN)


def chw(node: Node) -> tuple[int, int, int]:
    """(C, H, W) of a batch-1 activation (a rank-2 (N, C) tensor reads as C×1×1)."""
    s = node.out.shape
    if len(s) == 4:
        if s[0] != 1:
            raise UnsupportedOpError(f"node {node.name!r}: batch {s[0]}; the compiler runs batch 1")
        return int(s[1]), int(s[2]), int(s[3])
    if len(s) == 2:
        return int(s[1]), 1, 1
    raise UnsupportedOpError(f"node {node.name!r}: activation shape {s} is neither NCHW nor NC")


@dataclass(frozen=True)
class LayerSpec(WindowRules):
    """One layer as the partitioner, packer and time model see it.

    ``kind`` is the COMP operation: ``conv``, ``maxpool``, ``avgpool``, ``add``, ``mul`` (the
    requantized product of two equal-shaped tensors), ``relu``,
    ``relu6``, ``lut`` (an int8 table lookup per element; its table travels as the layer's one
    weight chunk), ``copy`` (a concat operand copied into its channel slice), ``flatten`` or
    ``adaptive_avgpool`` (an adaptive average pool whose windows are unequal: every tile reads the
    whole input plane, ``kernel`` is the largest window).
    Window fields follow PyTorch (kernel, stride, padding, dilation per axis); the window rules
    (``window_extent``, ``slides``, ``ci_range``, …) are the program's (``WindowRules``).
    """

    name: str
    kind: str
    inputs: tuple[str, ...]
    ci: int
    hi: int
    wi: int
    co: int
    ho: int
    wo: int
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    block: tuple[int, int] = (8, 8)
    mask: np.ndarray | None = None  # kept blocks (conv only), see ``kept_block_mask``
    # Where the output goes: tensor (buffer) name, its channel count and this layer's channel
    # offset in it (a concat operand writes into a channel slice of the concat's buffer).
    out_tensor: str = ""
    out_c_total: int = 0
    out_c_offset: int = 0
    out_c_stride: int = 1  # > 1: a channel shuffle's copy, writing every out_c_stride-th channel
    # A residual add fused into this conv: the add node and its other operand. COMP requantizes
    # the conv result (the conv's attrs), adds the operand's tile and requantizes again (the add's
    # attrs); the conv's own output is never stored.
    fused_add: str = ""
    residual: str = ""
    # A copy layer's requantizing shift (the concat's ``input_shifts`` entry for its operand):
    # out = saturate(shift_round(x, copy_shift)), as the integer reference computes the concat.
    copy_shift: int = 0
    # How a conv's weights are packed and multiplied: "block" (kept 8x8 blocks, dense MMUL) or
    # "masked" (the same blocks in the sparse multiply's masked chunks, at its rate), chosen by
    # ``compiler.formats.choose_weight_formats`` (program.sparse_format).
    weight_format: str = "block"
    # (input, output) activation zero fractions the planner prices LOADFM / WRITEFM with
    # (``zero_compress.charged_sizes``) when activation compression is on; None: it is off
    act_zero_fracs: tuple[float, float] | None = None

    @property
    def has_weights(self) -> bool:
        return self.kind in ("conv", "lut")

    @property
    def n_in(self) -> int:
        """Input tensors read per output element (2 for an add)."""
        return len(self.inputs) if self.kind in TWO_INPUT_KINDS else 1

    def chunk_ci(self, oc_t: int) -> int:
        """Input channels an output-channel chunk of ``oc_t`` reads, for ops without a separate
        input-channel loop (channel-wise ops, grouped convs, flatten): the most any ``oc_t``
        consecutive output channels can need, whatever their offset."""
        if self.kind == "flatten":
            return min(self.ci, _runs_touched(oc_t, self.hi * self.wi))
        if self.kind == "conv":
            return min(self.ci, _runs_touched(oc_t, self.co // self.groups) * (self.ci // self.groups))
        return oc_t

    @property
    def macs(self) -> int:
        """Dense MACs (conv) or element operations (others) of the whole layer."""
        if self.kind == "conv":
            return self.co * self.ho * self.wo * (self.ci // self.groups) * self.taps
        return self.co * self.ho * self.wo * self.taps * max(1, len(self.inputs) - 1)

    @property
    def kept_macs(self) -> int:
        """MACs left after skipping zero blocks (conv) — what the hardware must execute."""
        if self.kind != "conv" or self.mask is None:
            return self.macs
        return int(self.kept_channels_per_block_row().sum()) * self.ho * self.wo * self.taps

    def kept_channels_per_block_row(self) -> np.ndarray:
        """For each output channel: the number of input channels in its kept blocks
        (a ragged last block counts its real width). Read-only, computed once per spec."""
        return self._kept_per_channel

    @functools.cached_property
    def _kept_per_channel(self) -> np.ndarray:
        assert self.mask is not None
        bo, bi = self.block
        ig = self.ci // self.groups
        widths = np.minimum(bi, ig - np.arange(self.mask.shape[1]) * bi)
        per_row = self.mask.astype(np.int64) @ widths
        og = self.co // self.groups
        g, r = np.divmod(np.arange(self.co), og)
        out = per_row[g * math.ceil(og / bo) + r // bo]
        out.flags.writeable = False
        return out


def _runs_touched(n: int, per: int) -> int:
    """The most runs of ``per`` consecutive items that ``n`` consecutive items can overlap (at the
    worst offset: one item short of a run's end, then the rest)."""
    return (n + per - 2) // per + 1 if n > 0 else 0


def kept_block_mask(node: Node, graph: Graph, co: int, ci_g: int, groups: int) -> np.ndarray:
    """The block mask to execute: the front end's ``mask`` param AND the non-zero blocks of the
    weight (an all-zero block is skipped even if the mask keeps it). Dense if neither is known."""
    bo, bi = tuple(node.attrs.get("block", (8, 8)))
    rows = groups * math.ceil((co // groups) / bo)
    cols = math.ceil(ci_g / bi)
    key = f"{node.name}.mask"
    mask = np.asarray(graph.params[key], dtype=bool) if key in graph.params else np.ones((rows, cols), bool)
    if mask.shape != (rows, cols):
        raise UnsupportedOpError(
            f"layer {node.name!r}: mask shape {mask.shape}, expected {(rows, cols)} for blocks {bo}x{bi}")
    return mask


def _window(node: Node) -> dict:
    a = node.attrs
    return {"kernel": tuple(a["kernel"]), "stride": tuple(a["stride"]),
            "padding": tuple(a["padding"]), "dilation": tuple(a.get("dilation", (1, 1)))}


def _largest_window(size: int, out: int) -> int:
    return max(e - s for s, e in R.adaptive_windows(size, out))


def layer_spec(node: Node, graph: Graph) -> LayerSpec:
    """The ``LayerSpec`` of a compute node (see module doc); raises naming the node otherwise."""
    if node.op not in _COMPUTE:
        raise UnsupportedOpError(
            f"layer {node.name!r} ({node.source or node.op.value}): op {node.op.value!r} is not "
            f"executed by the back end; run the front end passes (batch-norm folding, linear lowering)")
    co, ho, wo = chw(node)
    src = graph.node(node.inputs[0])
    ci, hi, wi = chw(src)
    base: dict[str, Any] = {"name": node.name, "inputs": tuple(node.inputs), "ci": ci, "hi": hi, "wi": wi, "co": co,
            "ho": ho, "wo": wo}
    if node.op is Op.CONV2D:
        g = int(node.attrs.get("groups", 1))
        block = tuple(node.attrs.get("block", (8, 8)))
        mask = kept_block_mask(node, graph, co, ci // g, g)
        return LayerSpec(kind="conv", groups=g, block=block, mask=mask, **_window(node), **base)
    if node.op in (Op.MAXPOOL, Op.AVGPOOL):
        # ceil_mode windows that hang over the edge are clipped by COMP (docs/program.md)
        return LayerSpec(kind=node.op.value, **_window(node), **base)
    if node.op is Op.ADAPTIVE_AVGPOOL:
        if hi % ho == 0 and wi % wo == 0:  # equal windows: a plain average pool
            k = (hi // ho, wi // wo)
            return LayerSpec(kind="avgpool", kernel=k, stride=k, **base)
        # unequal windows: each tile reads the whole plane; kernel = the largest window (COMP's work)
        k = (_largest_window(hi, ho), _largest_window(wi, wo))
        return LayerSpec(kind="adaptive_avgpool", kernel=k, stride=k, **base)
    if node.op in (Op.ADD, Op.MUL, Op.RELU, Op.RELU6, Op.LUT):
        return LayerSpec(kind=node.op.value, **base)
    if node.op is Op.FLATTEN:
        return LayerSpec(kind="flatten", **base)
    raise UnsupportedOpError(f"layer {node.name!r}: concat is lowered by the pipeline, not here")


def copy_spec(concat: Node, operand: Node, offset: int, shift: int = 0) -> LayerSpec:
    """A concat operand that the front end did not mark ``write_into``: copied by the cores into
    its channel slice of the concat buffer, shifted by ``shift`` (its ``input_shifts`` entry)."""
    c, h, w = chw(operand)
    return LayerSpec(name=f"{concat.name}.copy_{operand.name}", kind="copy", inputs=(operand.name,),
                     ci=c, hi=h, wi=w, co=c, ho=h, wo=w, out_tensor=concat.name,
                     out_c_total=chw(concat)[0], out_c_offset=offset, copy_shift=int(shift))


def shuffle_specs(shuffle: Node, operand: Node) -> list[tuple[LayerSpec, int]]:
    """A channel shuffle as ``groups`` copy layers, each with the input channel it starts at:
    copy k moves input channels [k·C/g, (k+1)·C/g) to output channels k, k + g, k + 2g, …
    (output channel j holds input channel (j mod g)·C/g + j div g, ``ir.graph.shuffle_source``).
    Data movement only: no shift, no arithmetic."""
    c, h, w = chw(operand)
    g = int(shuffle.attrs["groups"])
    cpg = c // g
    return [(LayerSpec(name=f"{shuffle.name}.copy_{k}", kind="copy", inputs=(operand.name,),
                       ci=cpg, hi=h, wi=w, co=cpg, ho=h, wo=w, out_tensor=shuffle.name, out_c_total=c,
                       out_c_offset=k, out_c_stride=g), k * cpg) for k in range(g)]


def is_compute(node: Node) -> bool:
    return node.op in _COMPUTE
