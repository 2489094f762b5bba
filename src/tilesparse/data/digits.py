"""scikit-learn's bundled handwritten digits (1797 images, 8x8, 10 classes) as torch tensors.

Pixels (0..16) are scaled to [0, 1]; the train/test split is stratified and seeded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["DigitsData", "load_digits_tensors", "digits_loaders"]

PIXEL_MAX = 16.0  # sklearn digits pixels are counts 0..16
DEFAULT_TEST_FRACTION = 0.25


@dataclass(frozen=True)
class DigitsData:
    x_train: Tensor  # (N, 1, 8, 8) float32
    y_train: Tensor  # (N,) int64
    x_test: Tensor
    y_test: Tensor


def load_digits_tensors(seed: int = 0, test_fraction: float = DEFAULT_TEST_FRACTION) -> DigitsData:
    """Seeded stratified split of sklearn's digits into train / test tensors."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    ds = load_digits()
    x = torch.tensor(ds.images, dtype=torch.float32).unsqueeze(1) / PIXEL_MAX
    y = torch.tensor(ds.target, dtype=torch.int64)
    idx_tr, idx_te = train_test_split(
        torch.arange(len(y)).numpy(), test_size=test_fraction, random_state=seed, stratify=y.numpy()
    )
    idx_tr, idx_te = torch.as_tensor(idx_tr), torch.as_tensor(idx_te)
    return DigitsData(x[idx_tr], y[idx_tr], x[idx_te], y[idx_te])


def digits_loaders(batch_size: int = 64, seed: int = 0) -> tuple[DataLoader, DataLoader]:
    """(train loader, test loader); the train loader shuffles with a seeded generator."""
    d = load_digits_tensors(seed)
    gen = torch.Generator().manual_seed(seed)
    train = DataLoader(TensorDataset(d.x_train, d.y_train), batch_size=batch_size, shuffle=True, generator=gen)
    test = DataLoader(TensorDataset(d.x_test, d.y_test), batch_size=512)
    return train, test
