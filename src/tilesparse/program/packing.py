"""The packed weight chunk format: only the kept blocks of each chunk, with a block bitmap.

A *chunk* is the weight slice one core holds at a time: output channels [oc0, oc1) × input-channel
blocks [cb0, cb1) of its group × the whole kernel. Its packed form (docs/program.md, "weight
chunk") is, little-endian, with no padding between fields:

1. **bitmap** — one bit per (block row, block column) of the chunk, block rows in channel order,
   row-major, least significant bit first (``np.packbits(..., bitorder="little")``), padded to a
   whole byte. A block row is a mask block row clipped to [oc0, oc1).
2. **blocks** — for each set bit in bitmap order: the int8 block as ``[o][ky][kx][i]`` (C order),
   ``o`` over the block row's channels, ``i`` over the block column's channels (a ragged last
   block column is narrower, never zero-padded).
3. **bias** — only in the last input-channel chunk: int32 per output channel of [oc0, oc1).

A ``lut`` layer's one chunk is its table (``pack_table``): ``LUT_TABLE_BYTES`` int8 entries, entry
``q + 128`` the output for the int8 input ``q``.

At 50 % sparsity the bitmap costs one bit per 64·taps dense bytes, so a 1×1 conv packs to
50.2 % of its dense bytes.

A layer whose ``weight_format`` is ``masked`` (``program.sparse_format``) packs the same chunk
with the bitmap padded to a 32-bit word and the kept-block bytes (2.) compressed in the sparse
multiply's 256-bit masked chunks (20 bytes per 32); the bias follows as above. A layer in the
``parts`` format (an SDQ layer, ``program.parts_format``) packs both its weight parts in one chunk
(``pack_parts_chunk`` / ``split_parts``). ``spec`` below
is a ``LayerGeometry`` or the compiler's ``LayerSpec`` (``pack_chunk`` needs the latter's
kept-block mask).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from tilesparse.hw import SparseMatmulConfig
from tilesparse.program.geometry import WindowRules
from tilesparse.program.parts_format import decode_int4, encode_int4, int4_nbytes
from tilesparse.program.sparse_format import (
    BLOCK,
    MASKED,
    PARTS,
    decode_masked,
    encode_masked,
    masked_nbytes,
    pad_words,
)

__all__ = ["BITS_PER_BYTE", "LUT_INDEX_BIAS", "LUT_TABLE_BYTES", "PIECE_ALIGN", "ChunkGeometry", "MaskedLayer",
           "chunk_geometry", "kept_stream_bytes", "masked_to_block", "pack_chunk", "pack_parts_chunk", "pack_table",
           "packed_nbytes", "piece_bounds", "split_parts", "unpack_chunk", "unpack_table"]

BITS_PER_BYTE = 8
PIECE_ALIGN = 4  # weight pieces start on 32-bit words (the DMA's unit)
LUT_TABLE_BYTES = 256  # a lut layer's table: one int8 entry per int8 input
LUT_INDEX_BIAS = 128  # entry of input q: q + 128 (input -128 is entry 0)


def pack_table(table: np.ndarray) -> bytes:
    """The packed chunk of a ``lut`` layer: its ``LUT_TABLE_BYTES`` int8 entries in order."""
    t = np.asarray(table)
    if t.shape != (LUT_TABLE_BYTES,) or t.dtype != np.int8:
        raise ValueError(f"lookup table is {t.dtype} {t.shape}, expected int8 ({LUT_TABLE_BYTES},)")
    return t.tobytes()


def unpack_table(buf: bytes) -> np.ndarray:
    """The int8 table of a ``lut`` chunk (``pack_table``); ValueError if the bytes are not one table."""
    if len(buf) != LUT_TABLE_BYTES:
        raise ValueError(f"{len(buf)} bytes, a lookup table is {LUT_TABLE_BYTES}")
    return np.frombuffer(buf, np.int8).copy()


def piece_bounds(nbytes: np.ndarray | int, pieces: int) -> np.ndarray:
    """Byte offsets ``[b_0 = 0, …, b_P = nbytes]`` (last axis) splitting chunks of ``nbytes``
    into ``pieces`` nearly equal word-aligned ranges (docs/program.md, "weight pieces"); a
    chunk smaller than ``pieces`` words leaves its last pieces empty."""
    n = np.asarray(nbytes, dtype=np.int64)[..., None]
    i = np.arange(pieces + 1, dtype=np.int64)
    step = pieces * PIECE_ALIGN
    return np.minimum(n, PIECE_ALIGN * -(-(i * n) // step))


@dataclass(frozen=True)
class ChunkGeometry:
    """Block rows / columns of a chunk, as index arrays into the layer's mask."""

    oc0: int
    oc1: int
    cb0: int
    cb1: int
    rows: np.ndarray  # mask block-row index of each block row of the chunk
    row_ch: np.ndarray  # (start, stop) output channels of each block row, shape (n, 2)
    col_w: np.ndarray  # channel width of each block column


def _row_index(spec: WindowRules, o: np.ndarray) -> np.ndarray:
    og, bo = spec.co // spec.groups, spec.block[0]
    g, r = np.divmod(o, og)
    return g * math.ceil(og / bo) + r // bo


def chunk_geometry(spec: WindowRules, oc0: int, oc1: int, cb0: int, cb1: int) -> ChunkGeometry:
    if spec.groups == 1 and oc1 > oc0:  # block rows of bo channels from channel 0: no per-channel index
        return _plain_geometry(spec, oc0, oc1, cb0, cb1)
    o = np.arange(oc0, oc1)
    ridx = _row_index(spec, o)
    starts = np.flatnonzero(np.r_[True, ridx[1:] != ridx[:-1]]) if len(o) else np.zeros(0, int)
    stops = np.r_[starts[1:], len(o)].astype(int)
    row_ch = np.stack([starts + oc0, stops + oc0], axis=1) if len(o) else np.zeros((0, 2), int)
    ig, bi = spec.ci // spec.groups, spec.block[1]
    col_w = np.minimum(bi, ig - np.arange(cb0, cb1) * bi)
    return ChunkGeometry(oc0, oc1, cb0, cb1, ridx[starts] if len(o) else ridx, row_ch, col_w)


def _plain_geometry(spec: WindowRules, oc0: int, oc1: int, cb0: int, cb1: int) -> ChunkGeometry:
    """``chunk_geometry`` of a non-empty chunk of an ungrouped layer, from the block-row bounds
    alone (the compiler builds one geometry per chunk: VGG16 ~45 000)."""
    bo, bi = spec.block
    rows = np.arange(oc0 // bo, (oc1 - 1) // bo + 1)
    row_ch = np.empty((len(rows), 2), np.int64)
    row_ch[:, 0] = rows * bo
    row_ch[0, 0] = oc0
    row_ch[:-1, 1] = row_ch[1:, 0]
    row_ch[-1, 1] = oc1
    col_w = np.minimum(bi, spec.ci - np.arange(cb0, cb1) * bi)
    return ChunkGeometry(oc0, oc1, cb0, cb1, rows, row_ch, col_w)


class MaskedLayer(Protocol):
    """What ``pack_chunk`` reads of a layer: its block shape and kept-block mask (the compiler's
    ``LayerSpec``; a program's ``LayerGeometry`` keeps no mask, the packed bitmap holds it)."""

    @property
    def block(self) -> tuple[int, int]: ...

    @property
    def mask(self) -> np.ndarray | None: ...

    @property
    def weight_format(self) -> str: ...


def packed_nbytes(weight_format: str, bitmap: np.ndarray | int, blocks: np.ndarray | int, bias: np.ndarray | int,
                  sparse: SparseMatmulConfig | None) -> np.ndarray:
    """Bytes of packed chunks from their bitmap, kept-block and bias bytes (arrays or ints): the
    block format's sum, or for ``masked`` the word-padded bitmap and the compressed blocks."""
    if weight_format == BLOCK:
        return np.asarray(bitmap + blocks + bias)
    assert sparse is not None, "the masked format needs the array's sparse_matmul description"
    if weight_format == PARTS:  # masked int8 part + int4 part over the same kept blocks
        return np.asarray(pad_words(bitmap) + masked_nbytes(blocks, sparse) + int4_nbytes(blocks) + bias)
    return np.asarray(pad_words(bitmap) + masked_nbytes(blocks, sparse) + bias)


def _sparse_of(spec: object, sparse: SparseMatmulConfig | None) -> SparseMatmulConfig | None:
    fmt = getattr(spec, "weight_format", BLOCK)
    if fmt == BLOCK:
        return None
    if fmt not in (MASKED, PARTS):
        raise ValueError(f"layer {getattr(spec, 'name', '?')}: unknown weight format {fmt!r}")
    if sparse is None or not sparse.enabled:
        raise ValueError(f"layer {getattr(spec, 'name', '?')}: weights in the {fmt} format need an array whose "
                         "core.sparse_matmul is enabled")
    return sparse


def pack_chunk(spec: MaskedLayer, w8: np.ndarray, bias: np.ndarray | None, geo: ChunkGeometry,
               sparse: SparseMatmulConfig | None = None) -> bytes:
    """Packed bytes of one chunk (module doc). ``w8``: int8 weight O × I_g × kh × kw; ``spec``:
    the layer with its kept-block ``mask`` and ``weight_format`` (the compiler's ``LayerSpec``);
    ``sparse``: the array's ``core.sparse_matmul`` (needed by the masked format)."""
    sm = _sparse_of(spec, sparse)
    raw = _pack_block(spec, w8, bias, geo)
    if sm is None:
        return raw
    nbit = math.ceil(len(geo.row_ch) * (geo.cb1 - geo.cb0) / BITS_PER_BYTE)
    nbias = 4 * (geo.oc1 - geo.oc0) if bias is not None else 0
    blocks = raw[nbit:len(raw) - nbias]
    bitmap = raw[:nbit] + bytes(int(pad_words(nbit)) - nbit)
    return bitmap + encode_masked(blocks, sm) + raw[len(raw) - nbias:]


def pack_parts_chunk(spec: MaskedLayer, w_sparse: np.ndarray, w_dense: np.ndarray, bias: np.ndarray | None,
                     geo: ChunkGeometry, sparse: SparseMatmulConfig | None) -> bytes:
    """Packed bytes of one chunk in the ``parts`` format (``program.parts_format``): the int8
    ``w_sparse`` masked, the ``w_dense`` codes (in [-8, 7]) as int4 nibbles, both O × I_g × kh × kw."""
    sm = _sparse_of(spec, sparse)
    assert sm is not None
    raw_s = _pack_block(spec, w_sparse, bias, geo)
    raw_d = _pack_block(spec, w_dense, None, geo)
    nbit = math.ceil(len(geo.row_ch) * (geo.cb1 - geo.cb0) / BITS_PER_BYTE)
    nbias = 4 * (geo.oc1 - geo.oc0) if bias is not None else 0
    bitmap = raw_s[:nbit] + bytes(int(pad_words(nbit)) - nbit)
    dense = np.frombuffer(raw_d[nbit:], np.int8)
    return (bitmap + encode_masked(raw_s[nbit:len(raw_s) - nbias], sm) + encode_int4(dense)
            + raw_s[len(raw_s) - nbias:])


def split_parts(spec: WindowRules, buf: bytes, geo: ChunkGeometry, with_bias: bool,
                sparse: SparseMatmulConfig | None) -> tuple[bytes, bytes]:
    """A ``parts`` chunk as two block-format chunks (the sparse part with the bias, the dense part
    without), each part decoded from its own bytes; ``ValueError`` when the bytes do not fit."""
    sm = _sparse_of(spec, sparse)
    assert sm is not None
    nbit, keep = _chunk_bitmap(buf, geo)
    n = kept_stream_bytes(spec, keep, geo)
    a = int(pad_words(nbit))
    b = a + int(masked_nbytes(n, sm))
    c = b + int(int4_nbytes(n))
    nbias = 4 * (geo.oc1 - geo.oc0) if with_bias else 0
    if len(buf) != c + nbias:
        raise ValueError(f"chunk of {getattr(spec, 'name', 'the layer')}: {len(buf)} bytes, parts layout "
                         f"accounts for {c + nbias}")
    head = buf[:nbit]
    return head + decode_masked(buf[a:b], n, sm) + buf[c:], head + decode_int4(buf[b:c], n).tobytes()


def _chunk_bitmap(buf: bytes, geo: ChunkGeometry) -> tuple[int, np.ndarray]:
    """(bytes of the block bitmap at the head of a chunk, the bitmap: block rows × block columns)."""
    nrows, ncols = len(geo.row_ch), geo.cb1 - geo.cb0
    nbit = math.ceil(nrows * ncols / BITS_PER_BYTE)
    if len(buf) < pad_words(nbit):
        raise ValueError(f"{len(buf)} B cannot hold a {nrows}x{ncols} block bitmap")
    bits = np.unpackbits(np.frombuffer(buf[:nbit], np.uint8), bitorder="little")
    return nbit, bits[: nrows * ncols].reshape(nrows, ncols).astype(bool)


def kept_stream_bytes(spec: WindowRules, keep: np.ndarray, geo: ChunkGeometry) -> int:
    """Bytes of a chunk's kept blocks (its bitmap ``keep``, block rows × block columns)."""
    heights = geo.row_ch[:, 1] - geo.row_ch[:, 0]
    return int((heights[:, None] * keep * np.asarray(geo.col_w)[None, :]).sum()) * spec.taps


def masked_to_block(spec: WindowRules, buf: bytes, geo: ChunkGeometry, with_bias: bool,
                    sparse: SparseMatmulConfig | None) -> bytes:
    """A chunk of the layer's format as the block format's bytes (the masked chunks decoded;
    a block-format chunk is returned as is). ``ValueError`` when the bytes do not fit the layout."""
    if getattr(spec, "weight_format", BLOCK) == PARTS:
        raise ValueError(f"layer {getattr(spec, 'name', '?')}: a parts chunk holds two weights (split_parts)")
    sm = _sparse_of(spec, sparse)
    if sm is None:
        return buf
    nbit, keep = _chunk_bitmap(buf, geo)
    n = kept_stream_bytes(spec, keep, geo)
    start = int(pad_words(nbit))
    stop = start + int(masked_nbytes(n, sm))
    nbias = 4 * (geo.oc1 - geo.oc0) if with_bias else 0
    if len(buf) != stop + nbias:
        raise ValueError(f"chunk of {getattr(spec, 'name', 'the layer')}: {len(buf)} bytes, masked layout "
                         f"accounts for {stop + nbias}")
    return buf[:nbit] + decode_masked(buf[start:stop], n, sm) + buf[stop:]


def _pack_block(spec: MaskedLayer, w8: np.ndarray, bias: np.ndarray | None, geo: ChunkGeometry) -> bytes:
    assert spec.mask is not None
    keep = spec.mask[geo.rows][:, geo.cb0:geo.cb1]
    parts = [np.packbits(keep.ravel(), bitorder="little").tobytes()]
    bi = spec.block[1]
    heights = geo.row_ch[:, 1] - geo.row_ch[:, 0]
    if len(heights) and (heights == heights[0]).all() and (geo.col_w == bi).all():
        # regular chunk: gather every kept block at once, in bitmap order
        h, n = int(heights[0]), len(geo.col_w)
        sub = w8[geo.oc0:geo.oc1, geo.cb0 * bi:geo.cb1 * bi]
        kh, kw = sub.shape[2:]
        blocks = sub.reshape(len(heights), h, n, bi, kh, kw).transpose(0, 2, 1, 4, 5, 3)
        parts.append(np.ascontiguousarray(blocks[keep]).tobytes())
        if bias is not None:
            parts.append(np.asarray(bias[geo.oc0:geo.oc1], dtype="<i4").tobytes())
        return b"".join(parts)
    for r, (a, b) in enumerate(geo.row_ch):
        for j in np.flatnonzero(keep[r]):
            c0 = (geo.cb0 + j) * bi
            blk = w8[a:b, c0:c0 + geo.col_w[j]]  # o × i × ky × kx
            parts.append(np.ascontiguousarray(blk.transpose(0, 2, 3, 1)).tobytes())
    if bias is not None:
        parts.append(np.asarray(bias[geo.oc0:geo.oc1], dtype="<i4").tobytes())
    return b"".join(parts)


def unpack_chunk(spec: WindowRules, buf: bytes, geo: ChunkGeometry, with_bias: bool,
                 sparse: SparseMatmulConfig | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Inverse of ``pack_chunk``: the dense int8 weights of the chunk (zeros where blocks were
    skipped), shape (oc1-oc0) × (channels of [cb0, cb1)) × kh × kw, and the bias if present."""
    buf = masked_to_block(spec, buf, geo, with_bias, sparse)
    kh, kw = spec.kernel
    nrows, ncols = len(geo.row_ch), geo.cb1 - geo.cb0
    nbit = math.ceil(nrows * ncols / BITS_PER_BYTE)
    bits = np.unpackbits(np.frombuffer(buf[:nbit], np.uint8), bitorder="little")
    keep = bits[: nrows * ncols].reshape(nrows, ncols).astype(bool)
    col0 = np.r_[0, np.cumsum(geo.col_w)]
    out = np.zeros((geo.oc1 - geo.oc0, int(col0[-1]), kh, kw), dtype=np.int8)
    pos = nbit
    for r, (a, b) in enumerate(geo.row_ch):
        for j in np.flatnonzero(keep[r]):
            n = (b - a) * kh * kw * int(geo.col_w[j])
            blk = np.frombuffer(buf[pos:pos + n], np.int8).reshape(b - a, kh, kw, geo.col_w[j])
            out[a - geo.oc0:b - geo.oc0, col0[j]:col0[j + 1]] = blk.transpose(0, 3, 1, 2)
            pos += n
    bias = None
    if with_bias:
        bias = np.frombuffer(buf[pos:pos + 4 * (geo.oc1 - geo.oc0)], "<i4").copy()
        pos += 4 * (geo.oc1 - geo.oc0)
    if pos != len(buf):
        raise ValueError(f"chunk of {getattr(spec, 'name', 'the layer')}: {len(buf)} bytes, "
                         f"layout accounts for {pos}")
    return out, bias
