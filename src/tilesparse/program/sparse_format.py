"""The masked weight format the core's sparse matrix multiply reads (UG1603 "Sparse Matrix
Multiplication"), and the per-layer weight formats of a program.

A layer's weights are packed in one of ``WEIGHT_FORMATS``:

* ``block`` — the block format of ``program.packing``: block bitmap, kept int8 blocks, bias.
* ``parts`` — an SDQ layer's two parts in one chunk (``program.parts_format``).
* ``masked`` — the same chunk with its kept-block bytes compressed for the sparse multiply: every
  ``chunk_bytes`` (32) bytes of the kept-block stream become a ``mask_bytes`` (4) mask, one bit per
  original byte, least significant bit first, followed by exactly ``payload_bytes`` (16) bytes —
  the bytes whose bit is set, in order — padded to 32-bit words: 20 bytes per 32. The hardware
  needs the sparsity to be exactly 50 %: every ``group_bytes`` (4) consecutive bytes keep
  ``max_nonzero_per_group`` (2) bytes, the non-zero ones and then, where a group has fewer, its
  first zero bytes (which stay zero in the payload). A ragged last chunk is padded with zero bytes.

**The order along K.** The kept-block stream is the block format's: kept blocks in bitmap order,
each ``[o][ky][kx][i]``. For one output channel a block's bytes are its K values (taps × input
channels, input channel fastest) in a row, so 4 consecutive bytes are 4 consecutive input channels
of one output channel at one kernel tap, and the hardware's rule (at most 2 non-zero of every 4
consecutive bytes) is the N:M rule along input channels (``patterns.NM``, axis ``in``) with runs
starting at multiples of 4 — whenever block widths are multiples of 4, as ``masked_eligible``
requires. The 16 × 8 sparse B operand of ``mul_4x16_16x8`` is then 8 output channels × 16
consecutive K values of that stream (two taps of an 8-wide block column, or two block columns of
a 1×1 conv).
"""

from __future__ import annotations

import numpy as np

from tilesparse.hw import SparseMatmulConfig
from tilesparse.program.geometry import WEIGHT_FORMATS

__all__ = ["BLOCK", "MASKED", "PARTS", "WEIGHT_FORMATS", "WORD_BYTES", "decode_masked", "encode_masked", "group_excess",
           "masked_nbytes", "pad_words"]

BLOCK, MASKED, PARTS = WEIGHT_FORMATS
WORD_BYTES = 4  # compressed chunks and the bitmap before them are 32-bit aligned


def pad_words(n: int | np.ndarray) -> int | np.ndarray:
    """``n`` bytes rounded up to whole 32-bit words."""
    return -(-n // WORD_BYTES) * WORD_BYTES


def _payload_padded(sm: SparseMatmulConfig) -> int:
    return int(pad_words(sm.payload_bytes))


def masked_nbytes(n: int | np.ndarray, sm: SparseMatmulConfig) -> int | np.ndarray:
    """Bytes of ``n`` stream bytes in the masked format: whole chunks of mask + padded payload.

    >>> from tilesparse.hw import SparseMatmulConfig
    >>> masked_nbytes(32, SparseMatmulConfig()), masked_nbytes(33, SparseMatmulConfig())
    (20, 40)
    """
    return -(-n // sm.chunk_bytes) * (sm.mask_bytes + _payload_padded(sm))


def group_excess(data: np.ndarray, sm: SparseMatmulConfig) -> int:
    """How many groups of ``group_bytes`` consecutive bytes of ``data`` (from its first byte; a
    ragged last group padded with zeros) hold more non-zero bytes than the rule allows."""
    flat = np.ascontiguousarray(data).reshape(-1)
    if flat.dtype.itemsize != 1:
        raise TypeError(f"group_excess reads bytes (int8 / uint8), got {flat.dtype}")
    g = sm.group_bytes
    nz = np.zeros(-(-flat.size // g) * g, bool)
    nz[:flat.size] = flat != 0
    return int((nz.reshape(-1, g).sum(axis=1) > sm.max_nonzero_per_group).sum())


def _chunks(data: bytes, sm: SparseMatmulConfig) -> np.ndarray:
    raw = np.frombuffer(data, np.uint8)
    c = sm.chunk_bytes
    out = np.zeros(-(-raw.size // c) * c, np.uint8)
    out[:raw.size] = raw
    return out.reshape(-1, c)


def encode_masked(data: bytes, sm: SparseMatmulConfig) -> bytes:
    """``data`` in the masked format (module doc); ``ValueError`` if a group breaks the rule.

    >>> from tilesparse.hw import SparseMatmulConfig
    >>> sm = SparseMatmulConfig()
    >>> out = encode_masked(bytes([0, 5, 0, 7] * 8), sm)
    >>> len(out), out[:4].hex(), out[4:8]
    (20, 'aaaaaaaa', b'\\x05\\x07\\x05\\x07')
    """
    bad = group_excess(np.frombuffer(data, np.uint8), sm)
    if bad:
        raise ValueError(f"{bad} groups of {sm.group_bytes} consecutive weight bytes keep more than "
                         f"{sm.max_nonzero_per_group} non-zero bytes; the sparse multiply cannot read them")
    ch = _chunks(data, sm)
    if not ch.size:
        return b""
    n, c, g, keep = ch.shape[0], sm.chunk_bytes, sm.group_bytes, sm.max_nonzero_per_group
    grp = ch.reshape(n, c // g, g)
    # per group: the non-zero bytes first, then the lowest-index zeros; keep exactly ``keep``
    rank = np.argsort(np.where(grp != 0, 0, 1) * g + np.arange(g), axis=-1, kind="stable")[..., :keep]
    in_group = np.zeros(grp.shape, bool)
    np.put_along_axis(in_group, rank, True, axis=-1)
    sel = in_group.reshape(n, c)
    mask = np.packbits(sel, axis=1, bitorder="little")
    payload = np.zeros((n, _payload_padded(sm)), np.uint8)
    payload[:, :sm.payload_bytes] = ch[sel].reshape(n, sm.payload_bytes)
    return np.concatenate([mask, payload], axis=1).tobytes()


def decode_masked(buf: bytes, n: int, sm: SparseMatmulConfig) -> bytes:
    """The ``n`` original bytes of a masked stream (the inverse of ``encode_masked``);
    ``ValueError`` naming the chunk when a mask does not select exactly ``payload_bytes`` bytes
    or the buffer is not the size ``n`` needs."""
    want = int(masked_nbytes(n, sm))
    if len(buf) != want:
        raise ValueError(f"masked weights: {len(buf)} B, {n} original bytes need {want} B")
    if not n:
        return b""
    per = sm.mask_bytes + _payload_padded(sm)
    rec = np.frombuffer(buf, np.uint8).reshape(-1, per)
    sel = np.unpackbits(rec[:, :sm.mask_bytes], axis=1, bitorder="little").astype(bool)
    counts = sel.sum(axis=1)
    if (counts != sm.payload_bytes).any():
        i = int(np.flatnonzero(counts != sm.payload_bytes)[0])
        raise ValueError(f"masked weights: chunk {i} selects {int(counts[i])} bytes, expected {sm.payload_bytes}")
    out = np.zeros(sel.shape, np.uint8)
    out[sel] = rec[:, sm.mask_bytes:sm.mask_bytes + sm.payload_bytes].reshape(-1)
    return out.reshape(-1)[:n].tobytes()
