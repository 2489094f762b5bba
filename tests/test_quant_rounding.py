"""The integer rules of tilesparse.quant.rounding against direct Python-integer / Fraction
arithmetic, and the pooling divisors against PyTorch."""

from fractions import Fraction
from math import floor

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from tilesparse.quant import rounding as R

INT32 = st.integers(R.INT32_MIN, R.INT32_MAX)


def half_up(q: Fraction) -> int:
    return floor(q + Fraction(1, 2))


@given(x=INT32, s=st.integers(-8, 31))
def test_shift_round_scalar(x, s):
    want = half_up(Fraction(x, 2**s)) if s > 0 else x * 2**-s
    assert R.shift_round(x, s) == want


@settings(max_examples=50)
@given(xs=st.lists(st.tuples(INT32, st.integers(-8, 31)), min_size=1, max_size=20))
def test_shift_round_array_per_element(xs):
    x = np.array([a for a, _ in xs], np.int64)
    s = np.array([b for _, b in xs], np.int64)
    want = [half_up(Fraction(a, 2**b)) if b > 0 else a * 2**-b for a, b in xs]
    assert R.shift_round(x, s).tolist() == want


@given(x=st.floats(-1e4, 1e4, width=32), e=st.integers(-20, 6))
def test_quantize_real_is_round_half_up_then_saturate(x, e):
    want = min(max(half_up(Fraction(x) / Fraction(2) ** e), -128), 127)
    assert R.quantize_real(np.array([x], np.float32), e)[0] == want
    assert R.quantize_real(np.array([x], np.float64), e)[0] == want


@given(m=st.floats(1e-30, 1e30))
def test_pow2_exponent_is_smallest_without_saturation(m):
    e = R.pow2_exponent(m)
    assert Fraction(m) <= 127 * Fraction(2) ** e
    assert Fraction(m) > 127 * Fraction(2) ** (e - 1)


def test_pow2_exponent_edges():
    assert R.pow2_exponent(0.0) == 0
    assert R.pow2_exponent(127.0) == 0 and R.pow2_exponent(127.5) == 1
    with pytest.raises(ValueError):
        R.pow2_exponent(float("inf"))


@given(t=st.integers(-10**6, 10**6), d=st.integers(1, 1000))
def test_avg_round(t, d):
    assert R.avg_round(t, d) == half_up(Fraction(t, d))
    assert R.avg_round(np.int64(t), np.int64(d)) == half_up(Fraction(t, d))


@pytest.mark.parametrize("act,e,want", [
    (None, 0, (-128, 127)), ("relu", -3, (0, 127)),
    ("relu6", -4, (0, 96)),   # 6 / 2**-4 = 96
    ("relu6", -5, (0, 127)),  # 192 saturates
    ("relu6", 1, (0, 3)), ("relu6", 2, (0, 2)),  # 1.5 rounds half up to 2
    ("relu6", 3, (0, 1)),     # 0.75 -> 1
])
def test_activation_clamp(act, e, want):
    assert R.activation_clamp(act, e) == want


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 12), w=st.integers(1, 12), k=st.integers(1, 4), s=st.integers(1, 3),
       p=st.integers(0, 2), ceil=st.booleans(), include=st.booleans())
def test_pool_divisors_match_pytorch(h, w, k, s, p, ceil, include):
    if p > k // 2 or h + 2 * p < k or w + 2 * p < k:
        return  # PyTorch rejects these configurations
    x = torch.rand(1, 1, h, w, dtype=torch.float64) + 1.0  # positive: sum / mean is the divisor
    mean = F.avg_pool2d(x, k, s, p, ceil, include)
    total = F.avg_pool2d(x, k, s, p, ceil, include, divisor_override=1)
    want = torch.round(total / mean).numpy()[0, 0]
    got = R.pool_divisors((h, w), tuple(mean.shape[2:]), (k, k), (s, s), (p, p), include)
    np.testing.assert_array_equal(got, want)


@given(size=st.integers(1, 40), out=st.integers(1, 12))
def test_adaptive_windows_match_pytorch(size, out):
    x = torch.arange(size, dtype=torch.float64).reshape(1, 1, 1, size) ** 2
    want = F.adaptive_avg_pool2d(x, (1, out)).numpy().ravel()
    got = [x[0, 0, 0, a:b].mean().item() for a, b in R.adaptive_windows(size, out)]
    np.testing.assert_allclose(got, want, rtol=1e-12)
