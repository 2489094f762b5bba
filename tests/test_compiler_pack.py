"""Packed weights: round trip, sizes the time model charges, compression at 50 %."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tilesparse.compiler.layers import LayerSpec
from tilesparse.compiler.pack import (
    chunk_geometry,
    chunk_nbytes,
    pack_chunk,
    unpack_chunk,
)
from tilesparse.compiler.steps import WeightIndex


def _layer(co, ci, k, density, seed, block=(8, 8)):
    rng = np.random.default_rng(seed)
    bo, bi = block
    mask = rng.random((-(-co // bo), -(-ci // bi))) < density
    w = rng.integers(-128, 128, size=(co, ci, k, k)).astype(np.int8)
    full = np.repeat(np.repeat(mask, bo, 0), bi, 1)[:co, :ci]
    spec = LayerSpec("L", "conv", ("x",), ci, 4, 4, co, 4, 4, (k, k), block=block, mask=mask)
    return spec, w, (w * full[:, :, None, None]).astype(np.int8)


@settings(max_examples=60, deadline=None)
@given(co=st.integers(1, 40), ci=st.integers(1, 40), k=st.sampled_from([1, 3]),
       density=st.floats(0, 1), seed=st.integers(0, 1000), data=st.data(),
       block=st.sampled_from([(8, 8), (4, 16), (16, 4)]))
def test_unpack_equals_masked_weights(co, ci, k, density, seed, data, block):
    spec, w, masked = _layer(co, ci, k, density, seed, block)
    o0 = data.draw(st.integers(0, co - 1))
    o1 = data.draw(st.integers(o0 + 1, co))
    ncb = spec.mask.shape[1]
    cb0 = data.draw(st.integers(0, ncb - 1))
    cb1 = data.draw(st.integers(cb0 + 1, ncb))
    bias = np.arange(co, dtype=np.int32) * 7 - 50
    geo = chunk_geometry(spec, o0, o1, cb0, cb1)
    buf = pack_chunk(spec, w, bias, geo)
    got, got_bias = unpack_chunk(spec, buf, geo, with_bias=True)
    bi = block[1]
    np.testing.assert_array_equal(got, masked[o0:o1, cb0 * bi:min(cb1 * bi, ci)])
    np.testing.assert_array_equal(got_bias, bias[o0:o1])
    assert len(buf) == sum(chunk_nbytes(spec, geo, True))
    assert len(buf) == WeightIndex(spec).chunk_bytes(o0, o1, cb0, cb1, True)


def test_half_sparse_packs_to_at_most_52_percent():
    # a 1x1 conv is the worst case for the bitmap overhead (one bit per 64 dense bytes)
    spec, w, _ = _layer(256, 256, 1, 0.5, 0)
    spec.mask[:] = False
    spec.mask.reshape(-1)[::2] = True  # exactly half the blocks
    geo = chunk_geometry(spec, 0, 256, 0, 32)
    packed = len(pack_chunk(spec, w, None, geo))
    assert packed / w.nbytes <= 0.52
    assert packed == w.nbytes // 2 + 32 * 32 // 8  # kept blocks + one bit per block
