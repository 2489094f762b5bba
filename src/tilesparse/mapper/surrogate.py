"""Gradient search on a learned surrogate (Mind Mappings, ASPLOS 2021).

1. Sample mappings, evaluate them with the real model, fit a small MLP from an encoded mapping to
   log(objective) (standardized).
2. With the MLP frozen, descend on the continuous encoding from the best known points.
3. Project every point to the nearest valid mapping (tile shares -> nearest factorization, loop
   positions -> sort, bypass -> threshold, then GAMMA repairs), evaluate it for real, add it to the
   training set, retrain briefly; restart chains that stop improving.

The surrogate is per layer (Mind Mappings trains one per problem family); the encoding is the
share of each loop's log bound in each slot, the loop positions per level, and the keep bits.
"""

from __future__ import annotations

import numpy as np

from tilesparse.costmodel.mapping import MappingBatch
from tilesparse.mapper.base import Evaluator, SearchResult
from tilesparse.mapper.search import _seeded
from tilesparse.mapper.space import Genomes, MapSpace

__all__ = ["encode", "surrogate_search"]

HIDDEN = 128
TRAIN_FRACTION = 0.2  # of the budget spent on the initial random sample
MAX_TRAIN = 2000
FIT_EPOCHS, REFIT_EPOCHS = 60, 5
DESCENT_STEPS = 10  # gradient steps between projections
STALL_RESTART = 3  # projections without improvement before a chain restarts


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
    import torch

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    n_train = int(min(MAX_TRAIN, max(chains, TRAIN_FRACTION * ev.budget)))
    g0 = _seeded(space, n_train, rng, init)
    vals = ev(g0)
    ok = np.isfinite(vals)
    xs, ys = encode(space, space.decode(g0))[ok], np.log(vals[ok]).astype(np.float32)
    if len(xs) < 2 or ev.exhausted:
        return ev.result("surrogate")
    mu, sd = float(ys.mean()), float(ys.std() + 1e-6)
    model = torch.nn.Sequential(torch.nn.Linear(xs.shape[1], HIDDEN), torch.nn.ReLU(),
                                torch.nn.Linear(HIDDEN, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    _fit(model, opt, xs, (ys - mu) / sd, FIT_EPOCHS, rng)
    start = xs[np.argsort(ys)[:chains]]
    x = start[rng.integers(0, len(start), chains)].copy()
    best_chain, stall = np.full(chains, np.inf), np.zeros(chains, dtype=int)
    while not ev.exhausted:
        xt = torch.tensor(x, requires_grad=True)
        xopt = torch.optim.Adam([xt], lr=lr)
        for p in model.parameters():
            p.requires_grad_(False)
        for _ in range(DESCENT_STEPS):
            xopt.zero_grad()
            model(xt).sum().backward()
            xopt.step()
        for p in model.parameters():
            p.requires_grad_(True)
        g = space.repair(decode(space, xt.detach().numpy()), rng)
        f = ev(g)
        enc = encode(space, space.decode(g))
        fin = np.isfinite(f)
        xs = np.concatenate([xs, enc[fin]])
        ys = np.concatenate([ys, np.log(f[fin]).astype(np.float32)])
        _fit(model, opt, xs[-4 * chains * REFIT_EPOCHS:], (ys[-4 * chains * REFIT_EPOCHS:] - mu) / sd,
             REFIT_EPOCHS, rng)
        improved = f < best_chain
        best_chain = np.minimum(best_chain, f)
        stall = np.where(improved, 0, stall + 1)
        x = enc.copy()  # continue from the projected (valid) point
        restart = stall >= STALL_RESTART
        if restart.any():  # restart from a random good point, perturbed
            top = xs[np.argsort(ys)[:chains]]
            x[restart] = top[rng.integers(0, len(top), restart.sum())] + \
                rng.normal(0, 0.1, (restart.sum(), x.shape[1])).astype(np.float32)
            stall[restart], best_chain[restart] = 0, np.inf
    return ev.result("surrogate")
