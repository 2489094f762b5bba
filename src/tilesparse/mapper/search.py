"""Search strategies over a :class:`MapSpace`: random, random-pruned, exhaustive, genetic (GAMMA)
and simulated annealing. Each takes an :class:`Evaluator` (budget, objective, progress) and a
seed, optionally initial genomes (warm start), and returns a :class:`SearchResult` whose mapping
is valid (the evaluator only records valid mappings)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from math import prod

import numpy as np

from tilesparse.costmodel.mapping import MappingBatch
from tilesparse.costmodel.problem import DIMS
from tilesparse.errors import ConfigError
from tilesparse.mapper.base import Evaluator, SearchResult
from tilesparse.mapper.operators import crossover, mutate, neighbourhood
from tilesparse.mapper.space import Genomes, MapSpace

__all__ = ["LocalSearch", "annealing", "exhaustive", "genetic", "random_search", "space_size"]

BATCH = 1000  # mappings per vectorized evaluation call
EXHAUSTIVE_LIMIT = 20_000_000  # refuse to enumerate more mappings than this
STALL_GENERATIONS = 5  # genetic: generations without improvement before re-seeding
REHEAT_CYCLES = 10  # annealing: cool-down cycles over the budget, each ending in local searches
REHEAT_KEEP = 0.25  # annealing: share of chains that restart from the best point (rest: random)
POLISH_CHAINS = 8  # annealing: distinct best chain states polished by local search per cycle
LOCAL_CHUNK = 64  # local search: neighbours per batch; the first batch with a better one moves


def _seeded(space: MapSpace, n: int, rng: np.random.Generator, init: Genomes | None) -> Genomes:
    """``n`` repaired genomes: the warm-start seeds first, random ones after."""
    parts = [] if init is None else [init.take(slice(0, n))]
    have = sum(len(p) for p in parts)
    if have < n:
        parts.append(space.random(n - have, rng))
    return space.repair(Genomes.concat(parts), rng)


class LocalSearch:
    """First-improvement hill climbing over :func:`neighbourhood`, shared by the mappers.

    Each step evaluates the (valid, not yet seen) neighbours in shuffled batches of ``chunk`` and
    moves to the best of the first batch that holds an improvement (``rank``, lower = more
    promising, orders the neighbours instead of shuffling them); it stops at a local optimum
    (no neighbour better) or when the budget runs out. Every objective value comes from the
    evaluator (counted); values of mappings evaluated before are remembered, not re-evaluated."""

    def __init__(self, space: MapSpace, ev: Evaluator, rng: np.random.Generator,
                 chunk: int = LOCAL_CHUNK, rank: Callable[[Genomes], np.ndarray] | None = None):
        self.space, self.ev, self.rng, self.chunk, self.rank = space, ev, rng, chunk, rank
        self.known: dict[bytes, float] = {}

    def evaluate(self, g: Genomes) -> np.ndarray:
        """``ev(g)``, remembering the values."""
        f = self.ev(g)
        self.known.update(zip(self.space.keys(g), f.tolist(), strict=True))
        return f

    def run(self, g: Genomes, value: float) -> tuple[Genomes, float]:
        """Climb from ``g[0]`` (objective ``value``) to a local optimum."""
        g = g.take(slice(0, 1))
        while not self.ev.exhausted:
            nb = self.space.repair(neighbourhood(self.space, g), self.rng)  # over-full -> pushed out
            nb = nb.take(self.space.is_valid(nb))
            keys = self.space.keys(nb)
            old = [i for i, k in enumerate(keys) if k in self.known]
            if old and (v := min(self.known[keys[i]] for i in old)) < value:  # free move
                g, value = nb.take([min(old, key=lambda i: self.known[keys[i]])]), v
                continue
            new = list({k: i for i, k in enumerate(keys) if k not in self.known}.values())
            nb = nb.take(self.rng.permutation(np.array(new, dtype=np.int64)))
            if self.rank is not None and len(nb):  # most promising first (e.g. a surrogate)
                nb = nb.take(np.argsort(self.rank(nb), kind="stable"))
            for i in range(0, len(nb), self.chunk):
                part = nb.take(slice(i, i + self.chunk))
                f = self.evaluate(part)
                k = int(np.argmin(f))
                if f[k] < value:
                    g, value = part.take([k]), float(f[k])
                    break
            else:
                return g, value
        return g, value


def random_search(space: MapSpace, ev: Evaluator, seed: int = 0, *, pruned: bool = True,
                  init: Genomes | None = None) -> SearchResult:
    """Timeloop's random mapper; ``pruned`` repairs samples (fan-out, capacity) and skips
    duplicates instead of spending evaluations on invalid or repeated mappings."""
    rng = np.random.default_rng(seed)
    seen: set[bytes] = set()
    first = True
    while not ev.exhausted:
        n = min(BATCH, ev.remaining)
        g = _seeded(space, n, rng, init if first else None) if pruned else space.random(n, rng)
        first = False
        if pruned:
            keys = [k.tobytes() for k in np.concatenate(
                [g.slots, g.order.reshape(len(g), -1), g.keep.reshape(len(g), -1)], axis=1)]
            fresh = [i for i, k in enumerate(keys) if k not in seen]
            seen.update(keys[i] for i in fresh)
            if not fresh:
                continue
            g = g.take(np.array(fresh))
        ev(g)
    return ev.result("random-pruned" if pruned else "random")


def genetic(space: MapSpace, ev: Evaluator, seed: int = 0, *, population: int = 100,
            elite: float = 0.05, parents: float = 0.5, fresh: float = 0.1, mutation_rate: float = 0.5,
            init: Genomes | None = None) -> SearchResult:
    """GAMMA-like, memetic: elites survive, children of the best half are crossed and mutated, a few
    fresh random individuals join every generation, every child is repaired, and the generation's
    best, once, climbs to a local optimum (:class:`LocalSearch`) and replaces itself."""
    rng = np.random.default_rng(seed)
    ls = LocalSearch(space, ev, rng)
    pop = _seeded(space, population, rng, init)
    fit = ls.evaluate(pop)
    n_elite, n_fresh = max(1, round(elite * population)), round(fresh * population)
    n_par = max(2, round(parents * population))
    best, stall = float(np.min(fit)), 0
    polished: set[bytes] = set()
    while not ev.exhausted:
        _polish_best(ls, pop, fit, polished)
        rank = np.argsort(fit)
        if stall >= STALL_GENERATIONS:  # converged: restart from scratch (the evaluator keeps
            pop = space.repair(space.random(population, rng), rng)  # the best); elites kept as
            fit = ls.evaluate(pop)  # parents would pull the new population back into the old basin
            rank, stall, best = np.argsort(fit), 0, float(np.min(fit))
        par = pop.take(rank[:n_par])
        n_kids = population - n_elite - n_fresh
        a, b = rng.integers(0, n_par, n_kids), rng.integers(0, n_par, n_kids)
        kids = mutate(space, crossover(space, par.take(a), par.take(b), rng), rng, mutation_rate)
        kids = Genomes.concat([kids, space.random(n_fresh, rng)])
        kids = space.repair(kids, rng)
        kid_fit = ls.evaluate(kids)
        pop = Genomes.concat([pop.take(rank[:n_elite]), kids])
        fit = np.concatenate([fit[rank[:n_elite]], kid_fit])
        stall = 0 if np.min(fit) < best * (1 - 1e-9) else stall + 1
        best = min(best, float(np.min(fit)))
    return ev.result("genetic")


def _polish_best(ls: LocalSearch, pop: Genomes, fit: np.ndarray, polished: set[bytes]) -> None:
    """Local search from the best individual that is not already a polished point (in place)."""
    keys = ls.space.keys(pop)
    cand = [i for i in np.argsort(fit) if np.isfinite(fit[i]) and keys[i] not in polished]
    if not cand:
        return
    i = int(cand[0])
    g, v = ls.run(pop.take([i]), float(fit[i]))
    polished.update(ls.space.keys(pop.take([i])) + ls.space.keys(g))
    pop.slots[i], pop.order[i], pop.keep[i], fit[i] = g.slots[0], g.order[0], g.keep[0], v


def annealing(space: MapSpace, ev: Evaluator, seed: int = 0, *, chains: int = 20,
              t_start: float = 0.2, t_end: float = 0.005, mutation_rate: float = 0.3,
              cycles: int = REHEAT_CYCLES, init: Genomes | None = None) -> SearchResult:
    """Simulated annealing on log(objective) with ``chains`` chains stepped together and reheats:
    the budget is split into ``cycles``; in each the temperature decays geometrically from
    ``t_start`` to ``t_end``, then the ``POLISH_CHAINS`` best distinct chain states climb to local
    optima (:class:`LocalSearch`) and a quarter of the chains restart hot from it, the others afresh."""
    rng = np.random.default_rng(seed)
    ls = LocalSearch(space, ev, rng)
    cur = _seeded(space, chains, rng, init)
    cur_f = ls.evaluate(cur)
    while not ev.exhausted:
        steps = max(1, ev.remaining // (chains * cycles))
        cycles = max(1, cycles - 1)
        decay, temp = (t_end / t_start) ** (1.0 / steps), t_start
        for _ in range(steps):
            if ev.exhausted:
                break
            prop = space.repair(mutate(space, cur, rng, mutation_rate), rng)
            f = ls.evaluate(prop)
            with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
                delta = np.log(f) - np.log(cur_f)
                accept = (delta <= 0) | (rng.random(chains) < np.exp(-np.nan_to_num(delta, nan=np.inf) / temp))
            accept &= np.isfinite(f)
            cur = _select(accept, prop, cur)
            cur_f = np.where(accept, f, cur_f)
            temp *= decay
        g, v = _polish_chains(ls, cur, cur_f)
        n_keep = max(1, round(REHEAT_KEEP * chains))
        fresh = _seeded(space, chains - n_keep, rng, None)  # reheat: most chains afresh
        cur = Genomes.concat([g.take(np.zeros(n_keep, dtype=np.int64)), fresh])
        cur_f = np.concatenate([np.full(n_keep, v), ls.evaluate(fresh)])
    return ev.result("annealing")


def _polish_chains(ls: LocalSearch, cur: Genomes, cur_f: np.ndarray) -> tuple[Genomes, float]:
    """Local search from the best ``POLISH_CHAINS`` distinct chain states; the best result."""
    keys, picked = ls.space.keys(cur), {}
    for i in np.argsort(cur_f):
        if np.isfinite(cur_f[i]) and len(picked) < POLISH_CHAINS:
            picked.setdefault(keys[i], int(i))
    best = (cur.take([int(np.argmin(cur_f))]), float(np.min(cur_f)))
    for i in picked.values():
        g, v = ls.run(cur.take([i]), float(cur_f[i]))
        best = min(best, (g, v), key=lambda t: t[1])
    return best


def _select(mask: np.ndarray, a: Genomes, b: Genomes) -> Genomes:
    return Genomes(np.where(mask[:, None], a.slots, b.slots), np.where(mask[:, None, None], a.order, b.order),
                   np.where(mask[:, None, None], a.keep, b.keep))


# -- exhaustive -----------------------------------------------------------------------------------
def _factorizations(n: int, k: int) -> list[tuple[int, ...]]:
    """All ordered ways to write n as a product of k positive factors."""
    if k == 1:
        return [(n,)]
    return [(f, *rest) for f in range(1, n + 1) if n % f == 0 for rest in _factorizations(n // f, k - 1)]


def _dim_options(space: MapSpace) -> list[list[tuple[int, ...]]]:
    slots = space.valid_slots
    out = []
    for b in space.problem.bounds:
        opts = []
        for f in _factorizations(b, len(slots)):
            full = [1] * (2 * space.n_levels)
            for s, v in zip(slots, f, strict=True):
                full[s] = v
            opts.append(tuple(full))
        out.append(opts)
    return out


def _keep_options(space: MapSpace) -> list[np.ndarray]:
    if not space.search_bypass:
        k = space.allowed.copy()
        k[-1] = True
        return [k]
    free = [(i, t) for i in range(space.n_levels - 1) for t in range(3) if space.allowed[i, t]]
    opts = []
    for bits in itertools.product([False, True], repeat=len(free)):
        k = np.zeros_like(space.allowed)
        k[-1] = True
        for (i, t), v in zip(free, bits, strict=True):
            k[i, t] = v
        opts.append(k)
    return opts


def space_size(space: MapSpace) -> int:
    """Distinct mappings exhaustive search enumerates (orders only over loops > 1 per level).

    Counted without enumerating: a dynamic program over loops whose state is how many loops have a
    temporal factor > 1 at each level (the order count is the product of their factorials)."""
    states: dict[tuple[int, ...], int] = {(0,) * space.n_levels: 1}
    for opts in _dim_options(space):
        nxt: dict[tuple[int, ...], int] = {}
        for state, n in states.items():
            for o in opts:
                key = tuple(c + (o[2 * i] > 1) for i, c in enumerate(state))
                nxt[key] = nxt.get(key, 0) + n
        states = nxt
    orders = sum(n * prod(_fact(c) for c in state) for state, n in states.items())
    return orders * len(_keep_options(space))


def _fact(n: int) -> int:
    return prod(range(1, n + 1))


def _enumerate(space: MapSpace):
    keeps = _keep_options(space)
    for combo in itertools.product(*_dim_options(space)):
        f = np.array(combo).T  # (2L, D)
        per_level = []
        for i in range(space.n_levels):
            nontriv = [d for d in range(len(DIMS)) if f[2 * i, d] > 1]
            rest = [d for d in range(len(DIMS)) if f[2 * i, d] == 1]
            per_level.append([list(p) + rest for p in itertools.permutations(nontriv)])
        for orders in itertools.product(*per_level):
            for k in keeps:
                yield f[0::2], f[1::2], orders, k


def exhaustive(space: MapSpace, ev: Evaluator, seed: int = 0, *,
               limit: int = EXHAUSTIVE_LIMIT) -> SearchResult:
    """Every distinct mapping (loop orders only over loops with a factor > 1). Refuses spaces
    larger than ``limit`` and needs a budget at least the space size."""
    size = space_size(space)
    if size > limit or size > ev.budget:
        raise ConfigError(f"exhaustive search of {space.problem.name}",
                          [f"the space has {size:,} mappings; limit {limit:,}, budget {ev.budget:,}"])
    buf: list = []
    for item in _enumerate(space):
        buf.append(item)
        if len(buf) == BATCH * 10:
            ev(_to_batch(buf))
            buf = []
    if buf:
        ev(_to_batch(buf))
    return ev.result("exhaustive")


def _to_batch(items: list) -> MappingBatch:
    t, s, o, k = zip(*items, strict=True)
    return MappingBatch(np.array(t, dtype=np.int64), np.array(s, dtype=np.int64),
                        np.array(o, dtype=np.int64), np.array(k, dtype=bool))
