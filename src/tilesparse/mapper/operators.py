"""Genetic operators on genomes (GAMMA): crossover, and mutations that move a prime factor
between slots, swap two loops of a level, toggle a factor between temporal and spatial, and flip a
bypass bit. All vectorized over a batch; repairs are in :class:`MapSpace`."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from tilesparse.mapper.space import Genomes, MapSpace

__all__ = ["crossover", "mutate", "neighbourhood"]


def crossover(space: MapSpace, a: Genomes, b: Genomes, rng: np.random.Generator) -> Genomes:
    """Per loop, the child takes all of that loop's factors from one parent (keeps each loop's
    tiling coherent); per level it takes the loop order and the bypass bits from one parent."""
    n = len(a)
    dim_pick = rng.random((n, len(space.problem.bounds))) < 0.5
    pick = dim_pick[:, space.prime_dim]  # (n, P)
    slots = np.where(pick, a.slots, b.slots)
    lvl_pick = rng.random((n, space.n_levels)) < 0.5
    order = np.where(lvl_pick[:, :, None], a.order, b.order)
    keep = np.where(lvl_pick[:, :, None], a.keep, b.keep)
    return Genomes(slots, order, keep)


def mutate(space: MapSpace, g: Genomes, rng: np.random.Generator, rate: float = 0.5) -> Genomes:
    """Each genome gets each kind of mutation with probability ``rate`` (or ``rate / 2``)."""
    g = g.take(slice(None))
    n, rows = len(g), np.arange(len(g))
    # move one prime factor to a random slot (tile size change between levels)
    hit = rows[rng.random(n) < rate]
    j = rng.integers(0, space.n_primes, hit.size)
    g.slots[hit, j] = space.valid_slots[rng.integers(0, len(space.valid_slots), hit.size)]
    # toggle parallel: a factor swaps between temporal and spatial at its level
    hit = rows[rng.random(n) < rate / 2]
    j = rng.integers(0, space.n_primes, hit.size)
    flipped = g.slots[hit, j] ^ 1
    ok = space.slot_ok[flipped]
    g.slots[hit[ok], j[ok]] = flipped[ok]
    _swap_loops(space, g, rows[rng.random(n) < rate], rng)
    _exchange_tiles(space, g, rows[rng.random(n) < rate / 2], rng)
    # flip one bypass bit (inner levels only; the outermost keeps everything)
    if space.search_bypass and space.n_levels > 1:
        hit = rows[rng.random(n) < rate / 2]
        lvl = rng.integers(0, space.n_levels - 1, hit.size)
        t = rng.integers(0, 3, hit.size)
        g.keep[hit, lvl, t] = ~g.keep[hit, lvl, t]
    return g


def _swap_loops(space: MapSpace, g: Genomes, hit: np.ndarray, rng: np.random.Generator) -> None:
    """Swap two loops of one level's order, chosen among the loops with a factor > 1 there (the
    order of trivial loops does not matter, so swapping them would waste the mutation)."""
    lvl = rng.integers(0, space.n_levels, hit.size)
    d = g.order.shape[2]
    at_lvl = g.slots[hit] == 2 * lvl[:, None]  # (h, P) primes in that level's temporal slot
    nontriv = np.zeros((hit.size, d), dtype=bool)
    for j in range(space.n_primes):
        nontriv[:, space.prime_dim[j]] |= at_lvl[:, j]
    score = np.where(nontriv, rng.random(nontriv.shape), -1.0)
    two = np.argsort(-score, axis=1)[:, :2]  # two random non-trivial dims (if there are two)
    ok = (score[np.arange(hit.size)[:, None], two] >= 0).all(axis=1)
    hit, lvl, two = hit[ok], lvl[ok], two[ok]
    pos = np.argsort(g.order[hit, lvl], axis=1)  # position of each dim in the order
    px, py = pos[np.arange(hit.size), two[:, 0]], pos[np.arange(hit.size), two[:, 1]]
    g.order[hit, lvl, px], g.order[hit, lvl, py] = two[:, 1], two[:, 0]


def _exchange_tiles(space: MapSpace, g: Genomes, hit: np.ndarray, rng: np.random.Generator) -> None:
    """Loop d1 moves all its factors from slot s1 to s2 while loop d2 moves its factors from s2 to
    s1: e.g. trade which loop is unrolled spatially. Single-factor moves need several worse steps
    to get there (a deceptive landscape for GA and annealing)."""
    dims = np.unique(space.prime_dim)
    d1, d2 = dims[rng.integers(0, dims.size, (2, hit.size))]
    s1, s2 = space.valid_slots[rng.integers(0, space.valid_slots.size, (2, hit.size))]
    cur = g.slots[hit]
    m1 = (cur == s1[:, None]) & (space.prime_dim[None] == d1[:, None])
    m2 = (cur == s2[:, None]) & (space.prime_dim[None] == d2[:, None])
    cur = np.where(m1, s2[:, None], np.where(m2, s1[:, None], cur))
    g.slots[hit] = cur


def neighbourhood(space: MapSpace, g: Genomes) -> Genomes:
    """Every single move from genome ``g[0]`` (unrepaired; duplicates possible), in this order:

    - a prime factor moves to another slot; if its loop thereby becomes a non-trivial temporal
      loop of a level, every position of that loop in the level's order is tried (a compound
      move: the tile size and the loop order change together);
    - all factors of a loop in one slot move to another slot together;
    - a non-trivial loop of a level moves to another position in that level's order;
    - two prime factors of different loops in different slots trade slots (keeps tile volumes);
    - a bypass bit flips (inner levels, when bypass is searched).
    Equal primes of one loop in one slot are interchangeable, so one of them stands for all."""
    s0, o0, k0 = g.slots[0], g.order[0], g.keep[0]
    t = space.decode(g).temporal[0]  # (L, D) temporal factors per level
    groups = _prime_groups(space, s0)
    moves = [(sl, od, k0) for sl, od in _factor_moves(space, groups, s0, o0, t)]
    moves += [(sl, o0, k0) for sl in _block_moves(space, s0)]
    moves += [(s0, od, k0) for od in _order_moves(space, o0, t)]
    moves += [(sl, o0, k0) for sl in _trades(groups, s0)]
    moves += [(s0, o0, kp) for kp in _bypass_flips(space, k0)]
    return Genomes(*(np.array([m[i] for m in moves]) for i in range(3)))


def _prime_groups(space: MapSpace, s0: np.ndarray) -> dict[tuple[int, int, int], int]:
    """(loop, prime, slot) -> the first prime factor of that kind in that slot."""
    groups: dict[tuple[int, int, int], int] = {}
    for j in range(space.n_primes):
        groups.setdefault((int(space.prime_dim[j]), int(space.primes[j]), int(s0[j])), j)
    return groups


def _factor_moves(space: MapSpace, groups: dict[tuple[int, int, int], int], s0: np.ndarray, o0: np.ndarray,
                  t: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(slots, order) with one prime factor in another slot, and the loop, if it has just become a
    non-trivial temporal loop of its new level, at every position of that level's order."""
    for (d, _, src), j in groups.items():
        for s in space.valid_slots:
            if s == src:
                continue
            sl = s0.copy()
            sl[j] = s
            lvl = s // 2
            if s % 2 == 0 and t[lvl, d] == 1:
                for row in _insertions(o0[lvl], d, t[lvl] > 1):
                    yield sl, _with_row(o0, lvl, row)
            else:
                yield sl, o0


def _block_moves(space: MapSpace, s0: np.ndarray) -> Iterator[np.ndarray]:
    """Slots with all of a loop's factors in one slot (two or more; one is a prime move) moved
    to another slot."""
    for d in np.unique(space.prime_dim):
        mine = space.prime_dim == d
        for src in np.unique(s0[mine]):
            block = mine & (s0 == src)
            if block.sum() < 2:
                continue
            for s in space.valid_slots:
                if s != src:
                    yield np.where(block, s, s0)


def _order_moves(space: MapSpace, o0: np.ndarray, t: np.ndarray) -> Iterator[np.ndarray]:
    """Orders with one non-trivial loop of a level at every position among that level's others."""
    for lvl in range(space.n_levels):
        nontriv = t[lvl] > 1
        for d in np.flatnonzero(nontriv):
            for row in _insertions(o0[lvl], int(d), nontriv):
                yield _with_row(o0, lvl, row)


def _trades(groups: dict[tuple[int, int, int], int], s0: np.ndarray) -> Iterator[np.ndarray]:
    """Slots with two prime factors of different loops in different slots traded."""
    items = list(groups.items())
    for a, ((d1, _, s1), j1) in enumerate(items):
        for (d2, _, s2), j2 in items[a + 1:]:
            if d1 != d2 and s1 != s2:
                sl = s0.copy()
                sl[j1], sl[j2] = s2, s1
                yield sl


def _bypass_flips(space: MapSpace, k0: np.ndarray) -> Iterator[np.ndarray]:
    """Bypass bits with one allowed bit of an inner level flipped (none unless bypass is searched)."""
    if not space.search_bypass:
        return
    for lvl, tt in zip(*np.nonzero(space.allowed[:-1]), strict=True):
        kp = k0.copy()
        kp[lvl, tt] = ~kp[lvl, tt]
        yield kp


def _insertions(row: np.ndarray, d: int, nontriv: np.ndarray) -> list[np.ndarray]:
    """Orders of one level with loop ``d`` at every position among the other non-trivial loops
    (kept in their relative order; trivial loops, whose order does not matter, go outermost)."""
    seq = [int(x) for x in row if nontriv[x] and x != d]
    rest = [int(x) for x in row if not nontriv[x] and x != d]
    return [np.array(seq[:i] + [d] + seq[i:] + rest) for i in range(len(seq) + 1)]


def _with_row(order: np.ndarray, lvl: int, row: np.ndarray) -> np.ndarray:
    out = order.copy()
    out[lvl] = row
    return out
