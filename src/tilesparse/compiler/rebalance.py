"""Reorder a planned sparse conv's block rows for the weight chunks of its plan.

``passes.balance`` orders a conv's block rows before the compiler has chosen a partition, so
that any contiguous run holds about its share of kept blocks. Once the conv is planned, the runs
are known: each core group g (a range of output channels) runs weight chunks k = 0 … n_k − 1,
each cut into input-channel chunks q. Step (k, q) runs chunk (k, q) on every group at once and
lasts as long as its busiest group: COMP at the slowest core (time-model rule 2), LOADWM at the
largest chunk (rule 5). Both grow with the kept input channels of the chunk, so ``swap_rows``
lowers

    Σ_k Σ_q max_g kept(g, k, q)

by swapping block rows between chunks, and ``rebalance`` keeps the new order only if the same
grid and sub-volume, planned again with it (``planning.plan_with``: the chunks are re-cut from the
new order and must still fit), are faster under the time model. The prefix order is a good
start, but a run of two block rows over one input-channel chunk is too short for prefix sums to
even out (VGG16's 256- and 512-channel convs on 2 × 2: 6–12 % above the mean per step; 1–4 %
after the swaps).
"""

from __future__ import annotations

import dataclasses
from itertools import pairwise

import numpy as np

from tilesparse.compiler.cache import CompileCache
from tilesparse.compiler.partition import oc_chunks
from tilesparse.compiler.planning import LayerPlan, chunk_blocks, plan_with
from tilesparse.hw import ArrayConfig

__all__ = ["MAX_ROWS", "chunk_slots", "rebalance", "swap_rows"]

MAX_ROWS = 128  # block rows; larger layers (VGG16's classifier) are DDR bound, and swap_rows is O(rows²)


def chunk_slots(plan: LayerPlan, cache: CompileCache | None = None) -> tuple[np.ndarray, np.ndarray, int, int] | None:
    """(kept input channels of every block row in every input-channel chunk, rows × n_q; the
    slot g · n_k + k of every block row; groups; n_k) of a planned conv, or None if there is
    nothing to balance (one group) or a range is not made of whole block rows."""
    sp, part = plan.spec, plan.part
    assert sp.mask is not None
    bo, bi = sp.block
    ranges = sorted({(c.oc0, c.oc1) for c in part.cores if not c.empty})
    n_rows, n_cb = sp.mask.shape
    if len(ranges) < 2 or n_rows > MAX_ROWS or any(a % bo for r in ranges for a in r):
        return None
    nb = chunk_blocks(sp, part.sub)
    widths = np.minimum(bi, sp.ci - np.arange(n_cb) * bi)
    kept = sp.mask.astype(np.int64) * widths
    cost = np.add.reduceat(kept, np.arange(0, n_cb, nb), axis=1)
    slot = np.full(n_rows, -1)
    for g, (a0, a1) in enumerate(ranges):
        cuts = oc_chunks(sp, a0, a1, part.sub.oc, part.n_k, cache)
        for k, (c0, c1) in enumerate(pairwise(cuts)):
            slot[c0 // bo:-(-c1 // bo)] = g * part.n_k + k
    if (slot < 0).any():
        return None
    return cost, slot, len(ranges), part.n_k


def _max_excluding(load: np.ndarray) -> np.ndarray:
    """``m[g1, g2, k, q]``: the largest load of chunk (k, q) over the groups other than g1 and g2
    (from the three largest; -inf-like if there are none)."""
    groups = len(load)
    if groups < 3:
        pad = np.full((3 - groups, *load.shape[1:]), np.iinfo(np.int64).min // 4)
        load = np.concatenate([load, pad])
    idx = np.argsort(-load, axis=0, kind="stable")[:3]  # (3, k, q)
    top = np.take_along_axis(load, idx, 0)
    g = np.arange(groups)[:, None, None, None]
    other = (idx[:, None, None] != g[None]) & (idx[:, None, None] != g[None].swapaxes(1, 2))
    first = np.argmax(other, axis=0)  # (g1, g2, k, q): the first of the three in neither group
    return np.take_along_axis(np.broadcast_to(top[:, None, None], (3, groups, *first.shape[1:])),
                              first[None], 0)[0]


def swap_rows(cost: np.ndarray, slot: np.ndarray, groups: int, n_k: int, max_passes: int = 8) -> np.ndarray:
    """A new slot for every row (same number of rows per slot) with a lower (or equal)
    Σ_k Σ_q max_g load, load(g, k, q) = Σ of ``cost[row, q]`` over the rows in slot g · n_k + k.

    Rows in decreasing cost take, in turn, the swap with any row of another slot that lowers the
    sum most; passes repeat until none does (at most ``max_passes``)."""
    cost = np.asarray(cost, np.int64)
    slot = np.array(slot)
    load = np.zeros((groups, n_k, cost.shape[1]), np.int64)
    np.add.at(load, np.divmod(slot, n_k), cost)
    for _ in range(max_passes):
        swapped = False
        excl, step = _max_excluding(load), load.max(axis=0).sum(axis=1)  # step: Σ_q max_g per chunk k
        for a in np.argsort(-cost.sum(axis=1), kind="stable"):
            g, k = np.divmod(slot, n_k)
            ga, ka = g[a], k[a]
            new_a = load[ga, ka] - cost[a] + cost  # a's chunk with row b in place of a
            new_b = load[g, k] - cost + cost[a]  # b's chunk with row a in place of b
            both = np.maximum(np.maximum(excl[ga, g, ka], new_a), new_b)  # b in a's chunk k
            apart = (np.maximum(excl[ga, ga, ka], new_a).sum(1) - step[ka]
                     + np.maximum(excl[g, g, k], new_b).sum(1) - step[k])
            gain = np.where(k == ka, both.sum(1) - step[ka], apart)
            gain[slot == slot[a]] = 0
            b = int(gain.argmin())
            if gain[b] < 0:
                load[ga, ka] += cost[b] - cost[a]
                load[g[b], k[b]] += cost[a] - cost[b]
                slot[a], slot[b] = slot[b], slot[a]
                excl, step = _max_excluding(load), load.max(axis=0).sum(axis=1)
                swapped = True
        if not swapped:
            break
    return slot


def rebalance(plan: LayerPlan, hw: ArrayConfig, cache: CompileCache | None = None
              ) -> tuple[LayerPlan, np.ndarray] | None:
    """(the plan with the conv's block rows reordered for its chunks, the order: stored block row
    i holds block row ``rows[i]``), or None if no order ``swap_rows`` finds is faster. ``cache``:
    the compile's memo."""
    got = chunk_slots(plan, cache)
    if got is None:
        return None
    cost, slot, groups, n_k = got
    new = swap_rows(cost, slot, groups, n_k)
    if np.array_equal(new, slot):
        return None
    rows = np.argsort(new, kind="stable")  # slot-major: group by group, chunk by chunk
    spec = dataclasses.replace(plan.spec, mask=plan.spec.mask[rows])
    p = plan_with(spec, hw, plan.part.grid, plan.part.sub, plan.in_ddr, plan.out_ddr, cache)
    return (p, rows) if p is not None and p.time_s < plan.time_s else None
