"""DMA zero compression of a byte stream (AM020 "Sparsity"; docs/time-model.md, "Activation compression").

The memory-tile and tile DMAs can drop the zero bytes of a buffer on the stream. We model the
format with the hardware description's ``dma_compression`` block: the stream is cut in chunks of
``chunk_bytes`` (32); each chunk travels as a ``mask_bytes`` (4) little-endian bit mask — bit i set
when byte i of the chunk is non-zero — followed by the chunk's non-zero bytes in order, padded with
zeros to a multiple of ``word_bytes`` (4). A last, shorter chunk has mask bits only for its bytes.

Example (one 32-byte chunk with 5 non-zero bytes: 4 mask bytes + 5 data bytes padded to 8 = 12 B):

    >>> import numpy as np
    >>> x = np.zeros(32, np.uint8); x[[0, 3, 4, 9, 31]] = [7, 1, 2, 3, 9]
    >>> enc = encode(x)
    >>> enc.tolist()
    [25, 2, 0, 128, 7, 1, 2, 3, 9, 0, 0, 0]
    >>> bool((decode(enc, 32) == x).all()), compressed_size(x)
    (True, 12)
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np

__all__ = ["MODES", "charged_sizes", "compressed_size", "compression_on", "decide", "decode", "encode",
           "expected_size", "expected_sizes", "hw_format", "min_ratio", "saves", "stream_values", "zero_frac_of"]

MODES = ("auto", "off")  # --act-compression


def _check(chunk_bytes: int, mask_bytes: int, word_bytes: int) -> None:
    if chunk_bytes > 8 * mask_bytes:
        raise ValueError(f"dma_compression: chunk_bytes {chunk_bytes} needs {math.ceil(chunk_bytes / 8)} mask "
                         f"bytes, mask_bytes is {mask_bytes}")


def compressed_size(data: np.ndarray, chunk_bytes: int = 32, mask_bytes: int = 4, word_bytes: int = 4) -> int:
    """Bytes ``encode`` produces for ``data`` (any int8/uint8 array, read flat)."""
    _check(chunk_bytes, mask_bytes, word_bytes)
    x = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
    if x.size == 0:
        return 0
    nnz = (_chunks(x, chunk_bytes) != 0).sum(axis=1)
    return int(nnz.size * mask_bytes + (-(-nnz // word_bytes) * word_bytes).sum())


def _chunks(x: np.ndarray, chunk_bytes: int) -> np.ndarray:
    """The flat uint8 ``x`` as (chunks, chunk_bytes), the last chunk padded with zeros."""
    return np.concatenate([x, np.zeros((-x.size) % chunk_bytes, np.uint8)]).reshape(-1, chunk_bytes)


def encode(data: np.ndarray, chunk_bytes: int = 32, mask_bytes: int = 4, word_bytes: int = 4) -> np.ndarray:
    """The compressed stream (uint8) of ``data`` (int8/uint8, read flat), format in the module doc."""
    _check(chunk_bytes, mask_bytes, word_bytes)
    x = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
    if x.size == 0:
        return np.zeros(0, np.uint8)
    X = _chunks(x, chunk_bytes)
    nz = X != 0
    k = nz.sum(axis=1)
    length = mask_bytes + -(-k // word_bytes) * word_bytes
    start = np.concatenate([[0], np.cumsum(length)[:-1]])
    out = np.zeros(int(length.sum()), np.uint8)
    masks = np.packbits(nz, axis=1, bitorder="little")  # (chunks, ceil(chunk_bytes / 8))
    for j in range(masks.shape[1]):
        out[start + j] = masks[:, j]
    rank = np.cumsum(nz, axis=1) - 1
    rows, cols = np.nonzero(nz)
    out[start[rows] + mask_bytes + rank[rows, cols]] = X[rows, cols]
    return out


def decode(stream: np.ndarray, n: int, chunk_bytes: int = 32, mask_bytes: int = 4,
           word_bytes: int = 4) -> np.ndarray:
    """The ``n`` original bytes (uint8) of a compressed ``stream``; ``ValueError`` if the stream is
    short, has trailing bytes or sets mask bits past the end of the data."""
    _check(chunk_bytes, mask_bytes, word_bytes)
    s = np.ascontiguousarray(stream).view(np.uint8).reshape(-1)
    n_chunks = -(-n // chunk_bytes)
    starts = np.zeros(n_chunks, np.int64)
    masks = np.zeros((n_chunks, chunk_bytes), bool)
    pos = 0
    for c in range(n_chunks):  # each chunk's length depends on its mask: a sequential walk
        size = min(chunk_bytes, n - c * chunk_bytes)
        if pos + mask_bytes > s.size:
            raise ValueError(f"compressed stream: {s.size} B end inside the mask of the chunk at byte "
                             f"{c * chunk_bytes}")
        mask = int.from_bytes(s[pos:pos + mask_bytes].tobytes(), "little")
        if mask >> size:
            raise ValueError(f"compressed stream: the chunk at byte {c * chunk_bytes} ({size} B) has mask "
                             f"bits past its end")
        starts[c] = pos + mask_bytes
        k = mask.bit_count()
        if starts[c] + k > s.size:
            raise ValueError(f"compressed stream: {s.size} B end inside the data of the chunk at byte "
                             f"{c * chunk_bytes}")
        masks[c] = np.unpackbits(s[pos:pos + mask_bytes], bitorder="little")[:chunk_bytes].astype(bool)
        pos = int(starts[c]) + -(-k // word_bytes) * word_bytes
    if pos != s.size:
        raise ValueError(f"compressed stream: {s.size} B, the chunks of {n} B take {pos}")
    out = np.zeros((n_chunks, chunk_bytes), np.uint8)
    rank = np.cumsum(masks, axis=1) - 1
    rows, cols = np.nonzero(masks)
    out[rows, cols] = s[starts[rows] + rank[rows, cols]]
    return out.reshape(-1)[:n]


def expected_size(n: float, zero_frac: float, chunk_bytes: int = 32, mask_bytes: int = 4, word_bytes: int = 4) -> float:
    """Expected compressed bytes of ``n`` bytes of which a fraction ``zero_frac`` is zero, each byte
    zero independently of the others: per chunk its mask plus the expectation of its non-zero
    bytes rounded up to whole words (a binomial count).

    >>> expected_size(64, 0.0), expected_size(64, 1.0), round(expected_size(32, 0.5), 3)
    (72.0, 8.0, 21.5)
    """
    return float(expected_sizes(np.array([n]), zero_frac, chunk_bytes, mask_bytes, word_bytes)[0])


@lru_cache(maxsize=4096)
def _chunk_data(size: int, zero_frac: float, word_bytes: int) -> float:
    """E[ceil(k / word) * word] for k ~ Binomial(size, 1 - zero_frac): a chunk's padded data bytes."""
    p = 1.0 - zero_frac
    return float(sum(math.comb(size, k) * p**k * (1.0 - p) ** (size - k) * (-(-k // word_bytes) * word_bytes)
                     for k in range(size + 1)))


def expected_sizes(values: np.ndarray, zero_frac: float, chunk_bytes: int = 32, mask_bytes: int = 4,
                   word_bytes: int = 4) -> np.ndarray:
    """``expected_size`` of each entry of ``values`` (bytes, e.g. per iteration), float64."""
    if not 0.0 <= zero_frac <= 1.0:
        raise ValueError(f"zero fraction {zero_frac} outside [0, 1]")
    n = np.maximum(np.rint(np.asarray(values, np.float64)), 0).astype(np.int64)
    full, last = np.divmod(n, chunk_bytes)
    lengths, which = np.unique(last, return_inverse=True)
    per_last = np.array([mask_bytes + _chunk_data(int(v), zero_frac, word_bytes) if v else 0.0 for v in lengths])
    size = full * (mask_bytes + _chunk_data(chunk_bytes, zero_frac, word_bytes))
    return size + per_last[which.reshape(-1)].reshape(last.shape)


def saves(n: float, zero_frac: float, chunk_bytes: int = 32, mask_bytes: int = 4, word_bytes: int = 4) -> bool:
    """Whether compressing ``n`` bytes with that zero fraction is expected to send fewer bytes."""
    return expected_size(n, zero_frac, chunk_bytes, mask_bytes, word_bytes) < n


def _fmt(program: Any) -> tuple[int, int, int]:
    return hw_format(program.hw)


def hw_format(hw: Any) -> tuple[int, int, int]:
    """(chunk, mask, word) bytes of an array's ``dma_compression`` format."""
    c = hw.dma_compression
    return c.chunk_bytes, c.mask_bytes, c.word_bytes


def compression_on(hw: Any, mode: str = "auto") -> bool:
    """Whether ``decide`` may compress transfers on this array: ``mode`` "auto", the format
    enabled, and a rule profile that allows it (the paper's used none, ``hw.profiles``)."""
    if mode not in MODES:
        raise ValueError(f"act-compression {mode!r}: expected one of {', '.join(MODES)}")
    from tilesparse.hw import get_profile

    return mode == "auto" and hw.dma_compression.enabled and get_profile(hw.rules).allows("dma_compression")


def charged_raw(values: np.ndarray, zero_frac: float, mask_bytes: int = 4) -> bool:
    """Whether ``charged_sizes`` charges ``values`` raw without computing the compressed sizes:
    nothing is zero, so every chunk of a transfer of n >= 1 bytes (a value rounds to n) sends its n
    bytes and a mask, and compression never sends fewer."""
    return zero_frac == 0 and mask_bytes > 0 and not ((values > 0) & (values <= 0.5)).any()


def charged_sizes(values: np.ndarray, zero_frac: float, chunk_bytes: int = 32, mask_bytes: int = 4,
                  word_bytes: int = 4) -> np.ndarray:
    """The bytes a layer's transfer is charged per iteration (``values``, raw) once compression is
    decided as ``decide`` decides it: compressed (``expected_sizes``) if that sends fewer bytes over
    all iterations, else raw. The compiler's planner prices partitions with it."""
    v = np.asarray(values, np.float64)
    if charged_raw(v, zero_frac, mask_bytes):  # the planner asks this of every candidate of a graph
        return v  # without zero fractions
    comp = expected_sizes(v, zero_frac, chunk_bytes, mask_bytes, word_bytes)
    return comp.reshape(v.shape) if v.sum() > 0 and float(comp.sum()) < float(v.sum()) else v


def min_ratio(zero_frac: float, chunk_bytes: int = 32, mask_bytes: int = 4, word_bytes: int = 4) -> float:
    """A lower bound on charged / raw bytes of any transfer at this zero fraction (for the
    planner's floors): a full chunk's expected ratio — a shorter last chunk carries the same mask
    over fewer bytes, so its ratio is no lower (checked for every length in the tests) — and at
    most 1 (a transfer compression does not shorten stays raw).

    >>> min_ratio(0.0), min_ratio(1.0)
    (1.0, 0.125)
    """
    return min(1.0, (mask_bytes + _chunk_data(chunk_bytes, zero_frac, word_bytes)) / chunk_bytes)


def zero_frac_of(rec: Any, op: str) -> float:
    """The zero fraction of the bytes transfer ``op`` of layer record ``rec`` carries: its inputs'
    for LOADFM (and LOAD), its output's for WRITEFM (and WRITE)."""
    return float(rec.in_zero_frac if op in ("LOAD", "LOADFM") else rec.out_zero_frac)


def stream_values(program: Any, ins: Any) -> np.ndarray:
    """Per iteration, the bytes instruction ``ins`` puts on the busiest stream: ``iter_values``,
    or for a transfer its layer compresses the expected compressed size at the layer's recorded
    zero fraction (docs/time-model.md, "Activation compression")."""
    v = program.iter_values(ins)
    rec = program.layers[ins.layer]
    if ins.op not in rec.compressed:
        return v
    return expected_sizes(v, zero_frac_of(rec, ins.op), *_fmt(program))


def decide(program: Any, mode: str = "auto") -> Any:
    """``program`` with each layer's ``compressed`` transfers chosen: with ``mode`` "off" or an
    array whose ``dma_compression.enabled`` is false, or whose rule profile (``hw.rules``) does not
    allow it (``paper``), none; with "auto" each LOADFM / WRITEFM
    whose expected compressed bytes (its recorded zero fraction, the format's mask and word
    padding) are fewer than its raw bytes. Returns a new Program; ``program`` is unchanged."""
    from dataclasses import replace

    from tilesparse.program.records import COMPRESSIBLE_OPS

    on = compression_on(program.hw, mode)  # the paper's rules profile used none (hw.profiles)
    values: dict[tuple[int, str], list[np.ndarray]] = {}
    if on:
        for ins in program.instrs:
            if ins.op in COMPRESSIBLE_OPS:
                values.setdefault((ins.layer, ins.op), []).append(program.iter_values(ins))
    layers = []
    for li, rec in enumerate(program.layers):
        chosen = tuple(op for op in COMPRESSIBLE_OPS if (li, op) in values and _saves_all(
            program, values[(li, op)], zero_frac_of(rec, op)))
        layers.append(replace(rec, compressed=chosen))
    return replace(program, layers=tuple(layers))


def _saves_all(program: Any, values: list[np.ndarray], zero_frac: float) -> bool:
    """Compressing every iteration of a layer's transfers (their per-iteration ``values``) sends
    fewer bytes in total."""
    v = np.concatenate(values)
    return v.sum() > 0 and float(expected_sizes(v, zero_frac, *_fmt(program)).sum()) < float(v.sum())
