"""SDQ: the parts sum exactly to the dequantized weight, the sparse part obeys its pattern, the
integer layer equals PyTorch on the dequantized weight, and outliers make the split pay."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tilesparse.errors import ConfigError
from tilesparse.patterns import NM, Block
from tilesparse.quant.sdq import sdq, sdq_conv2d_int, sdq_linear_int


def _heavy(shape, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g) * 0.05
    w.view(-1)[torch.randperm(w.numel(), generator=g)[: max(1, w.numel() // 50)]] *= 40  # 2 % outliers
    return w


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 6), st.sampled_from([8, 16, 24]), st.sampled_from([(1, 8), (2, 8), (1, 4)]),
       st.integers(0, 2**16))
def test_parts_sum_exactly_and_obey_their_ranges(rows, cols, nm, seed):
    w = _heavy((rows, cols), seed)
    d = sdq(w, NM(*nm))
    assert NM(*nm).check(torch.from_numpy(d.sparse != 0), (rows, cols)) == []
    assert d.sparse.min() >= -128 and d.sparse.max() <= 127
    assert d.dense.min() >= -8 and d.dense.max() <= 7
    # exact: q * 2**e by hand, in Python integers / fractions
    for (i, j) in [(0, 0), (rows - 1, cols - 1)]:
        want = int(d.sparse[i, j]) * 2.0 ** d.sparse_exp + int(d.dense[i, j]) * 2.0 ** d.dense_exp
        assert d.dequantized()[i, j] == want
    assert np.array_equal(d.sparse_real() + d.dense_real(), d.dequantized())


def test_small_example_by_hand():
    d = sdq(torch.tensor([[8.0, 0.5, -0.25, 0.1]]), NM(1, 4))
    assert d.sparse_exp == -3 and d.dense_exp == -3  # 8 / 2**-3 = 64; 0.5 / 2**-3 = 4 <= 7
    assert d.sparse.tolist() == [[64, 0, 0, 0]] and d.dense.tolist() == [[0, 4, -2, 1]]


def test_outliers_make_the_split_beat_plain_int4():
    w = _heavy((64, 64), 3).numpy()
    d = sdq(torch.from_numpy(w), NM(1, 8))
    from tilesparse.quant.rounding import dequantize, pow2_exponent, quantize_real

    e = pow2_exponent(float(np.abs(w).max()), 7)
    plain = dequantize(quantize_real(w, e, -8, 7), e)
    assert np.linalg.norm(w - d.dequantized()) < 0.75 * np.linalg.norm(w - plain)


def test_integer_layers_equal_pytorch_on_the_dequantized_weight():
    rng = np.random.default_rng(0)
    w = _heavy((8, 16), 1)
    d = sdq(w, Block(1, 8, 0.875))
    x = rng.integers(-128, 128, size=(5, 16))
    acc, e = sdq_linear_int(x, -4, d)
    ref = torch.from_numpy(x * 2.0**-4) @ torch.from_numpy(d.dequantized()).T
    assert np.array_equal(acc * 2.0**e, ref.numpy())
    wc = _heavy((8, 8, 3, 3), 2)
    dc = sdq(wc, NM(2, 8))
    xc = rng.integers(-128, 128, size=(2, 8, 7, 7))
    acc, e = sdq_conv2d_int(xc, -5, dc, stride=2, padding=1)
    ref = torch.nn.functional.conv2d(torch.from_numpy(xc * 2.0**-5), torch.from_numpy(dc.dequantized()),
                                     stride=2, padding=1)
    assert np.array_equal(acc * 2.0**e, ref.numpy())


def test_bad_input_refused():
    with pytest.raises(ConfigError, match="dense_bits"):
        sdq(torch.randn(4, 8), NM(1, 4), dense_bits=1)
    with pytest.raises(ConfigError, match="does not fit"):
        sdq(torch.randn(4, 2), NM(1, 4))
    with pytest.raises(ConfigError, match="NaN"):
        sdq(torch.tensor([[float("nan"), 0, 0, 0]]), NM(1, 4))
