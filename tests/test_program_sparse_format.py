"""The sparse multiply's masked weight format (program.sparse_format) against hand-made bytes."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tilesparse.hw import ArrayConfig, SparseMatmulConfig, load_array
from tilesparse.program.geometry import LayerGeometry
from tilesparse.program.sparse_format import decode_masked, encode_masked, group_excess, masked_nbytes

SM = SparseMatmulConfig()  # AIE-ML: 256-bit chunks, 32-bit mask, 2 of every 4 bytes


def _nm_bytes(rng: np.random.Generator, n_groups: int, keep: int) -> bytes:
    """Groups of 4 bytes with at most ``keep`` non-zero ones at random places (non-zero values)."""
    out = np.zeros((n_groups, 4), np.int8)
    for g in range(n_groups):
        k = int(rng.integers(0, keep + 1))
        pos = rng.choice(4, size=k, replace=False)
        out[g, pos] = rng.choice([v for v in range(-128, 128) if v], size=k)
    return out.tobytes()


def test_a_2_4_chunk_packs_to_20_of_32_bytes_by_hand():
    # 8 groups [0, 5, 0, 7]: bits 1 and 3 of every nibble -> mask bytes 0b10101010 = 0xaa
    data = bytes([0, 5, 0, 7] * 8)
    out = encode_masked(data, SM)
    assert len(out) == 20 and out[:4] == bytes([0xAA] * 4) and out[4:] == bytes([5, 7] * 8)
    assert decode_masked(out, 32, SM) == data


def test_fewer_non_zeros_keep_their_first_zeros_exactly_50_percent():
    # 1:4: [9, 0, 0, 0] keeps byte 0 (non-zero) and byte 1 (the first zero): bits 0, 1 -> 0b0011
    data = bytes([9, 0, 0, 0, 0, 0, 0, 0] * 4)  # second group all zero: its bytes 0 and 1
    out = encode_masked(data, SM)
    assert len(out) == 20 and out[:4] == bytes([0x33] * 4)
    assert out[4:] == bytes([9, 0, 0, 0] * 4)
    assert decode_masked(out, 32, SM) == data


def test_a_ragged_stream_fills_its_last_chunk_with_zeros():
    data = bytes([1, 0, 2, 0] * 9)  # 36 bytes: one whole chunk + 4 bytes
    out = encode_masked(data, SM)
    assert len(out) == 40 == masked_nbytes(36, SM)
    assert decode_masked(out, 36, SM) == data


def test_more_than_two_non_zeros_in_a_group_is_refused():
    with pytest.raises(ValueError, match="1 groups of 4 consecutive weight bytes keep more than 2"):
        encode_masked(bytes([1, 2, 3, 0] + [0] * 28), SM)
    assert group_excess(np.array([1, 2, 3, 0, 1, 1, 0, 0], np.int8), SM) == 1


def test_a_mask_selecting_the_wrong_number_of_bytes_does_not_decode():
    bad = bytearray(encode_masked(bytes(32), SM))
    bad[0] ^= 0x04  # one more bit set in chunk 0
    with pytest.raises(ValueError, match="chunk 0 selects 17 bytes, expected 16"):
        decode_masked(bytes(bad), 32, SM)
    with pytest.raises(ValueError, match="need 20 B"):
        decode_masked(bytes(19), 32, SM)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 40), st.sampled_from([1, 2]), st.integers(0, 2**31 - 1))
def test_round_trip_and_exact_sizes(n_groups, keep, seed):
    data = _nm_bytes(np.random.default_rng(seed), n_groups, keep)
    out = encode_masked(data, SM)
    assert len(out) == 20 * -(-len(data) // 32) == masked_nbytes(len(data), SM)
    assert decode_masked(out, len(data), SM) == data


def test_aie_ml_v2_chunks_are_512_bits_with_a_64_bit_mask():
    v2 = SparseMatmulConfig(chunk_bytes=64, mask_bytes=8)
    data = bytes([0, 3, 4, 0] * 16)
    out = encode_masked(data, v2)
    assert len(out) == 8 + 32 and decode_masked(out, 64, v2) == data


def test_the_description_refuses_an_inconsistent_format_and_turns_off():
    with pytest.raises(ValueError, match="mask_bytes 4 must hold one bit per byte of a 64-byte chunk"):
        SparseMatmulConfig(chunk_bytes=64)
    with pytest.raises(ValueError, match="max_nonzero_per_group 4 must be below group_bytes 4"):
        SparseMatmulConfig(max_nonzero_per_group=4)
    with pytest.raises(ValueError, match="must keep matmul_shape's M and N"):
        ArrayConfig.model_validate({"core": {"sparse_matmul": {"shape": [8, 16, 8]}}})
    off = ArrayConfig.model_validate({"core": {"sparse_matmul": {"enabled": False, "shape": [8, 16, 8]}}})
    assert not off.core.sparse_matmul.enabled
    hw = load_array("4x4")  # the shipped description: AIE-ML's figures
    assert hw.core.sparse_matmul.shape == (4, 16, 8) and hw.core.sparse_matmul.packed_chunk_bytes == 20
    assert hw.macs_per_cycle("int8xint4") == 2 * hw.macs_per_cycle("int8")
    assert hw.dma_compression.enabled and not ArrayConfig().dma_compression.enabled  # off without the block


def test_older_geometry_records_read_as_the_block_format():
    old = {"kind": "conv", "ci": 8, "hi": 4, "wi": 4, "co": 8, "ho": 4, "wo": 4}  # no weight_format key
    assert LayerGeometry(**old).weight_format == "block"
    with pytest.raises(ValueError, match="weight_format 'masked'"):
        LayerGeometry(**{**old, "kind": "add", "weight_format": "masked"})
