"""The training-method protocol: hooks the fine-tuning loop calls (or that you call from your own loop).

    method.setup(ctx)                  # once, before the first epoch (fresh start only)
    rebuild = method.on_epoch_start(epoch, ctx)   # True: the optimizer must be rebuilt
    loss = task_loss + method.penalty(ctx)        # None for methods without a penalty
    optimizer.step(); method.after_optimizer_step(ctx)
    method.finish(ctx)                 # after the last epoch: the target sparsity is reached here
    method.retarget(ctx)               # on resume with new sparsity targets (--override)

A method's behaviour depends only on the epoch and the sparsifier's state, so resuming from a
checkpoint is exact.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from tilesparse.errors import ConfigError
from tilesparse.patterns.scores import GRADIENT_SCORES
from tilesparse.sparsify.calibration import recalibrate_batchnorm
from tilesparse.sparsify.importance import gradient_stats
from tilesparse.sparsify.recipe import Recipe
from tilesparse.sparsify.sparsifier import Sparsifier

__all__ = ["TrainContext", "SparsityMethod"]


@dataclass
class TrainContext:
    """What a method may use: the prepared sparsifier, training data, loss and device."""

    sparsifier: Sparsifier | None
    loader: Iterable | None = None
    loss_fn: Callable[[Tensor, Tensor], Tensor] = nn.functional.cross_entropy
    device: torch.device | str = "cpu"
    epochs: int = 0

    @property
    def recipe(self) -> Recipe:
        return self.sparsifier.recipe


class SparsityMethod:
    """Base class: no-op hooks. Subclasses override what they need."""

    name = "base"

    def setup(self, ctx: TrainContext) -> None:
        """Called once before training (not on resume)."""

    def on_epoch_start(self, epoch: int, ctx: TrainContext) -> bool:
        return False

    def penalty(self, ctx: TrainContext) -> Tensor | None:
        return None

    def param_groups(self, ctx: TrainContext) -> list[dict[str, Any]]:
        """Extra optimizer parameter groups (e.g. trainable gates)."""
        return []

    def after_optimizer_step(self, ctx: TrainContext) -> None:
        """Called after every optimizer step."""

    def finish(self, ctx: TrainContext) -> None:
        """Called after the last epoch."""

    def retarget(self, ctx: TrainContext) -> None:
        """The layers' target sparsities changed on resume (``--override``): make the masks follow them
        (masks already final are pruned further; schedules still running carry on to the new targets)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""

    @staticmethod
    def prune(ctx: TrainContext, sparsity: float | dict[str, float] | None = None, score: str | None = None) -> None:
        """Score units (gathering gradient statistics if the score needs them) and apply masks."""
        r = ctx.recipe
        score = score or r.score
        stats = None
        if score in GRADIENT_SCORES:
            if ctx.loader is None:
                raise ConfigError("score", [f"score {score!r} needs training data to estimate gradients; "
                                            "pass a data loader or use l1 / l2 / variance"])
            stats = gradient_stats(ctx.sparsifier, ctx.loader, score, ctx.loss_fn, r.score_batches,
                                   r.hutchinson_samples, ctx.device, r.training.seed)
        ctx.sparsifier.step(stats, sparsity=sparsity, score=score)
        SparsityMethod.after_prune(ctx)

    @staticmethod
    def after_prune(ctx: TrainContext) -> None:
        """Re-estimate BatchNorm statistics, which pruning made stale (if data and the recipe allow)."""
        n = ctx.recipe.bn_recalibration_batches
        if ctx.loader is not None and n > 0:
            recalibrate_batchnorm(ctx.sparsifier.model, ctx.loader, ctx.device, n)
