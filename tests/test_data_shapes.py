"""The procedural shapes dataset: deterministic, balanced, well-formed, and seed-dependent."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tilesparse.data.shapes import (
    FILLS,
    IMAGE_SIZE,
    NUM_CLASSES,
    SHAPES,
    class_name,
    load_shapes_tensors,
    make_shapes,
    shapes_loaders,
)
from tilesparse.errors import ConfigError


def test_same_seed_same_bytes():
    x1, y1 = make_shapes(200, seed=7)
    x2, y2 = make_shapes(200, seed=7)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_two_seeds_differ():
    x1, y1 = make_shapes(200, seed=1)
    x2, y2 = make_shapes(200, seed=2)
    assert not torch.equal(x1, x2)
    assert not torch.equal(y1, y2)  # the class order is drawn too


def test_shapes_dtypes_and_label_range():
    x, y = make_shapes(90, seed=0)
    assert x.shape == (90, 1, IMAGE_SIZE, IMAGE_SIZE) and x.dtype == torch.float32
    assert y.shape == (90,) and y.dtype == torch.int64
    assert int(y.min()) >= 0 and int(y.max()) < NUM_CLASSES == len(SHAPES) * len(FILLS) == 18
    assert torch.isfinite(x).all()


@pytest.mark.parametrize("n", [18 * 5, 18 * 5 + 7])
def test_class_balance(n):
    _, y = make_shapes(n, seed=3)
    counts = np.bincount(y.numpy(), minlength=NUM_CLASSES)
    assert counts.max() - counts.min() <= 1 and counts.sum() == n
    if n % NUM_CLASSES == 0:
        assert (counts == n // NUM_CLASSES).all()


def test_images_carry_the_shape():
    """The label is in the pixels: class mean images differ (noise averages out over a class)."""
    x, y = make_shapes(18 * 40, seed=5)
    means = torch.stack([x[y == k].mean(0) for k in range(NUM_CLASSES)])
    assert float(means.std(0).mean()) > 0.02
    assert float(x.std()) > 0.1  # noise, texture and occlusion make the pixels vary


def test_train_and_test_are_independent_streams():
    d = load_shapes_tensors(36, 36)
    assert not torch.equal(d.x_train, d.x_test)
    assert torch.equal(d.x_train, make_shapes(36, seed=0)[0])


def test_loaders_like_digits():
    train, test = shapes_loaders(batch_size=16, seed=0, n_train=54, n_test=36)
    xb, yb = next(iter(train))
    assert xb.shape == (16, 1, IMAGE_SIZE, IMAGE_SIZE) and yb.dtype == torch.int64
    assert len(train.dataset) == 54 and len(test.dataset) == 36
    order1 = torch.cat([b[1] for b in shapes_loaders(16, seed=4, n_train=54, n_test=18)[0]])
    order2 = torch.cat([b[1] for b in shapes_loaders(16, seed=4, n_train=54, n_test=18)[0]])
    assert torch.equal(order1, order2)


def test_class_names_and_errors():
    assert class_name(0) == "disk/solid" and class_name(NUM_CLASSES - 1) == "bar/checker"
    with pytest.raises(ConfigError, match="n: expected a positive integer"):
        make_shapes(0)
