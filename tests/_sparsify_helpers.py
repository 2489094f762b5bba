"""Toy models and data shared by the sparsify tests."""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class ToyNet(nn.Module):
    """First conv (3 in), a 16->24 conv (ragged 24 at 16x16 blocks), a grouped conv, a depthwise conv,
    and a linear head."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.conv = nn.Conv2d(16, 24, 3, padding=1)
        self.grouped = nn.Conv2d(24, 32, 1, groups=2)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.fc = nn.Linear(32, classes)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.conv(x))
        x = torch.relu(self.grouped(x))
        x = torch.relu(self.dw(x))
        return self.fc(x.mean(dim=(2, 3)))


def toy_loaders(n: int = 64, seed: int = 0, batch: int = 16):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 6, 6, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    gen = torch.Generator().manual_seed(seed)
    train = DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True, generator=gen)
    test = DataLoader(TensorDataset(x[:32], y[:32]), batch_size=32)
    return train, test
