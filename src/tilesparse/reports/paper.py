"""The paper's estimated full-network latencies, batch 1, in milliseconds (Table II).

Source: D'Alberto et al., "Weight Block Sparsity: Training, Compilation, and AI Engine
Accelerators", arXiv 2407.09453 (2024), Table II. "sparse" = 50 % 8×8 blocks on every conv but the first;
``None`` = the paper's compiler failed to produce code for that cell. The paper notes its VGG16
numbers appear to cover the convolutional part only.
"""

from __future__ import annotations

__all__ = ["NETWORKS", "SQUARE_ARRAYS", "TABLE2_MS", "paper_ms"]

NETWORKS = ("resnet50", "inception_v3", "vgg16")
SQUARE_ARRAYS = tuple(f"{r}x{r}" for r in range(2, 9))

# array -> network -> (dense ms, sparse ms)
TABLE2_MS: dict[str, dict[str, tuple[float | None, float | None]]] = {
    "2x2": {"resnet50": (24.92, 15.83), "inception_v3": (42.84, 24.41), "vgg16": (44.76, 26.09)},
    "3x3": {"resnet50": (12.70, 8.66), "inception_v3": (23.87, 14.22), "vgg16": (25.33, 10.02)},
    "4x4": {"resnet50": (10.77, 7.06), "inception_v3": (17.41, 10.13), "vgg16": (13.71, 8.85)},
    "5x5": {"resnet50": (None, 4.30), "inception_v3": (9.69, None), "vgg16": (None, 4.34)},
    "6x6": {"resnet50": (5.71, 4.49), "inception_v3": (10.64, 6.44), "vgg16": (None, 5.77)},
    "7x7": {"resnet50": (4.21, 3.21), "inception_v3": (8.73, None), "vgg16": (7.46, 5.29)},
    "8x8": {"resnet50": (6.38, 4.60), "inception_v3": (9.09, 5.67), "vgg16": (9.20, 6.50)},
}


def paper_ms(network: str, array: str, sparse: bool) -> float | None:
    """The paper's number for a cell, or None if it failed or the cell is not in Table II."""
    row = TABLE2_MS.get(array, {}).get(network)
    return None if row is None else row[1 if sparse else 0]
