"""Gradient search on a learned surrogate (Mind Mappings, ASPLOS 2021).

1. Sample mappings, evaluate them with the real model, fit a small MLP from an encoded mapping to
   log(objective) (standardized).
2. Each round: with the MLP frozen, descend on the continuous encoding from (perturbed) best known
   points and project every point to the nearest valid mapping (tile shares -> nearest
   factorization, loop positions -> sort, bypass -> threshold, then GAMMA repairs); also let the
   MLP rank a large random batch (predictions are free; only real evaluations count)
   and keep its best. Evaluate the new candidates for real, add them to the training set, retrain
   briefly.
3. The round's best new candidate climbs to a local optimum (the mappers' shared local search),
   the MLP ordering its neighbours so that the first batch evaluated likely holds an improvement.

The surrogate is per layer (Mind Mappings trains one per problem family); the encoding is the
share of each loop's log bound in each slot, the loop positions per level, and the keep bits.
"""

from __future__ import annotations

import numpy as np

from tilesparse.costmodel.mapping import MappingBatch
from tilesparse.mapper.base import Evaluator, SearchResult
from tilesparse.mapper.search import LocalSearch, _seeded
from tilesparse.mapper.space import Genomes, MapSpace

__all__ = ["encode", "surrogate_search"]

HIDDEN = 128
TRAIN_FRACTION = 0.1  # of the budget spent on the initial random sample
MAX_TRAIN = 2000
FIT_EPOCHS, REFIT_EPOCHS = 60, 2
REFIT_WINDOW = 1024  # refits see only the most recent samples (keeps them cheap)
DESCENT_STEPS = 10  # gradient steps between projections
START_NOISE = 0.1  # perturbation of descent starts so chains from one point spread out
RANK_POOL = 2048  # random repaired mappings the MLP ranks per round (prediction is cheap)
RANK_TOP = 32  # of those, evaluated for real
MAX_EMPTY_ROUNDS = 20  # rounds without a single unseen candidate before giving up


def encode(space: MapSpace, batch: MappingBatch) -> np.ndarray:
    """(B, F) float32: slot shares of each loop's log bound, loop positions, keep bits."""
    logb = np.log(np.maximum(np.array(space.problem.bounds, dtype=np.float64), 1.0))
    f = np.log(np.stack([batch.temporal, batch.spatial], axis=2).astype(np.float64))
    share = np.where(logb > 0, f / np.where(logb > 0, logb, 1.0), 0.0)  # (B, L, 2, D)
    pos = np.argsort(batch.order, axis=2) / max(1, batch.order.shape[2] - 1)  # position of each dim
    b = len(batch)
    return np.concatenate([share.reshape(b, -1), pos.reshape(b, -1),
                           batch.keep.reshape(b, -1).astype(np.float64)], axis=1).astype(np.float32)


def decode(space: MapSpace, x: np.ndarray) -> Genomes:
    """Projection of continuous encodings to genomes (before repair)."""
    b, n_lv, d = len(x), space.n_levels, len(space.problem.bounds)
    share = x[:, : n_lv * 2 * d].reshape(b, 2 * n_lv, d)
    pos = x[:, n_lv * 2 * d: n_lv * 3 * d].reshape(b, n_lv, d)
    keep = x[:, n_lv * 3 * d:].reshape(b, n_lv, 3) > 0.5
    logb = np.log(np.array(space.problem.bounds, dtype=np.float64))
    slots = space.project(np.clip(share, 0, None) * logb)
    return Genomes(slots, np.argsort(pos, axis=2), keep)


def _fit(model, opt, x, y, epochs: int, rng: np.random.Generator) -> None:
    import torch

    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(epochs):
        perm = torch.from_numpy(rng.permutation(len(x)))
        for i in range(0, len(x), 256):
            idx = perm[i:i + 256]
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(xt[idx]).squeeze(1), yt[idx])
            loss.backward()
            opt.step()


def surrogate_search(space: MapSpace, ev: Evaluator, seed: int = 0, *, chains: int = 32,
                     lr: float = 0.05, init: Genomes | None = None) -> SearchResult:
    """Mind Mappings with a local finish; see the module docstring. Every real evaluation goes
    through ``ev`` (counted); mappings evaluated before are never evaluated again."""
    import torch

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    n_train = int(min(MAX_TRAIN, max(chains, TRAIN_FRACTION * ev.budget)))
    g0 = _seeded(space, n_train, rng, init)
    sur = _Surrogate(space, rng)
    ls = LocalSearch(space, ev, rng, rank=sur.predict)
    sur.add(g0, ls.evaluate(g0))
    if len(sur.ys) < 2 or ev.exhausted:
        return ev.result("surrogate")
    sur.fit(FIT_EPOCHS)
    polished: set[bytes] = set()
    empty = 0
    while not ev.exhausted and empty < MAX_EMPTY_ROUNDS:
        x = sur.starts(chains)
        cand = Genomes.concat([_descend(space, sur, x, lr, rng), _ranked(space, sur, rng)])
        keys = space.keys(cand)
        new = list({k: i for i, k in enumerate(keys) if k not in ls.known}.values())
        empty = 0 if new else empty + 1
        if not new:  # a tiny space may be used up: stop rather than spin
            continue
        cand = cand.take(np.array(new))
        f = ls.evaluate(cand)
        sur.add(cand, f)
        sur.fit(REFIT_EPOCHS, recent=REFIT_WINDOW)
        order = [i for i in np.argsort(f) if np.isfinite(f[i]) and space.keys(cand.take([i]))[0] not in polished]
        if order:  # the best new candidate climbs to a local optimum, guided by the MLP
            i = int(order[0])
            g, v = ls.run(cand.take([i]), float(f[i]))
            polished.update(space.keys(cand.take([i])) + space.keys(g))
            sur.add(g, np.array([v]))
    return ev.result("surrogate")


class _Surrogate:
    """The MLP from encoded mapping to standardized log(objective) and its training set."""

    def __init__(self, space: MapSpace, rng: np.random.Generator):
        self.space, self.rng = space, rng
        self.xs = np.zeros((0, 0), dtype=np.float32)
        self.ys = np.zeros(0, dtype=np.float32)
        self.model = self.opt = None

    def add(self, g: Genomes, f: np.ndarray) -> None:
        fin = np.isfinite(f)
        x = encode(self.space, self.space.decode(g))[fin]
        self.xs = x if not len(self.ys) else np.concatenate([self.xs, x])
        self.ys = np.concatenate([self.ys, np.log(f[fin]).astype(np.float32)])

    def fit(self, epochs: int, recent: int | None = None) -> None:
        import torch

        if self.model is None:
            self.mu, self.sd = float(self.ys.mean()), float(self.ys.std() + 1e-6)
            self.model = torch.nn.Sequential(
                torch.nn.Linear(self.xs.shape[1], HIDDEN), torch.nn.ReLU(),
                torch.nn.Linear(HIDDEN, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, 1))
            self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        sl = slice(-recent, None) if recent else slice(None)
        _fit(self.model, self.opt, self.xs[sl], (self.ys[sl] - self.mu) / self.sd, epochs, self.rng)

    def predict(self, g: Genomes) -> np.ndarray:
        import torch

        with torch.no_grad():
            x = torch.from_numpy(encode(self.space, self.space.decode(g)))
            return self.model(x).squeeze(1).numpy()

    def starts(self, n: int) -> np.ndarray:
        """Descent starts: random picks among the best ``n`` known points, slightly perturbed."""
        top = self.xs[np.argsort(self.ys)[:n]]
        x = top[self.rng.integers(0, len(top), n)]
        return (x + self.rng.normal(0, START_NOISE, x.shape)).astype(np.float32)


def _descend(space: MapSpace, sur: _Surrogate, x: np.ndarray, lr: float,
             rng: np.random.Generator) -> Genomes:
    """Gradient descent on the encodings with the MLP frozen, then projection and repair."""
    import torch

    xt = torch.tensor(x, requires_grad=True)
    xopt = torch.optim.Adam([xt], lr=lr)
    for p in sur.model.parameters():
        p.requires_grad_(False)
    for _ in range(DESCENT_STEPS):
        xopt.zero_grad()
        sur.model(xt).sum().backward()
        xopt.step()
    for p in sur.model.parameters():
        p.requires_grad_(True)
    return space.repair(decode(space, xt.detach().numpy()), rng)


def _ranked(space: MapSpace, sur: _Surrogate, rng: np.random.Generator) -> Genomes:
    """The ``RANK_TOP`` of ``RANK_POOL`` random repaired mappings the MLP rates best."""
    pool = space.repair(space.random(RANK_POOL, rng), rng)
    return pool.take(np.argsort(sur.predict(pool))[:RANK_TOP])
