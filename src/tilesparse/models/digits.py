"""A small CNN for scikit-learn's 8x8 digits: four 3x3 convs (channels multiples of 8), the last
three sparsifiable with 8x8 blocks (the first has one input channel and is excluded by default).
``shapes_cnn`` is the same network, half as wide, for the 16x16 18-class procedural shapes."""

from __future__ import annotations

from torch import Tensor, nn

from tilesparse.models.zoo import INPUT_SHAPES, register

__all__ = ["DigitsCNN", "digits_cnn", "shapes_cnn"]

INPUT_SHAPES["digits_cnn"] = (1, 8, 8)  # so later stages (capture, compile) know the input size
INPUT_SHAPES["shapes_cnn"] = (1, 16, 16)


def _conv(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class DigitsCNN(nn.Module):
    """1x8x8 -> conv 32 -> conv 32 -> pool -> conv 64 -> conv 64 -> pool -> global avg -> linear."""

    def __init__(self, num_classes: int = 10, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            *_conv(1, width), *_conv(width, width), nn.MaxPool2d(2),
            *_conv(width, 2 * width), *_conv(2 * width, 2 * width), nn.MaxPool2d(2),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


@register("digits_cnn")
def digits_cnn(num_classes: int = 10) -> DigitsCNN:
    return DigitsCNN(num_classes=num_classes)


@register("shapes_cnn")
def shapes_cnn(num_classes: int = 18) -> DigitsCNN:
    """Convs 16-16-32-32 for ``tilesparse.data.shapes`` (18 classes, 16x16)."""
    return DigitsCNN(num_classes=num_classes, width=16)
