"""Penalty method: a trainable soft block mask Gamma (one gate per block, W_eff = W * Gamma) trained with
the paper's log-sum-exp penalty, then hardened to a bitmap.

    lambda(Gamma) = -(LSE_a(Gamma) - LSE_min_a(Gamma)) + beta * ||Gamma - T||_2 + iota * ||Gamma||_1
    LSE_a(x) = log(sum(exp(a * x))) / a   (smooth max),  LSE_min_a(x) = -LSE_a(-x)   (smooth min)

summed over layers, T the target density. Gates start at 1 (the dense network) and are clamped to
[0, 1] after every optimizer step (the paper's variant that keeps Gamma in [0, 1]). After
``penalty.epochs`` epochs (default: half the run) the gates are folded into the weights
(W <- W * Gamma) and the blocks with the lowest L2 norm of W * Gamma are zeroed to the target; the
remaining epochs fine-tune with the hard mask.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from tilesparse.sparsify.methods.base import SparsityMethod, TrainContext

__all__ = ["Penalty", "lse_penalty"]


def lse_penalty(gate: Tensor, alpha: float, beta: float, iota: float, target: float) -> Tensor:
    """The paper's penalty for one layer's gates (any shape)."""
    g = gate.flatten()
    smooth_max = torch.logsumexp(alpha * g, 0) / alpha
    smooth_min = -torch.logsumexp(-alpha * g, 0) / alpha
    return -(smooth_max - smooth_min) + beta * torch.linalg.vector_norm(g - target) + iota * g.abs().sum()


class Penalty(SparsityMethod):
    name = "penalty"

    def __init__(self) -> None:
        self.hardened = False

    def _phase_epochs(self, ctx: TrainContext) -> int:
        return ctx.recipe.penalty.epochs or max(1, ctx.epochs // 2)

    def setup(self, ctx: TrainContext) -> None:
        if not ctx.sparsifier.gates:
            ctx.sparsifier.attach_gates(1.0)

    def param_groups(self, ctx: TrainContext) -> list[dict[str, Any]]:
        """The gates, in their own group: own learning rate, no weight decay (the penalty regularises)."""
        if not ctx.sparsifier.gates:
            return []
        lr = ctx.recipe.penalty.gate_lr
        return [{"params": list(ctx.sparsifier.gates.values()), "lr": lr, "weight_decay": 0.0}]

    def on_epoch_start(self, epoch: int, ctx: TrainContext) -> bool:
        if not self.hardened and epoch >= self._phase_epochs(ctx):
            self.harden(ctx)
            return True  # gates left the model: the optimizer must be rebuilt
        return False

    def penalty(self, ctx: TrainContext) -> Tensor | None:
        if not ctx.sparsifier.gates:
            return None
        cfg, r = ctx.recipe.penalty, ctx.recipe
        target = cfg.target_density if cfg.target_density is not None else 1.0 - r.sparsity
        terms = [lse_penalty(g, cfg.alpha, cfg.beta, cfg.iota, target) for g in ctx.sparsifier.gates.values()]
        return cfg.weight * torch.stack(terms).sum()

    @torch.no_grad()
    def after_optimizer_step(self, ctx: TrainContext) -> None:
        for g in ctx.sparsifier.gates.values():
            g.clamp_(0.0, 1.0)

    def harden(self, ctx: TrainContext) -> None:
        """Fold the gates into the weights and keep the strongest blocks of W * Gamma."""
        ctx.sparsifier.fold_gates()
        ctx.sparsifier.step(score="l2")
        self.after_prune(ctx)
        self.hardened = True

    def finish(self, ctx: TrainContext) -> None:
        if not self.hardened:
            self.harden(ctx)

    def retarget(self, ctx: TrainContext) -> None:
        if self.hardened:  # before hardening, the penalty and the hardening read the new targets anyway
            ctx.sparsifier.step(score="l2")
            self.after_prune(ctx)

    def state_dict(self) -> dict[str, Any]:
        return {"hardened": self.hardened}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.hardened = bool(state.get("hardened", False))
