"""The map space of one problem on one architecture, as integer genomes.

A genome assigns every prime factor of every loop bound to a *slot*: ``2*l`` = temporal at level
``l``, ``2*l + 1`` = spatial at level ``l`` (only where the level fans out). With a loop order per
level and a keep mask per (level, tensor) it decodes to a :class:`MappingBatch`. Repairs (GAMMA)
push factors out of over-full spatial slots and over-capacity levels, so mappers produce valid
mappings; whatever stays invalid after repair is rejected, never returned.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tilesparse.costmodel.arch import Architecture
from tilesparse.costmodel.mapping import Invalid, MappingBatch, check_batch, tile_bytes
from tilesparse.costmodel.problem import DIMS, TENSORS, Problem

__all__ = ["Genomes", "MapSpace", "prime_factors"]

D = len(DIMS)
REPAIR_ROUNDS_PER_PRIME = 2  # capacity repair moves one factor per round; enough to empty a level


def prime_factors(n: int) -> list[int]:
    out, f = [], 2
    while f * f <= n:
        while n % f == 0:
            out.append(f)
            n //= f
        f += 1
    return out + ([n] if n > 1 else [])


@dataclass
class Genomes:
    slots: np.ndarray  # (B, P) slot of each prime factor
    order: np.ndarray  # (B, L, D) loop order per level, innermost first
    keep: np.ndarray  # (B, L, 3) tensors stored per level

    def __len__(self) -> int:
        return self.slots.shape[0]

    def take(self, idx) -> Genomes:
        return Genomes(self.slots[idx].copy(), self.order[idx].copy(), self.keep[idx].copy())

    @staticmethod
    def concat(gs: list[Genomes]) -> Genomes:
        return Genomes(*(np.concatenate([getattr(g, f) for g in gs]) for f in ("slots", "order", "keep")))


class MapSpace:
    """Genome <-> mapping for ``problem`` on ``arch``. ``search_bypass`` lets mappers choose which
    tensors each inner level stores (the outermost stores all)."""

    def __init__(self, problem: Problem, arch: Architecture, *, search_bypass: bool = True):
        self.problem, self.arch, self.search_bypass = problem, arch, search_bypass
        self.n_levels = arch.n_levels
        pf = [(d, p) for d, b in enumerate(problem.bounds) for p in prime_factors(b)]
        self.prime_dim = np.array([d for d, _ in pf], dtype=np.int64)
        self.primes = np.array([p for _, p in pf], dtype=np.int64)
        self.log_primes = np.log(self.primes.astype(np.float64))
        fan = np.array([lv.fanout for lv in arch.levels])
        self.slot_ok = np.ones(2 * self.n_levels, dtype=bool)
        self.slot_ok[1::2] = fan > 1
        self.valid_slots = np.flatnonzero(self.slot_ok)
        self.allowed = np.array([[t in lv.holds for t in TENSORS] for lv in arch.levels])

    @property
    def n_primes(self) -> int:
        return len(self.primes)

    # -- sampling --------------------------------------------------------------------------------
    def random(self, n: int, rng: np.random.Generator) -> Genomes:
        slots = self.valid_slots[rng.integers(0, len(self.valid_slots), (n, self.n_primes))]
        order = np.argsort(rng.random((n, self.n_levels, D)), axis=2)
        return Genomes(slots, order, self.random_keep(n, rng))

    def random_keep(self, n: int, rng: np.random.Generator) -> np.ndarray:
        keep = np.broadcast_to(self.allowed, (n, self.n_levels, 3)).copy()
        if self.search_bypass:
            keep &= rng.random(keep.shape) < 0.5 + 0.5 * (rng.random((n, 1, 1)) < 0.5)
        keep[:, -1] = True
        return keep

    # -- decoding --------------------------------------------------------------------------------
    def decode(self, g: Genomes) -> MappingBatch:
        b = len(g)
        logf = np.zeros((b, 2 * self.n_levels, D))
        rows = np.arange(b)
        for j in range(self.n_primes):
            logf[rows, g.slots[:, j], self.prime_dim[j]] += self.log_primes[j]
        f = np.rint(np.exp(logf)).astype(np.int64)
        return MappingBatch(f[:, 0::2], f[:, 1::2], g.order, g.keep)

    def check(self, g: Genomes) -> np.ndarray:
        return check_batch(self.problem, self.arch, self.decode(g))

    # -- repairs (GAMMA) ---------------------------------------------------------------------------
    def repair(self, g: Genomes, rng: np.random.Generator) -> Genomes:
        keep = g.keep & self.allowed if self.search_bypass else np.broadcast_to(self.allowed, g.keep.shape)
        g = Genomes(g.slots.copy(), g.order, keep.copy())
        g.keep[:, -1] = True
        self._repair_fanout(g, rng)
        self._repair_capacity(g, rng)
        return g

    def _repair_fanout(self, g: Genomes, rng: np.random.Generator) -> None:
        b = len(g)
        perm = np.argsort(rng.random((b, self.n_primes)), axis=1)
        for lvl, lv in enumerate(self.arch.levels):
            used = np.zeros(b)
            cap = np.log(lv.fanout) + 1e-9
            for k in range(self.n_primes):
                j = perm[:, k]
                sp = g.slots[np.arange(b), j] == 2 * lvl + 1
                lp = self.log_primes[j]
                over = sp & (used + lp > cap)
                used += np.where(sp & ~over, lp, 0.0)
                g.slots[np.arange(b)[over], j[over]] = 2 * lvl  # spatial -> temporal, same level

    def _repair_capacity(self, g: Genomes, rng: np.random.Generator) -> None:
        top = self.n_levels - 1
        for _ in range(REPAIR_ROUNDS_PER_PRIME * self.n_primes):
            over = self._over_levels(g)  # (B, L) bool
            if not over.any():
                return
            lvl = np.where(over.any(axis=1), over.argmax(axis=1), -1)  # innermost over-full level
            todo = np.flatnonzero(lvl >= 0)
            # a random prime held at or below the over-full level moves to the next level's time loop
            below = g.slots[todo] // 2 <= lvl[todo, None]
            score = np.where(below, rng.random(below.shape), -1.0)
            j = score.argmax(axis=1)
            movable = below[np.arange(len(todo)), j]
            tgt = np.minimum(lvl[todo] + 1, top)
            g.slots[todo[movable], j[movable]] = 2 * tgt[movable]

    def _over_levels(self, g: Genomes) -> np.ndarray:
        batch = self.decode(g)
        used = tile_bytes(self.problem, batch) * batch.keep
        over = np.zeros((len(g), self.n_levels), dtype=bool)
        for i, lv in enumerate(self.arch.levels):
            if lv.capacity_bytes is not None:
                over[:, i] |= used[:, i].sum(axis=1) > lv.capacity_bytes
            for t, cap in lv.tensor_capacity_bytes.items():
                over[:, i] |= used[:, i, TENSORS.index(t)] > cap
        return over

    def keys(self, g: Genomes) -> list[bytes]:
        """A key per genome, equal iff the mappings are equal (the order of loops that are trivial
        at a level does not matter, nor which of equal primes of a loop sits where)."""
        m = self.decode(g)
        nontriv = np.take_along_axis(m.temporal, m.order, axis=2) > 1  # along the order
        rank = np.where(nontriv, np.arange(D), D + m.order)
        canon = np.take_along_axis(m.order, np.argsort(rank, axis=2), axis=2)
        flat = np.concatenate([m.temporal.reshape(len(g), -1), m.spatial.reshape(len(g), -1),
                               canon.reshape(len(g), -1), m.keep.reshape(len(g), -1)], axis=1)
        return [r.tobytes() for r in flat]

    def is_valid(self, g: Genomes) -> np.ndarray:
        return self.check(g) == Invalid.OK

    # -- projection: continuous tile sizes -> nearest factorization --------------------------------
    def project(self, target_log: np.ndarray) -> np.ndarray:
        """Slots whose factors best match ``target_log`` (B, 2L, D), the desired log factor of each
        loop per slot: primes of each loop, largest first, go to the slot with the most room left."""
        b = target_log.shape[0]
        room = np.where(self.slot_ok[None, :, None], target_log, -np.inf).copy()
        slots = np.zeros((b, self.n_primes), dtype=np.int64)
        rows = np.arange(b)
        for j in np.argsort(-self.primes, kind="stable"):
            d = self.prime_dim[j]
            s = room[:, :, d].argmax(axis=1)
            slots[:, j] = s
            room[rows, s, d] -= self.log_primes[j]
        return slots

    def from_batch(self, batch: MappingBatch) -> Genomes:
        """Genomes for mappings of another shape (warm start): each loop's factors are spread over
        the slots in the same proportions (in log) as in ``batch``, then projected."""
        src = np.log(np.stack([batch.temporal, batch.spatial], axis=2).astype(np.float64))
        src = src.reshape(len(batch), 2 * self.n_levels, D)  # slot 2l = temporal, 2l+1 = spatial
        total = src.sum(axis=1, keepdims=True)
        bounds = np.log(np.array(self.problem.bounds, dtype=np.float64))
        share = np.where(total > 0, src / np.where(total > 0, total, 1.0), 0.0)
        # a loop that was 1 in the source: put it at the outermost temporal slot
        share[:, 2 * (self.n_levels - 1)] += (total[:, 0] == 0)
        slots = self.project(share * bounds)
        return Genomes(slots, batch.order.copy(), batch.keep.copy())
