"""Density models against Monte-Carlo sampling of real masks; formats against direct counting."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sps
from hypothesis import given, settings
from hypothesis import strategies as st

from tilesparse.costmodel import NM, Actual, Blocks, Uniform, make_format
from tilesparse.errors import ConfigError

MC_SAMPLES = 4000


def _random_mask(rng, rows, cols, nnz):
    flat = np.zeros(rows * cols, dtype=bool)
    flat[rng.choice(rows * cols, nnz, replace=False)] = True
    return flat.reshape(rows, cols)


def _mc_empty(masks, r, c):
    """Fraction of aligned r x c tiles that are empty, over many masks."""
    hits = []
    for m in masks:
        g = m.reshape(m.shape[0] // r, r, m.shape[1] // c, c).any(axis=(1, 3))
        hits.append(1 - g.mean())
    return float(np.mean(hits))


@pytest.mark.parametrize("r,c", [(1, 2), (2, 2), (1, 8), (4, 4)])
def test_uniform_hypergeometric_matches_monte_carlo(r, c):
    rng = np.random.default_rng(0)
    rows, cols, d = 16, 16, 0.2
    nnz = round(rows * cols * d)
    masks = [_random_mask(rng, rows, cols, nnz) for _ in range(MC_SAMPLES // 10)]
    model = Uniform(d, total=rows * cols).prob_empty(r, c)
    assert float(model) == pytest.approx(_mc_empty(masks, r, c), abs=0.02)


@pytest.mark.parametrize("r,c", [(1, 1), (1, 2), (2, 3), (4, 4)])
def test_nm_matches_real_nm_masks(r, c):
    rng = np.random.default_rng(1)
    n, m, rows, cols = 2, 4, 8, 48
    masks = []
    for _ in range(200):
        keep = np.argsort(rng.random((rows, cols // m, m)), axis=2)[..., :n]
        mk = np.zeros((rows, cols // m, m), dtype=bool)
        np.put_along_axis(mk, keep, True, axis=2)
        masks.append(mk.reshape(rows, cols))
    cc = c if cols % c == 0 else 4
    assert float(NM(n, m).prob_empty(r, cc)) == pytest.approx(_mc_empty(masks, r, cc), abs=0.02)


@pytest.mark.parametrize("r,c", [(8, 8), (16, 8), (16, 16)])
def test_blocks_match_random_block_masks(r, c):
    rng = np.random.default_rng(2)
    rows, cols, bo, bi, d = 32, 32, 8, 8, 0.5
    nb = (rows // bo) * (cols // bi)
    masks = [np.kron(_random_mask(rng, rows // bo, cols // bi, round(nb * d)),
                     np.ones((bo, bi), dtype=bool)) for _ in range(2000)]
    model = Blocks(d, bo, bi, (rows, cols)).prob_empty(r, c)
    assert float(model) == pytest.approx(_mc_empty(masks, r, c), abs=0.02)


def test_actual_mask_tile_occupancy_by_brute_force():
    rng = np.random.default_rng(3)
    mask = rng.random((12, 20)) < 0.1
    a = Actual(mask)
    for r, c in [(1, 1), (3, 4), (4, 5), (12, 20)]:
        tiles = [mask[i:i + r, j:j + c].any() for i in range(0, 12, r) for j in range(0, 20, c)]
        assert float(a.prob_empty(r, c)) == pytest.approx(1 - np.mean(tiles))
    assert a.density == pytest.approx(mask.mean())


def test_density_outside_unit_interval_is_rejected():
    for bad in (-0.1, 1.5):
        with pytest.raises(ConfigError, match=r"\[0, 1\]"):
            Uniform(bad)
        with pytest.raises(ConfigError, match=r"\[0, 1\]"):
            Blocks(bad, 8, 8, (16, 16))


# --- formats: exact metadata vs direct counting -------------------------------------------------
def _bits(n):
    return int(np.ceil(np.log2(max(n, 1))))


masks = st.builds(lambda seed, r, c, d: np.random.default_rng(seed).random((r, c)) < d,
                  st.integers(0, 10_000), st.integers(1, 24), st.integers(1, 40), st.floats(0.0, 1.0))


@settings(max_examples=60, deadline=None)
@given(masks)
def test_csr_and_coordinate_match_scipy_arrays(mask):
    csr = sps.csr_matrix(mask.astype(np.int8))
    nnz, cols = csr.nnz, mask.shape[1]
    assert make_format("coordinate").exact(mask) == (nnz, len(csr.indices) * _bits(cols))
    meta = len(csr.indptr) * _bits(nnz + 1) + len(csr.indices) * _bits(cols)
    assert make_format("offset_pairs").exact(mask) == (nnz, meta)
    assert make_format("bitmask").exact(mask) == (nnz, mask.size)


@settings(max_examples=60, deadline=None)
@given(masks, st.integers(1, 4))
def test_run_length_matches_a_scalar_encoder(mask, run_bits):
    # a plain encoder: walk each row; an escape entry (2**r - 1 zeros, explicit zero) is due each
    # time the zero run reaches 2**r, emitted when a non-zero follows (trailing zeros are implied)
    entries = 0
    for row in mask:
        run = pending = 0
        for v in row:
            if v:
                entries += 1 + pending
                run = pending = 0
            else:
                run += 1
                if run == 2**run_bits:
                    pending += 1
                    run = 0
    assert make_format("run_length", run_bits=run_bits).exact(mask) == (entries, entries * run_bits)


@settings(max_examples=60, deadline=None)
@given(masks, st.sampled_from([(1, 1), (2, 4), (4, 8), (8, 8)]))
def test_block_index_matches_scipy_bsr(mask, block):
    bo, bi = block
    rows = -(-mask.shape[0] // bo) * bo
    cols = -(-mask.shape[1] // bi) * bi
    pad = np.zeros((rows, cols), dtype=np.int8)
    pad[: mask.shape[0], : mask.shape[1]] = mask
    bsr = sps.bsr_matrix(pad, blocksize=(bo, bi))
    nb = len(bsr.indices)  # built from a dense array, BSR stores only blocks with a non-zero
    meta = len(bsr.indptr) * _bits(nb + 1) + nb * _bits(cols // bi)
    assert make_format("block_index", bo=bo, bi=bi).exact(mask) == (nb * bo * bi, meta)


@pytest.mark.parametrize("name", ["bitmask", "coordinate", "offset_pairs", "run_length", "block_index"])
def test_expected_metadata_close_to_real_uniform_masks(name):
    rng = np.random.default_rng(5)
    rows, cols, d = 64, 64, 0.3
    fmt = make_format(name, **({"bo": 4, "bi": 4} if name == "block_index" else {}))
    real = np.mean([fmt.exact(_random_mask(rng, rows, cols, round(rows * cols * d)))
                    for _ in range(50)], axis=0)
    data, meta = fmt.expected(rows, cols, Uniform(d, total=rows * cols))
    assert float(data) == pytest.approx(real[0], rel=0.03)
    assert float(meta) == pytest.approx(real[1], rel=0.03)


def test_unknown_format_is_rejected():
    with pytest.raises(ConfigError, match="unknown format"):
        make_format("csr5")


def test_actual_mask_from_a_magnitude_sparsified_layer():
    import torch

    from tilesparse.patterns.block import BlockGeometry, parse_block_shape
    from tilesparse.patterns.scores import l1_scores
    from tilesparse.patterns.selection import select_layer

    torch.manual_seed(0)
    w = torch.nn.Conv2d(64, 128, 3).weight.detach()
    geom = BlockGeometry.of_weight(w.shape, parse_block_shape((8, 8)))
    keep = select_layer(l1_scores(w, geom), 0.75)
    a = Actual.from_block_mask(keep.numpy(), tuple(w.shape), (8, 8))
    assert a.mask.shape == (128, 64)
    assert a.density == pytest.approx(float(keep.float().mean()))
    # an aligned 8x8 tile is one block: empty exactly when the block was pruned
    assert float(a.prob_empty(8, 8)) == pytest.approx(1 - float(keep.float().mean()))
    # a 16x16 tile: count 2x2 groups of blocks that are all pruned
    k = keep.numpy().reshape(8, 2, 4, 2).any(axis=(1, 3))
    assert float(a.prob_empty(16, 16)) == pytest.approx(1 - k.mean())
