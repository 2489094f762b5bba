"""Small networks shared by the capture/passes/quant tests: each exercises a family of IR ops and
the PyTorch idioms torchvision uses for them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every batch-norm non-trivial statistics and affine parameters (so folding is tested)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(c, generator=g) * 2 + 0.2)
            if m.affine:
                m.weight.data.copy_(torch.randn(c, generator=g))
                m.bias.data.copy_(torch.randn(c, generator=g) * 0.3)
    return model.eval()


def conv_bn(cin: int, cout: int, k: int = 3, s: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class TinyResNet(nn.Module):
    """conv-bn-relu stem, maxpool, a bottleneck with a strided downsample and `out += identity`,
    global pool, torch.flatten, linear — the ResNet idioms."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = conv_bn(3, 16, 3, 2)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.conv1 = conv_bn(16, 16, 1)
        self.conv2 = nn.Conv2d(16, 32, 3, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.down = nn.Sequential(nn.Conv2d(16, 32, 1, 2, bias=False), nn.BatchNorm2d(32))
        self.relu = nn.ReLU(inplace=True)
        self.avg = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.stem(x))
        identity = self.down(x)
        out = self.bn2(self.conv2(self.conv1(x)))
        out += identity
        out = self.relu(out)
        return self.fc(torch.flatten(self.avg(out), 1))


class TinyInception(nn.Module):
    """Branches joined by torch.cat (one of them a bare max-pool, one a nested cat), F.relu,
    F.avg_pool2d with padding, F.max_pool2d, dropout, x.view(x.size(0), -1)."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = conv_bn(3, 16, 3, 2)
        self.b1 = nn.Conv2d(16, 8, 1)
        self.b2a = nn.Conv2d(16, 8, (1, 3), padding=(0, 1))
        self.b2b = nn.Conv2d(16, 8, (3, 1), padding=(1, 0))
        self.bp = nn.Conv2d(16, 8, 1)
        self.red = nn.Conv2d(48, 24, 2)  # 8x8 -> 7x7, then a ceil-mode pool -> 4x4
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(24 * 4 * 4 + 48, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        b1 = F.relu(self.b1(x))
        b2 = torch.cat([F.relu(self.b2a(x)), F.relu(self.b2b(x))], 1)
        bp = F.relu(self.bp(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1)))
        x = torch.cat([b1, b2, bp, F.max_pool2d(x, kernel_size=1, stride=1)], dim=1)
        y = F.max_pool2d(self.red(x), 2, ceil_mode=True)
        z = F.adaptive_avg_pool2d(x, 1)
        y = torch.cat([y.view(y.size(0), -1), z.reshape(z.shape[0], -1)], 1)
        return self.fc(self.drop(y))


class TinyVGG(nn.Module):
    """VGG's head: a 3x3 adaptive pool that is the identity (12x12 input), nn.Flatten of C×3×3,
    three linears with ReLU/Dropout in a Sequential, and ReLU6 / hardtanh(0, 6) activations."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU6(), nn.MaxPool2d(2),
                                      nn.Conv2d(16, 16, 3, padding=1), nn.Hardtanh(0.0, 6.0),
                                      nn.MaxPool2d(2), nn.Identity())
        self.avgpool = nn.AdaptiveAvgPool2d((3, 3))
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(nn.Linear(16 * 9, 32), nn.ReLU(True), nn.Dropout(),
                                        nn.Linear(32, 32), nn.ReLU(True), nn.Linear(32, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(self.flatten(x))
