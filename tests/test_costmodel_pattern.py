"""Cost-model terms of the sparsity patterns: density models, formats and compute rates against
hand-computed values and against the compiler's own masked-format encoder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tilesparse.cli.main import app
from tilesparse.costmodel import NM, Blocks, Problem, evaluate, load_arch, validate_mapping
from tilesparse.costmodel.density import Hierarchical
from tilesparse.costmodel.formats import BlockBitmap, BlockMasked, Masked, make_format
from tilesparse.costmodel.pattern import pattern_terms, weight_bytes
from tilesparse.errors import ConfigError
from tilesparse.hw import SparseMatmulConfig
from tilesparse.mapper import search
from tilesparse.mapper.pattern_cost import energy
from tilesparse.patterns import parse_pattern, prune_mask
from tilesparse.program.sparse_format import encode_masked, masked_nbytes

# K = C = 64, 3x3: 64 * 64 * 9 = 36,864 int8 weights; 64 blocks of 8x8 (each 8 * 8 * 9 = 576 B).
LAYER = Problem.conv(k=64, c=64, p=8, q=8, r=3, s=3)
N_WEIGHTS = 64 * 64 * 9


def test_masked_format_hand_computed():
    # 36,864 B = 1,152 chunks of 32 B; each stores 16 payload bytes + a 4 B mask (32 bits).
    data, meta = Masked().expected(64, 64, NM(2, 4), 9)
    assert (data, meta) == (1152 * 16, 1152 * 32)
    assert weight_bytes(LAYER, "2:4") == 1152 * 20 == 23040
    # A ragged stream: 33 bytes still take two whole chunks.
    assert Masked().exact(np.ones((1, 33), bool)) == (32, 64)


def test_masked_format_reads_the_hw_description():
    v2 = SparseMatmulConfig(chunk_bytes=64, mask_bytes=8)  # AIE-ML v2: 512-bit chunks, 64-bit masks
    data, meta = Masked(v2).exact(np.ones((1, 100), bool))
    assert data + meta / 8 == masked_nbytes(100, v2) == 2 * (8 + 32)


def _stream_order(w: torch.Tensor) -> bytes:
    """The compiler's kept-block stream of one dense-block layer: [o][ky][kx][i], int8."""
    return w.permute(0, 2, 3, 1).contiguous().numpy().astype(np.int8).tobytes()


@pytest.mark.parametrize("spec", ["2:4", "1:4"])
def test_nm_weight_bytes_equal_the_compilers_encoder(spec):
    g = torch.Generator().manual_seed(0)
    w = torch.randint(1, 127, (64, 64, 3, 3), generator=g).to(torch.float32)
    w = w * prune_mask(parse_pattern(spec), w)
    packed = encode_masked(_stream_order(w), SparseMatmulConfig())
    assert len(packed) == weight_bytes(LAYER, spec) == masked_nbytes(N_WEIGHTS, SparseMatmulConfig())


def test_block_bitmap_hand_computed_and_exact():
    dm = Blocks(0.5, 8, 8, (64, 64))
    data, meta = BlockBitmap().expected(64, 64, dm, 9)
    assert (data, meta) == (32 * 576, 64)  # 32 kept blocks of 576 B, one bit per block position
    assert weight_bytes(LAYER, "8x8@0.5") == 32 * 576 + 8
    assert weight_bytes(LAYER, "8x8", sparsity=0.5) == 32 * 576 + 8
    mask = np.zeros((64, 64), bool)
    mask[:8, :] = True  # 8 of 64 blocks kept
    assert BlockBitmap().exact(mask) == (8 * 64, 64)


def test_hss_density_is_the_product_and_format_is_bitmap_plus_masked():
    dm = Hierarchical((Blocks(0.5, 8, 8, (64, 64)), NM(2, 4)))
    assert dm.density == 0.25
    # A whole 8x8 block is empty only when the block level drops it (2:4 keeps 2 of every 4).
    assert dm.prob_empty(np.array([8]), np.array([8]))[0] == pytest.approx(Blocks(0.5, 8, 8, (64, 64))
                                                                           .prob_empty(8, 8))
    # 32 kept blocks = 18,432 B -> 576 masked chunks of 20 B, plus the 64-bit bitmap.
    data, meta = BlockMasked().expected(64, 64, dm, 9)
    assert data + meta / 8 == 576 * 20 + 8
    assert weight_bytes(LAYER, "8x8@0.5/2:4") == 576 * 20 + 8


def test_tasd_and_sdq_terms_add():
    assert weight_bytes(LAYER, "2:4+1:4") == 2 * 23040
    terms = pattern_terms(LAYER, "int8-2:4+int4")
    assert [t.problem.bits[0] for t in terms] == [8, 4]
    assert terms[1].weight_bytes() == N_WEIGHTS / 2  # dense int4: half a byte per weight
    assert weight_bytes(LAYER, "int8-2:4+int4") == 23040 + N_WEIGHTS / 2


def test_compute_rates_from_the_hw_description():
    arch = load_arch("aie2")
    base = search(LAYER, arch, mapper="random", budget=200, objective="latency", seed=0).mapping
    dense = evaluate(LAYER, arch, base)
    over = dense.compute_cycles - LAYER.macs / (16 * 256)  # kernel-call overhead, same for all
    for spec, mac_frac, rate in (("2:4", 0.5, 1), ("1:4", 0.5, 1), ("3:4", 1.0, 1), ("int4", 1.0, 2)):
        (t,) = pattern_terms(LAYER, spec)
        b = evaluate(t.problem, arch, base, t.spec)
        assert b.effective_macs == LAYER.macs * mac_frac, spec  # the multiply works on half the weights
        assert b.compute_cycles - over == pytest.approx(LAYER.macs * mac_frac / (16 * 256 * rate)), spec
        if spec == "2:4":  # activations read dense at the MACs, one partial-sum update per performed MAC
            core, dcore = b.accesses["core"], dense.accesses["core"]
            assert core["I"]["reads"] == dcore["I"]["reads"]
            assert core["O"]["updates"] == pytest.approx(dcore["O"]["updates"] / 2)


def test_map_picks_a_valid_mapping_for_a_24_conv():
    arch = load_arch("aie2")
    (t,) = pattern_terms(LAYER, "2:4")
    res = search(t.problem, arch, mapper="genetic", budget=300, objective="edp", sparse=t.spec, seed=1)
    validate_mapping(t.problem, arch, res.mapping)
    b = res.breakdown
    assert b.effective_macs == LAYER.macs / 2
    # DDR holds the packed weights: it reads at least their 23,040 B once.
    assert b.accesses["ddr"]["W"]["reads"] >= 0 and b.traffic_bytes["ddr"]["read"] >= 23040


def test_energy_sums_the_terms():
    one = energy(LAYER, "2:4", "aie2:4x4", budget=150)
    two = energy(LAYER, "2:4+2:4", "aie2:4x4", budget=150)
    assert two.terms == ("2:4", "2:4") and two.weight_bytes == 2 * one.weight_bytes
    assert two.effective_macs == 2 * one.effective_macs and two.energy_pj > one.energy_pj > 0


def test_patterns_the_model_cannot_price_are_named():
    with pytest.raises(ConfigError, match="8x8"):
        pattern_terms(LAYER, "8x8")  # no sparsity
    with pytest.raises(ConfigError, match="int4-2:4"):
        pattern_terms(LAYER, "int4-2:4")
    with pytest.raises(ConfigError, match="channel"):
        pattern_terms(LAYER, "channel@0.5")
    assert make_format("masked").name == "masked"


runner = CliRunner()


def test_map_cli_pattern_for_a_layer(tmp_path):
    out = tmp_path / "r.json"
    res = runner.invoke(app, ["map", "--layer", "conv:k=32,c=32,p=8,q=8,r=3,s=3", "--pattern", "int8-2:4+int4",
                              "--budget", "150", "--no-progress", "--json", str(out)])
    assert res.exit_code == 0, res.output
    names = [r["layer"] for r in json.loads(out.read_text())["layers"]]
    assert names == ["layer/int8-2:4", "layer/int4"]
    bad = runner.invoke(app, ["map", "-l", "conv:k=8,c=8,p=4,q=4", "--pattern", "2:4", "--density", "0.5"])
    assert bad.exit_code != 0 and isinstance(bad.exception, ConfigError)


def test_source_layers_that_do_not_fit_the_pattern_stay_dense():
    from tilesparse.cli.map_cmd import _pattern_problems

    first = Problem.conv(k=16, c=3, p=8, q=8, r=3, s=3, name="conv1")
    problems, specs = _pattern_problems([first, LAYER], "2:4+1:4", None, None)
    assert [p.name for p in problems] == ["conv1", "conv/2:4", "conv/1:4"]
    assert specs[0] is None and all(s is not None for s in specs[1:])
