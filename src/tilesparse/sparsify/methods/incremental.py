"""Incremental (gradual) pruning: every k epochs each layer's sparsity rises until the target.

Linear schedule: layer l at pruning step j (j = 1, 2, ...) has sparsity
``min(target_l, j * max(step_l, 1 / units_l))`` — at least one more unit (block, or weight for N:M
and hierarchies) per step. Cubic schedule (Zhu & Gupta 2017): ``n_l = ceil(target_l / step_l)``
steps along ``target_l * (1 - (1 - j / n_l)^3)``. Units zeroed earlier stay zeroed; for a pattern
with a fixed sparsity (2:4) the steps below it zero the lowest-scoring weights the full pattern
would zero, so the last step lands on the pattern exactly. Steps are per layer
(``layer_steps``) or, with ``hessian_ranked_steps``, by Hessian-trace tertile as in the paper's code:
the least sensitive third of the layers gets the largest step (12 %), the most sensitive the smallest (5 %).
If the schedule has not reached the target when training ends, ``finish`` prunes to it.
"""

from __future__ import annotations

import math
from typing import Any

from tilesparse.sparsify.importance import hessian_traces
from tilesparse.sparsify.methods.base import SparsityMethod, TrainContext

__all__ = ["Incremental", "ranked_steps"]


def ranked_steps(traces: dict[str, float], steps: tuple[float, float, float]) -> dict[str, float]:
    """Tertiles of layers by ascending trace get steps[0], steps[1], steps[2]."""
    order = sorted(traces, key=lambda n: traces[n])
    n = len(order)
    return {name: steps[min(2, (3 * i) // max(n, 1))] for i, name in enumerate(order)}


class Incremental(SparsityMethod):
    name = "incremental"

    def __init__(self) -> None:
        self.steps: dict[str, float] = {}
        self.reached = False

    def setup(self, ctx: TrainContext) -> None:
        cfg = ctx.recipe.incremental
        layers = ctx.sparsifier.layers
        self.steps = {n: cfg.layer_steps.get(n, cfg.step) for n in layers}
        if cfg.hessian_ranked_steps and ctx.loader is not None:
            traces = hessian_traces(ctx.sparsifier, ctx.loader, ctx.loss_fn, ctx.recipe.score_batches,
                                    ctx.recipe.hutchinson_samples, ctx.device, ctx.recipe.training.seed)
            ranked = ranked_steps(traces, cfg.ranked_steps)
            self.steps = {n: cfg.layer_steps.get(n, ranked[n]) for n in layers}
        unknown = [n for n in cfg.layer_steps if n not in layers]
        if unknown:
            from tilesparse.errors import ConfigError

            raise ConfigError("recipe", [f"incremental.layer_steps: unknown layer {n!r}" for n in unknown])

    def levels(self, j: int, ctx: TrainContext) -> dict[str, float]:
        """Sparsity of every layer after pruning step ``j``."""
        cubic = ctx.recipe.incremental.schedule == "cubic"
        out = {}
        for n, layer in ctx.sparsifier.layers.items():
            step = max(self.steps[n], 1.0 / layer.units)
            if cubic:
                n_steps = max(1, math.ceil(layer.target / step - 1e-9))
                out[n] = layer.target * (1.0 - (1.0 - min(j, n_steps) / n_steps) ** 3)
            else:
                out[n] = min(layer.target, j * step)
        return out

    def on_epoch_start(self, epoch: int, ctx: TrainContext) -> bool:
        every = ctx.recipe.incremental.every_epochs
        if self.reached or epoch % every:
            return False
        levels = self.levels(epoch // every + 1, ctx)
        self.prune(ctx, levels)
        self.reached = all(levels[n] >= layer.target for n, layer in ctx.sparsifier.layers.items())
        return False

    def finish(self, ctx: TrainContext) -> None:
        if not self.reached:
            self.prune(ctx)
            self.reached = True

    def retarget(self, ctx: TrainContext) -> None:
        self.reached = False  # the schedule (or finish) goes on to the new targets

    def state_dict(self) -> dict[str, Any]:
        return {"steps": dict(self.steps), "reached": self.reached}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = dict(state.get("steps", {}))
        self.reached = bool(state.get("reached", False))
