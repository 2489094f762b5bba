"""Report: per-layer rows and the compressed-bytes formula, hand-computed."""

import json

import torch
from torch import nn

from tilesparse.sparsify import BlockSparsifier, Recipe, build_report


def test_bytes_hand_computed():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.Conv2d(16, 20, 3))  # second: 20x16x3x3, grid 3x2
    sp = BlockSparsifier(Recipe(sparsity=0.5)).prepare(model)
    sp.step()
    rep = build_report(model, sp, bytes_per_weight=1)
    first, second = rep.layers
    assert first.blocks_total == 0 and first.compressed_bytes == first.dense_bytes == 16 * 3 * 9
    assert second.grid == (3, 2) and second.blocks_kept == 3  # balanced rows: 1 of 2 per row
    assert second.dense_bytes == 20 * 16 * 9
    # 3 kept whole 8x8x3x3 blocks (the ragged row is padded) + ceil(6 / 8) = 1 bitmap byte
    assert second.compressed_bytes == 3 * 8 * 8 * 9 + 1
    assert rep.dense_bytes == 432 + 2880 and rep.compressed_bytes == 432 + 1729
    assert rep.block_sparsity == 0.5
    fp32 = build_report(model, sp, bytes_per_weight=4)
    assert fp32.layers[1].compressed_bytes == 3 * 8 * 8 * 9 * 4 + 1


def test_text_and_json():
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.Conv2d(16, 16, 3))
    sp = BlockSparsifier(Recipe(sparsity=0.5)).prepare(model)
    sp.step()
    rep = build_report(model, sp)
    data = json.loads(rep.to_json())
    assert data["layers"][1]["blocks_kept"] == 2 and data["layers"][0]["note"].startswith("first convolution")
    text = rep.to_text()
    assert "2/4" in text and "50.0%" in text and "first convolution" in text
