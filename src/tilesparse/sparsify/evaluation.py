"""Top-1 and top-5 accuracy of a classifier over a loader (the per-epoch evaluation of the Trainer)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["Accuracy", "topk_correct", "evaluate_topk"]

TOP_K = (1, 5)


@dataclass(frozen=True)
class Accuracy:
    top1: float  # percent
    top5: float  # percent; with fewer than 5 classes every label is in the top 5 (100 %)
    samples: int


def topk_correct(logits: Tensor, labels: Tensor, ks: tuple[int, ...] = TOP_K) -> list[int]:
    """How many labels are among the ``k`` highest logits of their row, for each ``k``.

    ``k`` above the class count counts every row. The first place is ``argmax``'s (its tie rule:
    the lowest class index), the rest ``topk``'s."""
    if logits.dim() != 2:
        raise ValueError(f"expected logits of shape (batch, classes), got {tuple(logits.shape)}")
    labels = labels.view(-1, 1)
    hit = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices == labels  # (batch, k) best first
    first = logits.argmax(dim=1, keepdim=True) == labels
    return [int((first if k == 1 else hit[:, :k]).any(dim=1).sum()) for k in ks]


@torch.no_grad()
def evaluate_topk(model: nn.Module, loader: Iterable, device: torch.device | str = "cpu") -> Accuracy:
    """Top-1 and top-5 accuracy in percent, in eval mode (the model's mode is restored)."""
    was = model.training
    model.eval()
    hits, total = [0, 0], 0
    for x, y in loader:
        y = y.to(device)
        c1, c5 = topk_correct(model(x.to(device)), y)
        hits, total = [hits[0] + c1, hits[1] + c5], total + len(y)
    model.train(was)
    n = max(total, 1)
    return Accuracy(100.0 * hits[0] / n, 100.0 * hits[1] / n, total)
