"""The pattern family: masks obey their rules (checked by hand-written loops, not by ``check``),
``check`` catches violations, the grammar round-trips, zoo models reach the intended density."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from tilesparse.errors import ConfigError
from tilesparse.patterns import (
    NM,
    Block,
    Channel,
    Filter,
    Hierarchical,
    Unstructured,
    parse_pattern,
    pattern_from_dict,
    prune_mask,
)


def _runs_along_in(mask: torch.Tensor, groups: int, m: int) -> list[int]:
    """Kept counts of every run of m consecutive input channels (per group, output row, kernel
    position), by plain loops: the independent reference for N:M."""
    o, i_g = mask.shape[:2]
    flat = mask.expand(mask.shape).reshape(o, i_g, -1)
    counts = []
    for row in range(o):
        for k in range(flat.shape[2]):
            for start in range(0, i_g, m):
                counts.append(int(flat[row, start:start + m, k].sum()))
    return counts


shapes = st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(4, 19), st.sampled_from([1, 3]))


@settings(max_examples=25, deadline=None)
@given(shapes, st.sampled_from([(2, 4), (1, 4), (1, 8), (3, 8)]), st.integers(0, 2**16))
def test_nm_keeps_exactly_n_of_every_m_input_channels(shape, nm, seed):
    groups, o_g, i_g, k = shape
    n, m = nm
    w = torch.randn(groups * o_g, i_g, k, k, generator=torch.Generator().manual_seed(seed))
    mask = prune_mask(NM(n, m), w, groups)
    assert mask.shape == w.shape
    for c in _runs_along_in(mask, groups, m):
        assert c <= n
    # full runs keep exactly n; a ragged last run of r keeps min(n, r)
    o, i = w.shape[:2]
    flat = mask.reshape(o, i, -1)
    for start in range(0, i, m):
        r = min(m, i - start)
        assert torch.all(flat[:, start:start + m].sum(1) == min(n, r))
    # and they are the largest |w| of their run
    mag = w.abs().reshape(o, i, -1)
    for start in range(0, i, m):
        run, keep = mag[:, start:start + m], flat[:, start:start + m]
        kept_min = torch.where(keep, run, torch.inf).amin(1)
        dropped_max = torch.where(keep, -torch.inf, run).amax(1)
        assert torch.all(kept_min >= dropped_max)


def test_nm_along_output_channels():
    w = torch.randn(12, 5)
    mask = prune_mask(NM(1, 4, "out"), w)
    for start in range(0, 12, 4):
        assert torch.all(mask[start:start + 4].sum(0) == 1)


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 4), st.integers(1, 4), st.sampled_from([1, 3]), st.integers(0, 2**16))
def test_hss_8x8_half_then_2_4(rows8, cols8, k, seed):
    w = torch.randn(8 * rows8, 8 * cols8, k, k, generator=torch.Generator().manual_seed(seed))
    p = parse_pattern("8x8@0.5/2:4")
    mask = prune_mask(p, w)
    # level 1: every 8x8 block holds zeros only where 2:4 put them, or is zero whole
    blocks = mask.reshape(rows8, 8, cols8, 8, k * k).permute(0, 2, 1, 3, 4).reshape(rows8, cols8, -1)
    kept_blocks = blocks.any(-1)
    # balanced rows: each block row keeps round(0.5 * cols) blocks (at least one)
    want = max(1, cols8 - round(0.5 * cols8))  # zeros round half to even, as torch.ao
    assert torch.all(kept_blocks.sum(1) == want)
    # level 2: inside kept blocks exactly 2 of every 4 input channels; nothing outside
    for c in _runs_along_in(mask, 1, 4):
        assert c in (0, 2)
    assert int(mask.sum()) == want * rows8 * 8 * 8 * k * k // 2
    assert p.check(mask, tuple(w.shape)) == []


def test_three_level_hierarchy_holds_each_rule():
    w = torch.randn(32, 32)
    p = parse_pattern("16x16@0.5/8x8@0.5/2:4")
    mask = prune_mask(p, w)
    assert p.check(mask, (32, 32)) == []
    assert math.isclose(1 - mask.float().mean().item(), 0.875)
    sub = mask.reshape(4, 8, 4, 8).permute(0, 2, 1, 3).any(-1).any(-1)  # 8x8 grid alive
    for r in range(2):
        for c in range(2):
            assert int(sub[2 * r:2 * r + 2, 2 * c:2 * c + 2].sum()) in (0, 2)  # half of the 4 children


def test_grid_patterns_zero_whole_units():
    w = torch.randn(16, 12, 3, 3)
    ch = prune_mask(Channel(0.5), w).expand(w.shape)
    assert torch.all(ch.all((0, 2, 3)) | ~ch.any((0, 2, 3)))
    assert int((~ch.any((0, 2, 3))).sum()) == 6
    fi = prune_mask(Filter(0.25), w).expand(w.shape)
    assert int((~fi.any((1, 2, 3))).sum()) == 4
    un = prune_mask(Unstructured(0.75), w).expand(w.shape)
    assert int((~un).sum()) == round(0.75 * w.numel())
    # unstructured keeps the largest magnitudes, whatever their place
    assert w.abs()[un].min() >= w.abs()[~un].max()


def test_check_catches_violations():
    w = torch.randn(8, 8)
    bad = torch.ones(8, 8, dtype=torch.bool)
    assert NM(2, 4).check(bad, (8, 8))  # keeps 4 of 4
    partly = torch.ones(8, 8, dtype=torch.bool)
    partly[0, 0] = False
    assert Block(8, 8, 0.5).check(partly, (8, 8))  # a block partly zero
    hss = parse_pattern("8x8@0.5/2:4")
    assert hss.check(prune_mask(NM(2, 4), w), (8, 8)) == []  # 2:4 inside a kept block is fine
    assert hss.check(bad, (8, 8))


def test_grammar_round_trips_and_fills_free_levels():
    for spec in ["8x8", "4x16@0.75", "2:4", "1:8:out", "channel@0.5", "filter", "unstructured@0.9",
                 "8x8@0.5/2:4", "16x16@0.5/8x8@0.5/2:4"]:
        p = parse_pattern(spec)
        assert parse_pattern(p.spec()) == p
        assert pattern_from_dict(p.to_dict()) == p
    free = parse_pattern("8x8/2:4").with_sparsity(0.875)
    assert free == Hierarchical((Block(8, 8, 0.75), NM(2, 4)))
    assert parse_pattern("8x8").with_sparsity(0.5) == Block(8, 8, 0.5)


@pytest.mark.parametrize("bad, words", [
    ("3:2", "0 < N < M"), ("8x8/8x8@0.5", "smaller"), ("2:4/8x8", "blocks go inside blocks"),
    ("2:4/1:4", "one N:M"), ("zigzag", "cannot read"), ("8x8@1.5", "[0, 1)"),
])
def test_grammar_refuses_bad_specs_clearly(bad, words):
    with pytest.raises(ConfigError, match=None) as e:
        parse_pattern(bad)
    assert words in str(e.value)


def test_fixed_pattern_refuses_another_sparsity():
    with pytest.raises(ConfigError, match="0.5 sparse by construction"):
        NM(2, 4).with_sparsity(0.75)
    with pytest.raises(ConfigError, match="at most one level"):
        parse_pattern("8x8/4x4/2:4").with_sparsity(0.9)


def test_metadata_bits_by_hand():
    shape = (16, 16)
    assert NM(2, 4).metadata_bits(shape) == 16 * 4 * 2 * 2  # 4 runs per row, 2 indices of 2 bits
    assert Block(8, 8, 0.5).metadata_bits(shape) == 4  # a bitmap of 4 blocks
    # HSS: the block bitmap plus the 256 bits of 2:4 indices over the kept half
    assert parse_pattern("8x8@0.5/2:4").metadata_bits(shape) == 4 + 256 // 2


@pytest.mark.parametrize("name", ["resnet50", "vgg16", "inception_v3"])
def test_zoo_models_reach_exact_density_in_every_eligible_layer(name):
    """Through the Sparsifier, as a user sparsifies: every Conv2d / Linear the pattern fits, first conv
    included; densities read off the weights' zeros (random init: no weight is zero by chance).
    VGG16's 25088 x 4096 layer (103 M of its 138 M weights) made 512 x 4096: the same rules on a
    layer of the same divisibility, where the full one cost most of the suite's longest test."""
    tv = pytest.importorskip("torchvision")
    from tilesparse.sparsify import Recipe, Sparsifier

    for spec, sparsity in [("2:4", 0.5), ("8x8@0.5/2:4", 0.75)]:
        torch.manual_seed(0)
        model = getattr(tv.models, name)(weights=None, **({"aux_logits": False, "init_weights": False}
                                                         if name == "inception_v3" else {}))
        if name == "vgg16":  # its first classifier layer reads 512 features, not 25088 (as tests/pattern_cell.py)
            model.avgpool, model.classifier[0] = nn.AdaptiveAvgPool2d((1, 1)), nn.Linear(512, 4096)
        recipe = Recipe(pattern=spec, layer_types=("conv", "linear"), include_first_conv=True)
        sp = Sparsifier(recipe).prepare(model)
        sp.step()
        p = parse_pattern(spec)
        for lname, layer in sp.layers.items():
            shape, groups = layer.shape, layer.groups
            mask = layer.module.weight.detach() != 0
            achieved = 1 - mask.float().mean().item()
            if shape[1] % 8 == 0 and (shape[0] // groups) % 8 == 0 and (shape[1] // 8) % 2 == 0:
                assert achieved == pytest.approx(sparsity, abs=1e-9), f"{name}.{lname} {spec}"
            else:  # ragged edges: at least the N:M level, never denser than the last level allows
                assert achieved >= 0.5 - 1e-9, f"{name}.{lname} {spec}"
            assert p.check(mask, shape, groups) == [], f"{name}.{lname} {spec}"
        skipped = {n: why for n, why in sp.skipped.items() if "layer_types" not in why}
        assert all("channels" in why for why in skipped.values()), skipped  # only what the pattern cannot fit
        assert len(sp.layers) > 10
        sp.squash_mask()


def test_every_exported_name_exists():
    import tilesparse.patterns as patterns

    assert [n for n in patterns.__all__ if not hasattr(patterns, n)] == []
