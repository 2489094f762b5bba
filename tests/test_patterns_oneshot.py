"""One-shot block pruning (``patterns.prune_oneshot``) against a hand-rolled reference: the masks
the Table II networks are compiled with must not change, and the first-conv rule is shared with
the sparsifier."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from tilesparse.errors import ConfigError
from tilesparse.patterns import first_conv_name, prune_oneshot
from tilesparse.sparsify import BlockSparsifier, Recipe


def reference_keep(w: np.ndarray, groups: int, bo: int, bi: int, sparsity: float) -> np.ndarray:
    """Block keep-mask by hand: per group, the squared weights summed over each b_o x b_i x kernel
    block (ragged edge blocks sum what they have), sqrt; zero the round(s * n) lowest over the
    whole layer, ties to the lowest (row-major) index."""
    w = w.reshape(w.shape[0], w.shape[1], -1).astype(np.float64)
    o, ig = w.shape[:2]
    og = o // groups
    rpg, cols = math.ceil(og / bo), math.ceil(ig / bi)
    score = np.zeros((groups * rpg, cols))
    for oc in range(o):
        g, r = divmod(oc, og)
        for c in range(ig):
            score[g * rpg + r // bo, c // bi] += float((w[oc, c] ** 2).sum())
    score = np.sqrt(score)
    flat = score.ravel()
    n_zero = min(flat.size, round(sparsity * flat.size))
    keep = np.ones(flat.size, bool)
    keep[sorted(range(flat.size), key=lambda i: (flat[i], i))[:n_zero]] = False
    return keep.reshape(score.shape)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 13, 3)
        self.a = nn.Conv2d(13, 39, 3)
        self.b = nn.Conv2d(39, 15, 1, groups=3)
        self.fc = nn.Linear(15, 10)


@pytest.mark.parametrize("sparsity,block", [(0.5, (8, 8)), (0.3, (4, 16)), (0.75, (2, 2))])
def test_masks_match_the_hand_rolled_reference(sparsity, block):
    torch.manual_seed(0)
    m = Net()
    before = {n: p.weight.detach().clone() for n, p in m.named_children()}
    masks = prune_oneshot(m, sparsity, block)
    assert list(masks) == ["a", "b", "fc"]  # every conv and linear but the first conv
    assert torch.equal(m.stem.weight, before["stem"])
    for name, mod in m.named_children():
        if name == "stem":
            continue
        want = reference_keep(before[name].numpy(), getattr(mod, "groups", 1), *block, sparsity)
        np.testing.assert_array_equal(masks[name].numpy(), want, err_msg=name)
        # kept blocks keep their weights, dropped ones are exactly zero
        bo, bi = block
        w, w0 = mod.weight.detach().numpy(), before[name].numpy()
        og = w.shape[0] // getattr(mod, "groups", 1)
        for oc in range(w.shape[0]):
            g, r = divmod(oc, og)
            for c in range(w.shape[1]):
                kept = want[g * math.ceil(og / bo) + r // bo, c // bi]
                np.testing.assert_array_equal(w[oc, c], w0[oc, c] if kept else 0 * w0[oc, c])


def test_first_conv_rule_is_shared_with_the_sparsifier():
    m = Net()
    assert first_conv_name(m) == "stem"
    sp = BlockSparsifier(Recipe(sparsity=0.5, block=(4, 4), layer_types=["conv", "linear"])).prepare(m)
    assert "stem" not in sp.layers and "first convolution" in sp.skipped["stem"]


def test_nothing_to_prune_and_bad_sparsity():
    with pytest.raises(ConfigError, match="no sparsifiable layer"):
        prune_oneshot(nn.Sequential(nn.Conv2d(3, 8, 3)), 0.5, name="one_conv")
    with pytest.raises(ConfigError, match="sparsity"):
        prune_oneshot(Net(), 1.0)
