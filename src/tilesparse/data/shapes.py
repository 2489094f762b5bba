"""Procedural shapes-and-textures: a harder image task than digits that needs no download.

18 classes = 6 shapes (disk, ring, square, triangle, cross, bar) x 3 fills (solid, stripes,
checker), 16x16 grayscale. Every image draws a random position, scale, rotation, texture period and
phase, contrast and background; then Gaussian noise and, half of the time, a random occluding
rectangle. Digits saturates (every sparsity method within about a point of dense); here a small
CNN stays well below 100 %, so patterns and methods can separate. Generation is vectorised numpy
with a seeded ``numpy.random.Generator``: the same seed gives the same bytes.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from tilesparse.data.digits import DigitsData
from tilesparse.errors import ConfigError

__all__ = ["SHAPES", "FILLS", "NUM_CLASSES", "IMAGE_SIZE", "ShapesData", "make_shapes", "load_shapes_tensors",
           "shapes_loaders", "class_name"]

SHAPES = ("disk", "ring", "square", "triangle", "cross", "bar")
FILLS = ("solid", "stripes", "checker")
NUM_CLASSES = len(SHAPES) * len(FILLS)  # label = shape * len(FILLS) + fill
IMAGE_SIZE = 16
DATA_SEED = 0  # the shipped dataset: train and test are drawn from independent streams of it
DEFAULT_TRAIN = 12_600  # 700 per class
DEFAULT_TEST = 3_060  # 170 per class

# Difficulty knobs (tuned so the digits-sized CNN ends clearly below 100 %).
SCALE_PX = (4.5, 7.0)  # half-size of a shape, pixels
PERIOD_PX = (3.0, 4.5)  # stripe / checker period, pixels
NOISE_STD = 0.08
OCCLUDE_P = 0.3
OCCLUDE_PX = (3, 6)  # side of the occluding rectangle, pixels
EDGE = 0.08  # soft edge width, in shape units


ShapesData = DigitsData  # the same train/test split of tensors; here images are (N, 1, 16, 16)


def class_name(label: int) -> str:
    """'disk/solid', 'ring/stripes', ... for a label in [0, 18)."""
    return f"{SHAPES[label // len(FILLS)]}/{FILLS[label % len(FILLS)]}"


def _sdf(shape: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance-like field (negative inside) of each image's shape, in shape units."""
    r = np.hypot(u, v)
    au, av = np.abs(u), np.abs(v)
    tri = np.max([np.cos(a) * u + np.sin(a) * v for a in (np.pi / 2 + k * 2 * np.pi / 3 for k in range(3))],
                 axis=0) - 0.5
    fields = (
        r - 1.0,  # disk
        np.abs(r - 0.72) - 0.28,  # ring
        np.maximum(au, av) - 0.82,  # square
        tri * 1.6,  # triangle (inradius 0.5, scaled to a similar area)
        np.minimum(np.maximum(au - 0.33, av - 1.0), np.maximum(au - 1.0, av - 0.33)),  # cross
        np.maximum(au - 1.0, av - 0.38),  # bar
    )
    return np.select([shape == k for k in range(len(fields))], fields)


def _fill(fill: np.ndarray, u_px: np.ndarray, v_px: np.ndarray, period: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """Texture value in [0, 1] per pixel: solid 1, stripes along u, checker in u and v."""
    a = np.sin(2 * np.pi * u_px / period + phase[:, 0, None, None]) > 0
    b = np.sin(2 * np.pi * v_px / period + phase[:, 1, None, None]) > 0
    dark = 0.15
    stripes = np.where(a, 1.0, dark)
    checker = np.where(a ^ b, 1.0, dark)
    return np.where(fill == 0, 1.0, np.where(fill == 1, stripes, checker))


def _occlude(img: np.ndarray, rng: np.random.Generator) -> None:
    n, size = img.shape[0], img.shape[1]
    hit = np.asarray(rng.random(n) < OCCLUDE_P, dtype=bool)
    h = rng.integers(OCCLUDE_PX[0], OCCLUDE_PX[1] + 1, n)
    w = rng.integers(OCCLUDE_PX[0], OCCLUDE_PX[1] + 1, n)
    y0 = rng.integers(0, size - h + 1)
    x0 = rng.integers(0, size - w + 1)
    level = np.asarray(rng.uniform(0.0, 1.0, n), dtype=np.float64)
    ys, xs = np.arange(size)[None, :, None], np.arange(size)[None, None, :]
    box = ((ys >= y0[:, None, None]) & (ys < (y0 + h)[:, None, None])
           & (xs >= x0[:, None, None]) & (xs < (x0 + w)[:, None, None]) & hit[:, None, None])
    img[box] = np.broadcast_to(level[:, None, None], img.shape)[box]


def make_shapes(n: int, seed: int = DATA_SEED, size: int = IMAGE_SIZE) -> tuple[Tensor, Tensor]:
    """``n`` images (n, 1, size, size) float32 and labels (n,) int64; classes as balanced as n allows
    (counts differ by at most one), in a seeded random order."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ConfigError("make_shapes", [f"n: expected a positive integer, got {n!r}"])
    if not isinstance(size, int) or isinstance(size, bool) or size < 8:
        raise ConfigError("make_shapes", [f"size: expected an integer >= 8 pixels, got {size!r}"])
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % NUM_CLASSES)
    shape, fill = labels // len(FILLS), labels % len(FILLS)
    s = size / IMAGE_SIZE  # knobs are in pixels of a 16x16 image
    scale = rng.uniform(*SCALE_PX, n) * s
    margin = 0.55 * scale
    cy = rng.uniform(margin, size - 1 - margin)
    cx = rng.uniform(margin, size - 1 - margin)
    theta = rng.uniform(0, 2 * np.pi, n)
    period = rng.uniform(*PERIOD_PX, n) * s
    phase = rng.uniform(0, 2 * np.pi, (n, 2))
    ys, xs = np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64), indexing="ij")
    dy, dx = ys[None] - cy[:, None, None], xs[None] - cx[:, None, None]
    c, si = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    u_px, v_px = c * dx + si * dy, -si * dx + c * dy
    sc = scale[:, None, None]
    inside = 1.0 / (1.0 + np.exp(np.clip(_sdf(shape[:, None, None], u_px / sc, v_px / sc) / EDGE, -50, 50)))
    texture = _fill(fill[:, None, None], u_px, v_px, period[:, None, None], phase)
    background = rng.uniform(0.0, 0.35, n)[:, None, None]
    contrast = rng.uniform(0.5, 1.0, n)[:, None, None]
    img = background + contrast * inside * texture
    _occlude(img, rng)
    img = img + rng.normal(0.0, NOISE_STD, img.shape)
    x = torch.from_numpy(img.astype(np.float32)).unsqueeze(1)
    return x, torch.from_numpy(labels.astype(np.int64))


def load_shapes_tensors(n_train: int = DEFAULT_TRAIN, n_test: int = DEFAULT_TEST,
                        data_seed: int = DATA_SEED) -> ShapesData:
    """Train and test sets from independent streams of ``data_seed`` (the default is the shipped set)."""
    x_tr, y_tr = make_shapes(n_train, seed=2 * data_seed)
    x_te, y_te = make_shapes(n_test, seed=2 * data_seed + 1)
    return ShapesData(x_tr, y_tr, x_te, y_te)


def shapes_loaders(batch_size: int = 64, seed: int = 0, n_train: int = DEFAULT_TRAIN, n_test: int = DEFAULT_TEST,
                   data_seed: int = DATA_SEED) -> tuple[DataLoader, DataLoader]:
    """(train loader, test loader) like ``digits_loaders``: the data is the fixed set of ``data_seed``;
    ``seed`` drives the train loader's shuffling."""
    d = load_shapes_tensors(n_train, n_test, data_seed)
    gen = torch.Generator().manual_seed(seed)
    train = DataLoader(TensorDataset(d.x_train, d.y_train), batch_size=batch_size, shuffle=True, generator=gen)
    test = DataLoader(TensorDataset(d.x_test, d.y_test), batch_size=512)
    return train, test
