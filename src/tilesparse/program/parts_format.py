"""The ``parts`` weight format: an SDQ layer's two weight parts in one chunk, accumulated by one COMP.

An SDQ conv (``quant.sdq_graph``) computes acc = (Σ x·sparse) << s_sparse + (Σ x·dense) << s_dense
+ bias. Its chunk packs both parts over the same kept blocks (the layer's block bitmap), little-endian:

1. **bitmap** — as the block format's, padded to a 32-bit word;
2. **sparse part** — the kept-block stream of the int8 sparse codes in the sparse multiply's masked
   format (``program.sparse_format``: 20 bytes per 32), read at the sparse rate;
3. **dense part** — the kept-block stream of the dense codes as int4 nibbles (``encode_int4``: byte
   j holds element 2j in its low nibble and 2j+1 in its high one, two's complement), padded to a
   32-bit word, read at the int8 × int4 rate (``hw.macs_per_cycle("int8xint4")``);
4. **bias** — int32 per output channel, only in the last input-channel chunk.

The shifts s_sparse, s_dense travel in the layer record (``attrs["parts_shifts"]``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["INT4_MAX", "INT4_MIN", "decode_int4", "encode_int4", "int4_nbytes"]

INT4_MIN, INT4_MAX = -8, 7


def int4_nbytes(n: int | np.ndarray) -> int | np.ndarray:
    """Bytes of ``n`` int4 values, two per byte, padded to a 32-bit word.

    >>> int4_nbytes(1), int4_nbytes(8), int4_nbytes(9)
    (4, 4, 8)
    """
    return -(-n // 8) * 4


def encode_int4(values: np.ndarray) -> bytes:
    """Int4 nibbles of ``values`` (any integer dtype, each in [-8, 7]); ``ValueError`` naming the first
    value out of range.

    >>> encode_int4(np.array([1, -1, 7, -8], np.int8)).hex()
    'f1870000'
    """
    v = np.asarray(values).reshape(-1).astype(np.int64)
    bad = np.flatnonzero((v < INT4_MIN) | (v > INT4_MAX))
    if bad.size:
        raise ValueError(f"int4 part: value {int(v[bad[0]])} at {int(bad[0])} is outside [{INT4_MIN}, {INT4_MAX}]")
    nib = np.zeros(int(int4_nbytes(v.size)) * 2, np.uint8)
    nib[:v.size] = (v & 0xF).astype(np.uint8)
    return (nib[0::2] | (nib[1::2] << 4)).tobytes()


def decode_int4(buf: bytes, n: int) -> np.ndarray:
    """The ``n`` int8 values of an int4 stream (the inverse of ``encode_int4``); ``ValueError`` if the
    buffer is not the size ``n`` needs."""
    want = int(int4_nbytes(n))
    if len(buf) != want:
        raise ValueError(f"int4 part: {len(buf)} B, {n} values need {want} B")
    raw = np.frombuffer(buf, np.uint8)
    nib = np.empty(raw.size * 2, np.int16)
    nib[0::2], nib[1::2] = raw & 0xF, raw >> 4
    return np.where(nib >= 8, nib - 16, nib)[:n].astype(np.int8)
