"""Learning-rate schedules as a function of the epoch (``TrainingConfig.lr_schedule``).

The learning rate of epoch ``e`` is each parameter group's base rate times ``lr_factor(cfg, e)``,
set at the start of the epoch. Being a function of the epoch and the settings alone (both in
``last.pt``), a resumed run gets exactly the rates of an uninterrupted one, an optimizer rebuilt by a
method (penalty hardening) carries on the schedule, and ``--override`` of ``lr`` or ``epochs``
reshapes it from the resumed epoch. Per epoch, the same rates as torch's ``StepLR`` and
``CosineAnnealingLR(T_max=epochs, eta_min=lr_min)`` stepped once an epoch.
"""

from __future__ import annotations

import math

import torch

from tilesparse.sparsify.recipe import TrainingConfig

__all__ = ["BASE_LR", "lr_factor", "set_epoch_lr", "tag_base_lr"]

BASE_LR = "initial_lr"  # the key torch's own schedulers keep a group's base rate under


def lr_factor(cfg: TrainingConfig, epoch: int) -> float:
    """Multiplier of the base learning rate in ``epoch`` (from 0)."""
    if cfg.lr_schedule == "step":
        return float(cfg.lr_gamma ** (epoch // cfg.lr_step_epochs))
    if cfg.lr_schedule == "cosine":
        floor = cfg.lr_min / cfg.lr
        return floor + (1 - floor) * (1 + math.cos(math.pi * epoch / max(cfg.epochs, 1))) / 2
    return 1.0


def tag_base_lr(opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Record each group's configured rate as its base (saved with the optimizer state)."""
    for group in opt.param_groups:
        group[BASE_LR] = group["lr"]
    return opt


def set_epoch_lr(opt: torch.optim.Optimizer, cfg: TrainingConfig, epoch: int) -> float:
    """Set every group's rate for ``epoch``; returns the first group's (the model weights')."""
    factor = lr_factor(cfg, epoch)
    for group in opt.param_groups:
        group["lr"] = group.setdefault(BASE_LR, group["lr"]) * factor  # an untagged group: its rate is the base
    return float(opt.param_groups[0]["lr"])
