"""Compressed weights: packing a conv's kept blocks into chunks and counting their bytes.

The chunk format (bitmap, kept int8 blocks, bias in the last input-channel chunk) and its
packer/unpacker are the program's: ``tilesparse.program.packing`` describes them and is
re-exported here. At 50 % sparsity the bitmap costs one bit per 64·taps dense bytes, so a 1×1
conv packs to 50.2 % of its dense bytes.
"""

from __future__ import annotations

import math

import numpy as np

from tilesparse.compiler.cache import CompileCache, memo
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


def int8_weights(w: np.ndarray, cache: CompileCache | None = None) -> tuple[np.ndarray, bool]:
    """The int8 weights to pack and whether they came from the quantizer. A float graph (front end
    run with ``quantized=False``) is packed with a per-tensor power-of-two scale so that its
    program has the right sizes; such a program is marked not executable. ``cache``: the
    compile's memo (one graph compiled for several arrays with one cache converts each weight once)."""
    if w.dtype == np.int8:
        return w, True
    return memo(cache, "int8", w, id(w), lambda: _to_int8(w)), False


INT8_SLICE = 1 << 16  # weights converted per pass: the temporary stays in cache (VGG16: 138 M weights)


def _to_int8(w: np.ndarray) -> np.ndarray:
    amax = max(float(w.max()), -float(w.min())) or 1.0  # max |w| without an |w| temporary
    exp = math.ceil(math.log2(amax / 127.0))
    scale = 2.0 ** exp
    flat = w.reshape(-1)
    w8 = np.empty(flat.shape, np.int8)
    buf = np.empty(min(INT8_SLICE, flat.size), np.result_type(w, scale))  # the dtype of w / scale
    for i in range(0, flat.size, INT8_SLICE):  # rint(w / scale) clipped, a slice at a time
        q = buf[:min(INT8_SLICE, flat.size - i)]
        np.divide(flat[i:i + INT8_SLICE], scale, out=q)
        np.rint(q, out=q)
        np.clip(q, -128, 127, out=q)
        w8[i:i + INT8_SLICE] = q
    w8 = w8.reshape(w.shape)
    w8.flags.writeable = False  # may be shared through a cache
    return w8


def dense_weight_bytes(spec: LayerSpec) -> int:
    """int8 bytes of the dense weight O × I_g × kh × kw."""
    return spec.co * (spec.ci // spec.groups) * spec.taps
