"""Mixed precision for the fine-tuning loop (``training.amp``): the forward pass and loss under
``torch.autocast``, the weights and the optimizer in float32.

``bf16`` has float32's exponent range and needs no loss scaling (it runs on CPU too); ``fp16`` loses
small gradients to underflow, so its loss is scaled by a ``GradScaler`` (whose state the checkpoint
keeps, so that a resumed run scales as the uninterrupted one would).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import Tensor

__all__ = ["Precision", "AMP_DTYPES"]

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    """Autocast and loss scaling for one run (``mode``: none | bf16 | fp16)."""

    def __init__(self, mode: str, device: torch.device):
        self.mode, self.device = mode, device
        self.scaler = torch.amp.GradScaler(device.type) if mode == "fp16" else None

    def autocast(self) -> AbstractContextManager[Any]:
        if self.mode not in AMP_DTYPES:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=AMP_DTYPES[self.mode])

    def backward(self, loss: Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """The optimizer step (skipped by the scaler when fp16 gradients overflowed)."""
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict[str, Any]:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
