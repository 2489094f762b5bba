"""Contiguous splits of a sequence of items into ranges: even, or balanced by cost (with or
without a cap on a range's length). The partition cuts channels and space with them."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from itertools import accumulate, pairwise

import numpy as np

__all__ = ["balanced_split", "capped_split", "greedy_fill", "split_even"]


def split_even(n: int, parts: int) -> list[int]:
    """Boundaries of ``parts`` contiguous ranges over ``n`` items, sizes differing by at most one
    (the first ``n % parts`` ranges get the extra item; some are empty if ``parts > n``)."""
    q, r = divmod(n, parts)
    out = [0]
    for i in range(parts):
        out.append(out[-1] + q + (1 if i < r else 0))
    return out


def balanced_split(costs: Sequence[float] | np.ndarray, parts: int) -> list[int]:
    """Boundaries (indices into ``costs``) of ``parts`` contiguous ranges minimising the largest
    range cost (bisection on the bottleneck, greedy fill). Ranges may be empty."""
    c = np.asarray(costs, dtype=np.float64)
    if len(c) == 0:
        return [0] * (parts + 1)
    cum = np.r_[0.0, np.cumsum(c)]
    lo, hi = float(c.max()), float(cum[-1])
    tol = max(float(c[c > 0].min(initial=1.0)) * 1e-3, 1e-9)  # finer than any unit's cost
    while hi - lo > tol:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if len(greedy_fill(cum, mid)) - 1 <= parts else (mid, hi)
    b = greedy_fill(cum, hi)
    return b + [len(c)] * (parts + 1 - len(b))


def greedy_fill(cum: np.ndarray, cap: float, width: int | None = None) -> list[int]:
    """Boundaries of the greedy fill of ranges with cost at most ``cap`` (and at most ``width``
    items, if given)."""
    bounds = [0]
    cum = cum.tolist()  # bisect on a list: this loop runs tens of thousands of times per compile
    n = len(cum) - 1
    while bounds[-1] < n:
        nxt = bisect.bisect_right(cum, cum[bounds[-1]] + cap * (1 + 1e-12)) - 1
        nxt = max(nxt, bounds[-1] + 1)
        bounds.append(nxt if width is None else min(nxt, bounds[-1] + width))
    return bounds


def capped_split(costs: Sequence[int], parts: int, max_len: int) -> list[int]:
    """Boundaries (indices into integer ``costs``) of ``parts`` contiguous ranges of at most
    ``max_len`` items each, minimising the largest range cost: the greedy fill at the smallest
    cap that fits in ``parts`` ranges. The cap is bisected between the average and an even
    split's bottleneck, each fill narrowing the interval beyond its midpoint: a fill that fits
    moves the top down to its own largest range, one that does not moves the bottom up to the
    least cap at which one of its ranges could take one more item (below it, every fill is the
    same). Ranges may be empty."""
    n = len(costs)
    if parts * max_len < n:
        raise ValueError(f"{n} items do not fit {parts} ranges of at most {max_len}")
    if parts == 1:
        return [0, n]
    cum = list(accumulate(map(int, costs), initial=0))
    even = [min(i * max_len, n) for i in range(parts + 1)]  # feasible: cap it from above
    lo = max(max(costs, default=0), -(-cum[-1] // parts))
    hi = max(max(cum[b] - cum[a] for a, b in pairwise(even)), lo)
    while lo < hi:
        mid = (lo + hi) // 2
        b, grow = _capped_fill(cum, mid, parts, max_len)
        if b is None:
            lo = max(mid + 1, grow)
        else:
            hi = max(cum[z] - cum[a] for a, z in pairwise(b))
    b, _ = _capped_fill(cum, lo, parts, max_len)
    assert b is not None
    return b + [n] * (parts + 1 - len(b))


def _capped_fill(cum: list[int], cap: int, parts: int, max_len: int) -> tuple[list[int] | None, int]:
    """The greedy fill of ranges costing at most ``cap`` (``cum``: prefix sums) and holding at most
    ``max_len`` items, or None if it needs more than ``parts`` ranges; and the least cap at which
    one of its first ``parts`` ranges would take one more item (0 if none would)."""
    n = len(cum) - 1
    b, a, grow = [0], 0, 0
    while a < n:
        if len(b) > parts:
            return None, grow
        j = bisect.bisect_right(cum, cum[a] + cap) - 1
        end = min(max(j, a + 1), a + max_len, n)
        if end == j < n and j < a + max_len:  # stopped by the cap, not by the length or the end
            more = cum[j + 1] - cum[a]
            grow = min(grow, more) if grow else more
        b.append(end)
        a = end
    return b, grow
