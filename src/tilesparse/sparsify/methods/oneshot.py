"""One-shot (predetermined) pruning: score once, zero the lowest blocks to the target, fine-tune."""

from __future__ import annotations

from typing import Any

from tilesparse.sparsify.methods.base import SparsityMethod, TrainContext

__all__ = ["OneShot"]


class OneShot(SparsityMethod):
    """Masks are chosen in ``setup`` (by the recipe's score) and stay fixed while fine-tuning."""

    name = "oneshot"

    def __init__(self) -> None:
        self.pruned = False

    def setup(self, ctx: TrainContext) -> None:
        if self.pruned:
            return  # already pruned by the caller (e.g. to measure accuracy before fine-tuning)
        self.prune(ctx)
        self.pruned = True

    def retarget(self, ctx: TrainContext) -> None:
        if self.pruned:
            self.prune(ctx)  # monotone: the zeroed blocks stay, more join them

    def state_dict(self) -> dict[str, Any]:
        return {"pruned": self.pruned}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pruned = bool(state.get("pruned", False))
