"""Compressed weights: packing a conv's kept blocks into chunks and counting their bytes.

The chunk format and its packer/unpacker are the program's (``tilesparse.program.packing``,
re-exported here). A *chunk* is the weight slice one core holds at a time: output channels [oc0, oc1) × input-channel
blocks [cb0, cb1) of its group × the whole kernel. Its packed form (docs/program.md, "weight
chunk") is, little-endian, with no padding between fields:

1. **bitmap** — one bit per (block row, block column) of the chunk, block rows in channel order,
   row-major, least significant bit first (``np.packbits(..., bitorder="little")``), padded to a
   whole byte. A block row is a mask block row clipped to [oc0, oc1).
2. **blocks** — for each set bit in bitmap order: the int8 block as ``[o][ky][kx][i]`` (C order),
   ``o`` over the block row's channels, ``i`` over the block column's channels (a ragged last
   block column is narrower, never zero-padded).
3. **bias** — only in the last input-channel chunk: int32 per output channel of [oc0, oc1).

At 50 % sparsity the bitmap costs one bit per 64·taps dense bytes, so a 1×1 conv packs to
50.2 % of its dense bytes.
"""

from __future__ import annotations

import math
import weakref

import numpy as np

from tilesparse.compiler.layers import LayerSpec
from tilesparse.program.layout import ACC_BYTES
from tilesparse.program.packing import (
    BITS_PER_BYTE,
    ChunkGeometry,
    chunk_geometry,
    pack_chunk,
    piece_bounds,
    unpack_chunk,
)

__all__ = [
    "BITS_PER_BYTE",
    "ChunkGeometry",
    "chunk_geometry",
    "chunk_nbytes",
    "dense_weight_bytes",
    "int8_weights",
    "pack_chunk",
    "piece_bounds",
    "unpack_chunk",
]


def chunk_nbytes(spec: LayerSpec, geo: ChunkGeometry, with_bias: bool) -> tuple[int, int, int]:
    """(bitmap bytes, block bytes, bias bytes) of a packed chunk."""
    assert spec.mask is not None
    keep = spec.mask[geo.rows][:, geo.cb0:geo.cb1]
    heights = geo.row_ch[:, 1] - geo.row_ch[:, 0]
    blocks = int((heights[:, None] * keep * geo.col_w[None, :]).sum()) * spec.taps
    bitmap = math.ceil(keep.size / BITS_PER_BYTE)
    bias = (geo.oc1 - geo.oc0) * ACC_BYTES if with_bias else 0
    return bitmap, blocks, bias


def int8_weights(w: np.ndarray) -> tuple[np.ndarray, bool]:
    """The int8 weights to pack and whether they came from the quantizer. A float graph (front end
    run with ``quantized=False``) is packed with a per-tensor power-of-two scale so that its
    program has the right sizes; such a program is marked not executable."""
    if w.dtype == np.int8:
        return w, True
    hit = _INT8_MEMO.get(id(w))
    if hit is not None and hit[0]() is w:  # the same live array (one graph compiled for many arrays)
        return hit[1], False
    amax = float(np.abs(w).max()) or 1.0
    exp = math.ceil(math.log2(amax / 127.0))
    w8 = np.clip(np.rint(w / 2.0 ** exp), -128, 127).astype(np.int8)
    w8.flags.writeable = False  # shared by every compile of this graph
    if len(_INT8_MEMO) >= _INT8_MEMO_MAX:
        _INT8_MEMO.clear()
    _INT8_MEMO[id(w)] = (weakref.ref(w), w8)
    return w8, False


_INT8_MEMO: dict[int, tuple[weakref.ref, np.ndarray]] = {}
_INT8_MEMO_MAX = 512  # weight tensors; a network has about a hundred


def dense_weight_bytes(spec: LayerSpec) -> int:
    """int8 bytes of the dense weight O × I_g × kh × kw."""
    return spec.co * (spec.ci // spec.groups) * spec.taps
