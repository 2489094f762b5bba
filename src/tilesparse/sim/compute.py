"""What COMP computes on one core for one tile (docs/program.md, "COMP semantics").

Convolutions are block-sparse: a weight chunk decoded from its packed bytes (``unpack_chunk``) is
split into groups of block rows that keep the same block columns; each group is one float64 matmul
of the im2col window (only the kept input channels) by the kept weights — exact, since every partial
sum of int8 products stays far below 2**53. Skipped blocks are never touched, so a wrong bitmap or
block index changes the result. A lookup-table layer reads entry ``x + 128`` of the table decoded
from the bytes its core holds (``decode_table``). Everything else uses the integer rules of
``tilesparse.quant``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from tilesparse.program import ChunkRow, LayerGeometry
from tilesparse.program.packing import (
    BITS_PER_BYTE,
    LUT_INDEX_BIAS,
    chunk_geometry,
    masked_to_block,
    split_parts,
    unpack_chunk,
    unpack_table,
)
from tilesparse.program.sparse_format import BLOCK, MASKED, PARTS
from tilesparse.quant import rounding as R

__all__ = ["Chunk", "LutTable", "conv_cycles", "conv_tile", "decode_chunk", "decode_table", "geometry", "im2col",
           "lookup_tile", "pool_tile"]

MAXPOOL_PAD = np.iinfo(np.int16).min  # padding never wins a max (below every int8)


@dataclass(frozen=True)
class Chunk:
    """A weight chunk decoded from the bytes a core holds."""

    row: ChunkRow
    groups: tuple[tuple[np.ndarray, np.ndarray | None, np.ndarray], ...]  # out idx, feature idx, W
    bias: np.ndarray | None
    kept: np.ndarray  # kept input channels of each output channel of the chunk
    parts: int = 1  # weight parts multiplied (2 for a ``parts`` chunk)

    @property
    def oc0(self) -> int:
        return self.row.oc0


@dataclass(frozen=True)
class LutTable:
    """A lookup table decoded from the bytes a core holds (a ``lut`` layer's chunk)."""

    row: ChunkRow
    table: np.ndarray  # int8, entry q + 128 for input q


def decode_table(buf: bytes, row: ChunkRow) -> LutTable:
    """The table of a ``lut`` chunk (``ValueError`` if the bytes are not one table)."""
    return LutTable(row, unpack_table(buf))


def lookup_tile(x: np.ndarray, lut: LutTable) -> np.ndarray:
    """Each int8 element of ``x`` replaced by its table entry (int64)."""
    return lut.table.astype(np.int64)[x.astype(np.int64) + LUT_INDEX_BIAS]


def _keep_bits(buf: bytes, nrows: int, ncols: int) -> tuple[np.ndarray, int]:
    nbit = math.ceil(nrows * ncols / BITS_PER_BYTE)
    if len(buf) < nbit:
        raise ValueError(f"{len(buf)} B cannot hold a {nrows}x{ncols} block bitmap")
    keep = np.unpackbits(np.frombuffer(buf[:nbit], np.uint8), bitorder="little")[:nrows * ncols]
    return keep.reshape(nrows, ncols).astype(bool), nbit


def _decode_regular(spec: LayerGeometry, buf: bytes, geo, keep: np.ndarray, nbit: int, with_bias: bool):
    """Blocks of equal height and width: scatter all kept blocks at once (format of
    ``program.packing``: bitmap, kept blocks as [o][ky][kx][i] in bitmap order, int32 bias)."""
    h, bi = int(geo.row_ch[0, 1] - geo.row_ch[0, 0]), int(geo.col_w[0])
    kh, kw = spec.kernel
    blk = h * kh * kw * bi
    n_keep = int(keep.sum())
    nb = (geo.oc1 - geo.oc0) * 4 if with_bias else 0
    if len(buf) != nbit + n_keep * blk + nb:
        raise ValueError(f"{len(buf)} bytes, layout accounts for {nbit + n_keep * blk + nb}")
    blocks = np.zeros((*keep.shape, h, kh, kw, bi), np.int8)
    blocks[keep] = np.frombuffer(buf, np.int8, n_keep * blk, nbit).reshape(n_keep, h, kh, kw, bi)
    bias = np.frombuffer(buf, "<i4", geo.oc1 - geo.oc0, nbit + n_keep * blk).copy() if with_bias else None
    return blocks, bias


@dataclass(frozen=True)
class _Geo:
    oc0: int
    oc1: int
    cb0: int
    cb1: int
    row_ch: np.ndarray
    col_w: np.ndarray


def geometry(spec: LayerGeometry, oc0: int, oc1: int, cb0: int, cb1: int):
    """``program.packing.chunk_geometry`` (block rows clipped to [oc0, oc1), block-column widths),
    computed directly for ungrouped convs whose chunk starts on a block row (the common case)."""
    bo, bi = spec.block
    if spec.groups != 1 or oc0 % bo or oc1 <= oc0:
        return chunk_geometry(spec, oc0, oc1, cb0, cb1)
    starts = np.arange(oc0, oc1, bo)
    row_ch = np.stack([starts, np.minimum(starts + bo, oc1)], axis=1)
    col_w = np.minimum(bi, spec.ci - np.arange(cb0, cb1) * bi)
    return _Geo(oc0, oc1, cb0, cb1, row_ch, col_w)


def _ranges(bounds: np.ndarray) -> np.ndarray:
    """Concatenated aranges of (start, stop) rows."""
    if not len(bounds):
        return np.zeros(0, np.int64)
    lens = bounds[:, 1] - bounds[:, 0]
    return np.repeat(bounds[:, 0] - np.r_[0, np.cumsum(lens)[:-1]], lens) + np.arange(int(lens.sum()))


def decode_chunk(spec: LayerGeometry, buf: bytes, row: ChunkRow, ci0: int, n_ch: int, sparse=None,
                 part_shifts: tuple[int, ...] | None = None) -> Chunk:
    """Decode a packed chunk (``ValueError`` if its bytes do not match its layout) into groups of
    block rows sharing the same kept block columns. ``ci0``/``n_ch``: the first input channel
    and channel count of the window the core holds; ``sparse``: the array's
    ``core.sparse_matmul``, whose masked chunks a layer in the masked format holds (decompressed
    first, as the core does on load). A ``parts`` chunk (``program.parts_format``) decodes each
    part from its own bytes; its groups carry each part's weights times 2**shift (``part_shifts``,
    the record's ``attrs["parts_shifts"]``), so COMP sums the parts' products aligned."""
    if spec.weight_format == PARTS:
        if part_shifts is None:
            raise ValueError(f"layer {spec.name}: a parts chunk needs the parts' shifts")
        geo = geometry(spec, row.oc0, row.oc1, row.cb0, row.cb1)
        bufs = split_parts(spec, buf, geo, bool(row.with_bias), sparse)
        blk = dataclasses.replace(spec, weight_format=BLOCK)  # each part, decoded, is a block chunk
        chunks = [_decode_block(blk, b, row, ci0, n_ch, bool(row.with_bias) and i == 0)
                  for i, b in enumerate(bufs)]
        groups = tuple((o, f, w * float(2 ** int(s))) for c, s in zip(chunks, part_shifts, strict=True)
                       for o, f, w in c.groups)
        return Chunk(row, groups, chunks[0].bias, chunks[0].kept, len(chunks))
    geo = geometry(spec, row.oc0, row.oc1, row.cb0, row.cb1)
    block = masked_to_block(spec, buf, geo, bool(row.with_bias), sparse)  # as is for a block-format layer
    # the bytes are now in the block format: decode them as such (a ragged chunk's decoder reads the format)
    return _decode_block(dataclasses.replace(spec, weight_format=BLOCK), block, row, ci0, n_ch,
                         bool(row.with_bias))


def _decode_block(spec: LayerGeometry, buf: bytes, row: ChunkRow, ci0: int, n_ch: int, with_bias: bool) -> Chunk:
    """``decode_chunk`` of bytes in the block format."""
    oc0, oc1, cb0, cb1 = row.oc0, row.oc1, row.cb0, row.cb1
    geo = geometry(spec, oc0, oc1, cb0, cb1)
    keep, nbit = _keep_bits(buf, len(geo.row_ch), cb1 - cb0)
    heights = geo.row_ch[:, 1] - geo.row_ch[:, 0]
    if len(heights) and (heights == heights[0]).all() and (geo.col_w == geo.col_w[0]).all():
        blocks, bias = _decode_regular(spec, buf, geo, keep, nbit, bool(with_bias))
        dense = None
    else:  # ragged edge blocks: the compiler's own decoder
        dense, bias = unpack_chunk(spec, buf, geo, bool(with_bias))
        blocks = None
    col0 = np.r_[0, np.cumsum(geo.col_w)]
    col_b = np.stack([col0[:-1], col0[1:]], axis=1)
    og, ig = spec.co // spec.groups, spec.ci // spec.groups
    grp = geo.row_ch[:, 0] // og
    pattern: dict[bytes, list[int]] = {}
    if blocks is not None and spec.groups == 1 and keep.all():  # dense chunk: one group, no gather
        pattern[b""] = list(range(len(keep)))
    else:
        for r, key in enumerate(np.c_[grp, keep]):
            pattern.setdefault(key.tobytes(), []).append(r)
    kh, kw = spec.kernel
    groups = []
    kept = np.zeros(oc1 - oc0, np.int64)
    for rows in pattern.values():
        cols = np.flatnonzero(keep[rows[0]])
        out = _ranges(geo.row_ch[rows]) - oc0
        local = _ranges(col_b[cols]).astype(np.int64)
        kept[out] = len(local)
        if not len(local):
            continue
        feat = local + (cb0 * spec.block[1] if spec.groups == 1 else int(grp[rows[0]]) * ig) - ci0
        if feat.min() < 0 or feat.max() >= n_ch:
            raise ValueError(f"chunk reads input channels outside the {n_ch} the core holds")
        if blocks is not None:  # (rows, cols, h, kh, kw, bi) -> (kh, kw, cols, bi, rows, h)
            sel = blocks if len(rows) == len(keep) and len(cols) == keep.shape[1] else blocks[rows][:, cols]
            w = sel.transpose(3, 4, 1, 5, 0, 2)
        else:
            assert dense is not None  # ragged chunks were decoded densely above
            w = dense[out][:, local].transpose(2, 3, 1, 0)
        w = w.reshape(kh * kw * len(local), len(out))
        full = len(feat) == n_ch and bool((feat == np.arange(n_ch)).all())
        groups.append((out, None if full else feat, w.astype(np.float64)))
    return Chunk(row, tuple(groups), bias, kept)


def im2col(x: np.ndarray, kernel, dilation, stride, n_out: tuple[int, int]) -> np.ndarray:
    """Window ``x`` (rows, cols, channels) → (positions, kh, kw, channels)."""
    (kh, kw), (dh, dw), (sh, sw) = kernel, dilation, stride
    v = sliding_window_view(x, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(0, 1))
    v = v[:n_out[0] * sh:sh, :n_out[1] * sw:sw, :, ::dh, ::dw]
    if v.shape[0] != n_out[0] or v.shape[1] != n_out[1]:
        raise ValueError(f"window {x.shape[:2]} yields {v.shape[:2]} outputs, tile needs {n_out}")
    return np.ascontiguousarray(v.transpose(0, 1, 3, 4, 2)).reshape(n_out[0] * n_out[1], kh, kw, x.shape[2])


def conv_tile(x: np.ndarray, spec: LayerGeometry, stride, n_out, chunk: Chunk) -> tuple[np.ndarray, int]:
    """Partial sums (positions × chunk channels, int64) of one input-channel chunk, and MACs."""
    cols = im2col(x.astype(np.float64), spec.kernel, spec.dilation, stride, n_out)
    p = cols.shape[0]
    acc = np.zeros((p, chunk.row.oc1 - chunk.row.oc0), np.float64)
    macs = 0
    for out, feat, w in chunk.groups:
        xs = cols.reshape(p, -1) if feat is None else cols[..., feat].reshape(p, -1)
        acc[:, out] += xs @ w  # a parts chunk's groups repeat output channels, one per part
        macs += p * w.shape[0] * w.shape[1]
    return np.rint(acc).astype(np.int64), macs


def pool_tile(x: np.ndarray, valid: np.ndarray, kind: str, spec: LayerGeometry, stride, n_out) -> np.ndarray:
    """Max (padding excluded) or window sum (zero padding) per position × channel, int64."""
    if kind == "maxpool":
        x = np.where(valid[:, :, None], x.astype(np.int16), np.int16(MAXPOOL_PAD))
    cols = im2col(x, spec.kernel, spec.dilation, stride, n_out)
    if kind == "maxpool":
        return cols.max(axis=(1, 2)).astype(np.int64)
    return cols.astype(np.int64).sum(axis=(1, 2))


def adaptive_pool_tile(x: np.ndarray, out_hw: tuple[int, int], tile: tuple[int, int, int, int]) -> np.ndarray:
    """Adaptive average pool of output tile (h0, h1, w0, w1) from the whole input plane ``x`` (H × W ×
    channels): per output, the window sum over PyTorch's window [floor(i·H/oh), ceil((i+1)·H/oh)) and
    its quotient by the window's size, rounded half up — by a fixed-point reciprocal
    (``reciprocal_avg_round``), equal to the reference's ``quant.rounding.avg_round`` →
    positions × channels, int64."""
    a, b, c, d = tile
    rows = R.adaptive_windows(x.shape[0], out_hw[0])[a:b]
    cols = R.adaptive_windows(x.shape[1], out_hw[1])[c:d]
    x64 = x.astype(np.int64)
    out = np.empty((len(rows), len(cols), x.shape[2]), np.int64)
    for i, (r0, r1) in enumerate(rows):
        for j, (c0, c1) in enumerate(cols):
            total = x64[r0:r1, c0:c1].sum(axis=(0, 1))
            out[i, j] = reciprocal_avg_round(total, (r1 - r0) * (c1 - c0))
    return out.reshape(-1, x.shape[2])


RECIPROCAL_BITS = 40  # fraction bits of the fixed-point reciprocal; exact while n · 2d < 2**40


def reciprocal_avg_round(total: np.ndarray, d: int) -> np.ndarray:
    """``avg_round(total, d)`` of int8 window sums the way a core divides: by a fixed-point
    reciprocal. The numerator is made non-negative (sum + 128·d ≥ 0 for int8 values), then
    floor(n / 2d) = (n · ceil(2**40 / 2d)) >> 40 — exact because the reciprocal's error times n stays
    below one step (n · 2d < 2**40; a window of up to 2**14 values). Raises past that bound."""
    n = 2 * (np.asarray(total, np.int64) + 128 * d) + d
    if int(n.max(initial=0)) * 2 * d >= 1 << RECIPROCAL_BITS:
        raise ValueError(f"adaptive pool window of {d} values: the {RECIPROCAL_BITS}-bit reciprocal is not exact")
    m = -((-(1 << RECIPROCAL_BITS)) // (2 * d))
    return ((n * m) >> RECIPROCAL_BITS) - 128


def conv_cycles(chunk: Chunk, p: int, taps: int, hw, weight_format: str = "block") -> int:
    """Rule 2 of the time model for one core and tile, from the blocks the core really holds:
    ceil(P / M) × Σ_slabs ceil(kept channels / K) × taps + call overhead (slabs of N channels
    from the chunk's first channel, as its weights are laid out); a core with no kept block does
    not run. (M, K, N): the dense MMUL, or the sparse multiply's for weights in the masked format;
    a ``parts`` chunk runs each part at its own (``timing.part_matmul_shapes``) and sums them."""
    kept = chunk.kept
    total = 0
    for m, k, n in _part_shapes(hw, weight_format):
        slab = np.arange(len(kept)) // n
        per_slab = np.zeros(int(slab[-1]) + 1 if len(slab) else 0, np.int64)
        np.maximum.at(per_slab, slab, kept)
        total += math.ceil(p / m) * int(np.ceil(per_slab / k).sum()) * taps
    if total == 0 or p == 0:
        return 0
    return total + hw.core.kernel_call_overhead_cycles


def _part_shapes(hw, weight_format: str) -> list[tuple[int, int, int]]:
    """(M, K, N) of each weight part: the dense MMUL (block), the sparse multiply's (masked), or for
    ``parts`` the sparse multiply's then the int8 x int4 one (K scaled by the int4 rate)."""
    if weight_format == MASKED:
        return [hw.core.sparse_matmul.shape]
    if weight_format != PARTS:
        return [hw.core.matmul_shape]
    m, k, n = hw.core.matmul_shape
    return [hw.core.sparse_matmul.shape, (m, k * hw.macs_per_cycle("int8xint4") // hw.macs_per_cycle("int8"), n)]


def requantize_conv(acc: np.ndarray, shift: np.ndarray, clamp) -> np.ndarray:
    return R.requantize(acc, shift, tuple(clamp))
