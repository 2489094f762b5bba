"""Re-estimate BatchNorm running statistics after pruning.

Zeroing blocks shifts every downstream activation distribution, so the running mean / variance that
BatchNorm learned on the dense network are stale; one pass over some training data in train mode (no
gradient, no weight update) re-estimates them. On the digits CNN this alone lifts one-shot 50 % pruning
from ~17 % to ~92 % accuracy before any fine-tuning.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["recalibrate_batchnorm"]

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, loader: Iterable, device: torch.device | str = "cpu",
                          n_batches: int | None = None) -> int:
    """Reset every BatchNorm's running statistics and re-estimate them as a cumulative average over
    ``n_batches`` batches (all if None). Returns the number of BatchNorm layers updated."""
    bns = [m for m in model.modules() if isinstance(m, _BN) and m.track_running_stats]
    if not bns:
        return 0
    was_training = model.training
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # None = cumulative moving average: equal weight to every batch
    model.train()
    for i, (x, _) in enumerate(loader):
        if n_batches is not None and i >= n_batches:
            break
        model(x.to(device))
    for m, mom in zip(bns, saved, strict=True):
        m.momentum = mom
    model.train(was_training)
    return len(bns)
