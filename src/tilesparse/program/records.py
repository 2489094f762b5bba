"""The typed, immutable records of a layer in a Program (docs/program.md, "A layer").

The partition records (``SubVolume``, ``Grid``, ``CoreWork``, ``LayerPartition``) are the ones
the compiler plans with; a ``LayerRecord`` stores what executes: its geometry, buffers, grid,
sub-volume, loops, one ``CoreWork`` per core and one ``ChunkRow`` per packed weight chunk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tilesparse.program.geometry import TWO_INPUT_KINDS, LayerGeometry

# Transfers the DMAs can zero-compress: MemTile <-> core, the memory-tile and tile DMAs (AM020
# "Sparsity"); the interface tile's DMA (DDR <-> MemTile) has no compression logic.
COMPRESSIBLE_OPS = ("LOADFM", "WRITEFM")

__all__ = ["COMPRESSIBLE_OPS", "ChunkRow", "CoreRow", "CoreWork", "Grid", "LayerPartition", "LayerRecord", "Loops",
           "SubVolume", "TensorSlice"]


@dataclass(frozen=True)
class SubVolume:
    """The per-core, per-iteration work unit of a layer (what a ``chooser`` returns).

    Attributes:
        oc: output channels per weight chunk (whole block rows, or the core's share if smaller).
        ci: input channels per chunk (whole block columns, or all the channels the chunk needs);
            more than one chunk means int32 partial sums stay in the core's output buffer.
        h: output rows per tile (one COMP iteration).
        w: output columns per tile.
    """

    oc: int
    ci: int
    h: int
    w: int


@dataclass(frozen=True)
class Grid:
    oc_groups: int  # channel ranges over the rows (times cols when col_axis == "oc")
    sp_groups: int  # spatial slices over the rows
    col_axis: str  # "w", "h", "hw" (columns split space) or "oc" (columns split channels)
    col_h: int = 1  # "hw": the columns tile the map in col_h bands of height (``col_tiles``)


@dataclass(frozen=True)
class CoreWork:
    """The output sub-volume of one core: channels [oc0, oc1) × rows [h0, h1) × cols [w0, w1)."""

    row: int
    col: int
    oc0: int
    oc1: int
    h0: int
    h1: int
    w0: int
    w1: int
    oc_group: int  # cores with the same oc_group hold the same weights
    region: int  # cores with the same region read the same input window

    @property
    def empty(self) -> bool:
        return self.oc1 <= self.oc0 or self.h1 <= self.h0 or self.w1 <= self.w0

    @property
    def n_out(self) -> int:
        return 0 if self.empty else (self.oc1 - self.oc0) * (self.h1 - self.h0) * (self.w1 - self.w0)


CoreRow = CoreWork  # a LayerRecord's row of ``cores``


@dataclass(frozen=True)
class LayerPartition:
    layer: str
    grid: Grid
    cores: tuple[CoreWork, ...]  # row-major over (row, col)
    sub: SubVolume
    n_k: int  # weight (output-channel) chunks per core, the largest over cores
    n_q: int  # input-channel chunks
    tiles_per_group: int  # spatial tiles sharing resident partial sums (all when n_q == 1)
    n_tiles: int  # tiles of the largest region

    @property
    def n_s(self) -> int:
        return max(1, math.ceil(self.n_tiles / self.tiles_per_group))


@dataclass(frozen=True, slots=True)
class ChunkRow:
    """One packed weight chunk: oc group ``oc_group``'s chunk (k, q), output channels [oc0, oc1) ×
    input-channel block columns [cb0, cb1), ``nbytes`` at DDR ``ddr_addr``; the int32 bias is
    packed only ``with_bias`` (the last input-channel chunk)."""

    oc_group: int
    k: int
    q: int
    oc0: int
    oc1: int
    cb0: int
    cb1: int
    ddr_addr: int
    nbytes: int
    with_bias: bool

    @property
    def key(self) -> tuple[int, int, int]:
        return self.oc_group, self.k, self.q


@dataclass(frozen=True, slots=True)
class Loops:
    """The step loops: spatial groups ``n_s`` × output-channel chunks ``n_k`` × input-channel
    chunks ``n_q``; ``tiles_per_group`` tiles per step, ``n_tiles`` in the largest region;
    ``slide``: LOADFM keeps the window in a ring of columns (docs/program.md, "Sliding windows")."""

    n_s: int
    n_k: int
    n_q: int
    tiles_per_group: int
    n_tiles: int
    slide: bool = False


@dataclass(frozen=True, slots=True)
class TensorSlice:
    """Channels [c_offset, c_offset + the layer's channels) of ``buffer``, which has ``c_total``;
    with ``c_stride`` > 1 (a channel shuffle's copy) the layer's channel k is buffer channel
    c_offset + k·c_stride."""

    buffer: str
    c_total: int
    c_offset: int = 0
    c_stride: int = 1

    def channels(self, k0: int, k1: int) -> np.ndarray:
        """Buffer channels of the layer's channels [k0, k1)."""
        return self.c_offset + np.arange(k0, k1) * self.c_stride


@dataclass(frozen=True)
class LayerRecord:
    """A layer as executed: its geometry, partition, buffers, weight chunks and quantization attrs.

    ``inputs`` are the window inputs, then (``fused_add`` set) the residual's buffer; ``attrs`` are
    the IR node's JSON attributes (quantization: ``shift``, ``clamp``, ``out_scale_exp``, …;
    ``attrs["add"]`` for a fused add)."""

    name: str
    geometry: LayerGeometry
    inputs: tuple[TensorSlice, ...]
    output: TensorSlice
    grid: Grid
    sub: SubVolume
    loops: Loops
    cores: tuple[CoreWork, ...]
    chunks: tuple[ChunkRow, ...] = ()
    attrs: dict[str, Any] = field(default_factory=dict)
    dense_weight_bytes: int = 0
    packed_weight_bytes: int = 0  # bitmap + kept blocks, each distinct chunk once
    bias_bytes: int = 0
    kept_macs: int = 0
    macs: int = 0
    fused_add: str = ""  # an add executed by this conv's COMP (docs/program.md, "fused add")
    residual: str = ""  # its other operand (node name; its buffer is the last entry of inputs)
    # activation zeros measured on the calibration inputs (fraction of zero bytes of the layer's
    # window inputs, and of its output), and the transfers that travel zero-compressed
    # (docs/program.md, "Activation compression")
    in_zero_frac: float = 0.0
    out_zero_frac: float = 0.0
    compressed: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        g, n_win = self.geometry, len(self.inputs) - bool(self.fused_add)
        want = n_win if g.kind in TWO_INPUT_KINDS else 1
        if n_win < 1 or g.n_in != want or g.residual != bool(self.fused_add):
            raise ValueError(f"layer {self.name!r}: geometry reads {g.n_in} input(s)"
                             f"{' and a residual' if g.residual else ''}, the record lists {len(self.inputs)} "
                             f"buffer(s){' with a fused add' if self.fused_add else ''}")
        lp = self.loops
        if lp.n_q > 1 and g.kind != "conv" and not (g.bandable and lp.n_q <= g.kernel[0]):
            raise ValueError(f"layer {self.name!r}: loops n_q = {lp.n_q}: only a conv's input-channel chunks or "
                             f"the window-row bands of an average pool whose windows do not touch (at most "
                             f"one per kernel row) make more than one q")
        if self.loops.n_s != max(1, math.ceil(self.loops.n_tiles / self.loops.tiles_per_group)):
            raise ValueError(f"layer {self.name!r}: loops n_s = {self.loops.n_s}, but {self.loops.n_tiles} tiles "
                             f"in groups of {self.loops.tiles_per_group}")
        for key in ("in_zero_frac", "out_zero_frac"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ValueError(f"layer {self.name!r}: {key} = {v!r}, expected a fraction in [0, 1]")
        object.__setattr__(self, "compressed", tuple(self.compressed))
        bad = [op for op in self.compressed if op not in COMPRESSIBLE_OPS]
        if bad:
            raise ValueError(f"layer {self.name!r}: compressed transfer {bad[0]!r}, expected one of "
                             f"{', '.join(COMPRESSIBLE_OPS)}")

    @property
    def kind(self) -> str:
        return self.geometry.kind

    @property
    def partition(self) -> LayerPartition:
        """The partition the layer executes (its grid, cores, sub-volume and loops)."""
        lp = self.loops
        return LayerPartition(self.name, self.grid, self.cores, self.sub, lp.n_k, lp.n_q, lp.tiles_per_group,
                              lp.n_tiles)
