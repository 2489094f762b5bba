"""What a Program means: the rules that say which tiles, channels and buffer slots each core
works on in every step (docs/program.md, "A layer", "Sliding windows", "Memories").

The compiler plans with these functions and the simulator and estimator read programs by them,
so a program means the same thing to all three. ``spec`` is anything with the ``WindowRules``
(the program's ``LayerGeometry`` or the compiler's ``LayerSpec``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from tilesparse.hw import ArrayConfig, get_profile
from tilesparse.program.geometry import LayerGeometry, WindowRules
from tilesparse.program.records import LayerPartition, SubVolume

__all__ = [
    "ACC_BYTES",
    "Window",
    "acc_slot",
    "acc_tiles",
    "band_rows",
    "band_rules",
    "chunk_with_inputs",
    "even_chunk",
    "moved_positions",
    "residual_capacity",
    "ring_columns",
    "slid_tiles",
    "splits_window",
    "tile_grid",
    "tile_window",
]

ACC_BYTES = 4  # int32 accumulator per output element (bias is int32 too)


def tile_grid(h0: int, h1: int, w0: int, w1: int, th: int, tw: int) -> list[tuple[int, int, int, int]]:
    """Tiles of a region, row-major: (h0, h1, w0, w1) each; the last row/column of tiles may be
    smaller. This order is the iteration order of every pipelined instruction."""
    return [(a, min(a + th, h1), b, min(b + tw, w1))
            for a in range(h0, h1, th) for b in range(w0, w1, tw)]


def slid_tiles(spec: WindowRules, h: int, w: int, th: int, tw: int, group: int) -> np.ndarray:
    """Which tiles of an ``h × w`` region (``tile_grid`` order) continue a sliding window
    (``WindowRules.slides``): every tile but the first of its tile row, unless it starts a spatial
    group of ``group`` tiles (each step's first iteration loads its whole window)."""
    n = -(-h // th) * -(-w // tw)
    if not spec.slides:
        return np.zeros(n, bool)
    t = np.arange(n)
    return (t % -(-w // tw) > 0) & (t % group > 0)


def moved_positions(spec: WindowRules, h: int, w: int, th: int, tw: int, group: int) -> np.ndarray:
    """Input positions (per channel and input) LOADFM moves for each tile of an ``h × w`` region
    (``tile_grid`` order, ``group`` tiles per step): the tile's window, or for a sliding tile
    (``slid_tiles``) only the ``tile width × stride`` columns past the previous tile's window."""
    hs = np.minimum(th, h - np.arange(0, h, th))
    ws = np.minimum(tw, w - np.arange(0, w, tw))
    ha, wa = sorted(set(hs.tolist())), sorted(set(ws.tolist()))  # a tile height (width), or two
    table = np.array([[spec.window_positions(a, b) for b in wa] for a in ha], dtype=np.int64)
    full = table[np.searchsorted(ha, hs)][:, np.searchsorted(wa, ws)].ravel()  # tile_grid order
    if not spec.slides:
        return full
    new = np.outer([spec.window_extent(int(a), 0) for a in hs], ws * spec.stride[1]).ravel()
    return np.where(slid_tiles(spec, h, w, th, tw, group), new, full)


def ring_columns(spec: WindowRules, sub: SubVolume) -> int:
    """Columns of a sliding layer's input ring in ``core.in``: two full windows' worth, so that
    the next tile's new columns never overwrite the window the current COMP reads
    (docs/program.md, "Sliding windows")."""
    return 2 * spec.window_extent(sub.w, 1)


def acc_slot(spec: WindowRules, hw: ArrayConfig, sub: SubVolume, n_q: int, i: int) -> tuple[str, int] | None:
    """Where the int32 accumulators of iteration ``i``'s tile live: (core region, byte offset), or
    None if they do not fit (docs/program.md).

    One input-channel chunk: half ``i mod 2`` of ``core.out`` (the other half drains the previous
    tile: ping-pong). Several chunks: the partial sums of every tile of a spatial group stay
    resident — tile i at ``i · tile`` in ``core.out`` below the two int8 output tiles kept at its end
    for WRITEFM, the tiles that do not fit there continue in ``core.res`` when the layer has no
    fused add (whose residual tiles use ``core.res``)."""
    tile = sub.h * sub.w * sub.oc * ACC_BYTES
    if n_q == 1:
        half = hw.core.output_buffer_bytes // 2
        return ("out", (i % 2) * half) if tile <= half else None
    in_out, in_res = _resident_tiles(spec, hw, sub)
    if i < in_out:
        return "out", i * tile
    return ("res", (i - in_out) * tile) if i - in_out < in_res else None


def acc_tiles(spec: WindowRules, hw: ArrayConfig, sub: SubVolume, n_q: int) -> int:
    """How many tiles' int32 accumulators can be resident at once (``acc_slot``): 1 or 0 with
    one input-channel chunk, the spatial group's largest size with several."""
    if n_q == 1:
        return int(acc_slot(spec, hw, sub, 1, 0) is not None)
    return sum(_resident_tiles(spec, hw, sub))


def _resident_tiles(spec: WindowRules, hw: ArrayConfig, sub: SubVolume) -> tuple[int, int]:
    """Accumulator tiles that stay resident with several input-channel chunks: (in ``core.out``
    below its two int8 tiles, in ``core.res`` unless a fused add's residual tiles use it)."""
    tile = sub.h * sub.w * sub.oc * ACC_BYTES
    in_out = max(0, hw.core.output_buffer_bytes - 2 * sub.h * sub.w * sub.oc) // tile
    return in_out, 0 if spec.residual else residual_capacity(hw) // tile


def residual_capacity(hw: ArrayConfig) -> int:
    """Bytes of ``core.res``: the data memory left after the input, output and weight buffers,
    where a fused add's residual tiles live (two halves, ping-pong; docs/program.md). 0 under a
    rule profile whose ``scratch_as_buffer`` is off (``paper``: that memory is the kernel's
    scratch, not a buffer), so neither residual tiles nor continued partial sums use it."""
    c = hw.core
    if not get_profile(hw.rules).scratch_as_buffer:
        return 0
    return max(0, c.data_memory_bytes - c.input_buffer_bytes - c.output_buffer_bytes - c.weight_buffer_bytes)


def even_chunk(oc0: int, oc1: int, oc_t: int, k: int) -> tuple[int, int]:
    """Output channels of chunk ``k`` of a core's [oc0, oc1) cut every ``oc_t`` channels: the rule
    of every layer but a conv, whose chunks are the program's chunk rows (may be empty)."""
    return min(oc0 + k * oc_t, oc1), min(oc0 + (k + 1) * oc_t, oc1)


def chunk_with_inputs(spec: WindowRules, part: LayerPartition, o0: int, o1: int, q: int
                      ) -> tuple[int, int, int, int] | None:
    """(oc0, oc1, ci0, ci1) of output channels [o0, o1) in input-channel chunk q, or None if
    empty: the input channels the core holds (a grouped conv's chunk reads every input channel
    of the groups it spans, ``ci_range``)."""
    if o1 <= o0:
        return None
    if spec.kind == "conv" and spec.groups == 1:
        c0 = q * part.sub.ci
        c1 = min(c0 + part.sub.ci, spec.ci)
        return (o0, o1, c0, c1) if c1 > c0 else None
    if q and not (splits_window(spec, part.n_q) and q < part.n_q):  # a window band reads the same channels
        return None
    return (o0, o1) + spec.ci_range(o0, o1)


def splits_window(spec: WindowRules, n_q: int) -> bool:
    """Whether the layer's q loop runs over bands of window rows instead of input-channel chunks:
    an average pool that may (``WindowRules.bandable``) with ``n_q`` > 1 (its window does not fit
    half of ``core.in``). Step q brings band q of every window of its tiles; COMP adds the band's sums to
    the tiles' int32 accumulators, resident across q as a conv's partial sums, and the last band
    divides and writes (docs/program.md, "Window bands")."""
    return n_q > 1 and spec.bandable


def band_rows(spec: WindowRules, n_q: int, q: int) -> tuple[int, int]:
    """Kernel rows [r0, r1) of window band ``q`` of ``n_q``: the kernel's rows cut evenly
    (``q·kh // n_q``), every band non-empty while ``n_q`` ≤ kh."""
    kh = spec.kernel[0]
    return q * kh // n_q, (q + 1) * kh // n_q


def band_rules(spec: WindowRules, n_q: int, q: int) -> LayerGeometry:
    """The geometry of window band ``q``: the same pool with the band's kernel rows and the
    padding moved by its first row, so its windows (``tile_window``), positions and taps are the
    band's. With ``n_q`` = 1 (no bands) the layer's own geometry."""
    g = spec if isinstance(spec, LayerGeometry) else LayerGeometry.of(spec)
    if not splits_window(spec, n_q):
        return g
    r0, r1 = band_rows(spec, n_q, q)
    return dataclasses.replace(g, kernel=(r1 - r0, g.kernel[1]), padding=(g.padding[0] - r0, g.padding[1]))


@dataclass(frozen=True)
class Window:
    """Input rows/columns of a tile's window (indices into the input, padding outside [0, H))."""

    rows: np.ndarray
    cols: np.ndarray
    stride: tuple[int, int]  # stride of the window as stored (the kernel extent when compacted)

    @property
    def positions(self) -> int:
        return len(self.rows) * len(self.cols)


def _axis_index(spec: WindowRules, a: int, b: int, axis: int) -> tuple[np.ndarray, int]:
    """Input indices along ``axis`` of the window of outputs [a, b), and its stored stride."""
    s, p, d, k = spec.stride[axis], spec.padding[axis], spec.dilation[axis], spec.kernel[axis]
    ext = (k - 1) * d + 1
    if s >= ext:  # windows do not touch: the strided DMA brings only the rows they read
        idx = (np.arange(a, b)[:, None] * s - p + np.arange(ext)[None, :]).ravel()
        return idx, ext
    return np.arange(a * s - p, (b - 1) * s - p + ext), s


def tile_window(spec: WindowRules, tile: tuple[int, int, int, int]) -> Window:
    """The input window of output tile (h0, h1, w0, w1): the rows and columns LOADFM brings
    (docs/program.md, "Input window"); a flatten or an adaptive pool with unequal windows reads
    the whole plane."""
    a, b, c, d = tile
    if spec.reads_whole_plane:
        return Window(np.arange(spec.hi), np.arange(spec.wi), (1, 1))
    r, sr = _axis_index(spec, a, b, 0)
    cc, sc = _axis_index(spec, c, d, 1)
    return Window(r, cc, (sr, sc))
