"""N:M convs in the sparse multiply's masked format: packed bytes and COMP cycles by hand, and
networks pruned to 2:4, 1:4 and 8x8@0.5/2:4 simulated bit-exact against the integer reference
(and within tolerance of PyTorch in float) with the estimate at or above its lower bound."""

import json

import numpy as np
import pytest
import torch
from frontend_nets import TinyInception, TinyResNet, randomize_bn
from sim_helpers import check_bit_exact

from tilesparse.build import build_graph_from
from tilesparse.compiler.partition import SubVolume
from tilesparse.compiler.pipeline import compile_graph
from tilesparse.estimate.bounds import program_bounds
from tilesparse.estimate.timemodel import estimate_program
from tilesparse.hw import ArrayConfig, load_array
from tilesparse.models import get_model
from tilesparse.program import Program


def _one_conv(weight: np.ndarray):
    """x (1, 16, 4, 4) -> 1x1 conv 16 -> 16 with the given weight, quantized by the front door."""
    conv = torch.nn.Conv2d(weight.shape[1], weight.shape[0], 1)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(weight))
    return build_graph_from(torch.nn.Sequential(conv), input_shape=(1, weight.shape[1], 4, 4)).graph


def _two_of_four(co: int, ci: int, seed: int = 0) -> np.ndarray:
    w = np.random.default_rng(seed).uniform(0.1, 1.0, size=(co, ci, 1, 1)).astype(np.float32)
    w[:, 1::4] = 0  # input channels 1 and 3 of every run of 4 are zero: 2:4 along K
    w[:, 3::4] = 0
    return w


def _without_sparse_multiply(shape: str):
    """The shipped description with ``core.sparse_matmul.enabled: false`` (as a YAML would say)."""
    raw = load_array(shape).model_dump()
    raw["core"]["sparse_matmul"]["enabled"] = False
    return ArrayConfig.model_validate(raw)


def _one_tile(node, hw):
    return SubVolume(16, 16, 4, 4)


def test_one_layer_packs_and_computes_as_counted_by_hand():
    g = _one_conv(_two_of_four(16, 16))
    prog = compile_graph(g, "1x1", chooser=_one_tile)
    (rec,) = prog.layers
    assert rec.geometry.weight_format == "masked"
    # bitmap: 2x2 blocks = 4 bits -> 1 B, padded to a 32-bit word: 4 B; kept blocks 16 x 16 = 256 B
    # = 8 chunks of 32 B -> 8 x (4 B mask + 16 B) = 160 B; bias 16 x 4 = 64 B (block format: 1 + 256 + 64)
    assert (rec.packed_weight_bytes, rec.bias_bytes) == (4 + 160, 64)
    (comp,) = [i for i in prog.instrs if i.op == "COMP"]
    # ceil(16 positions / M=4) x 2 slabs of N=8 x ceil(16 channels x 1 tap / K=16) + 64 per call = 72
    # (the dense 4x8x8: 4 x 2 x 2 + 64 = 80)
    assert comp.iters == 1 and prog.per_iter[comp.offset] == 4 * 2 * 1 + 64
    check_bit_exact(g, prog)
    dense = compile_graph(g, _without_sparse_multiply("1x1"), chooser=_one_tile)
    (drec,) = dense.layers
    assert drec.geometry.weight_format == "block" and drec.packed_weight_bytes == 1 + 256
    (dcomp,) = [i for i in dense.instrs if i.op == "COMP"]
    assert dense.per_iter[dcomp.offset] == 4 * 2 * 2 + 64
    check_bit_exact(g, dense)


def test_weights_breaking_the_rule_stay_in_the_block_format_with_a_note():
    w = _two_of_four(16, 16)
    w[0, 1, 0, 0] = 0.5  # output 0 keeps 3 of input channels 0..3
    prog = compile_graph(_one_conv(w), "1x1")
    assert prog.layers[0].geometry.weight_format == "block"
    assert prog.meta["weight_formats"]["counts"] == {"block": 1, "masked": 0}


def _net(cls):
    torch.manual_seed(0)
    return randomize_bn(cls()).eval()


@pytest.mark.parametrize("cls,shape", [(TinyResNet, (1, 3, 32, 32)), (TinyInception, (1, 3, 16, 16))])
@pytest.mark.parametrize("pattern", ["2:4", "1:4"])
@pytest.mark.parametrize("array", ["4x4", "4x2"])
def test_nm_nets_simulate_bit_exact_at_or_above_their_bound(cls, shape, pattern, array):
    built = build_graph_from(_net(cls), input_shape=shape, pattern=pattern)
    prog = compile_graph(built.graph, array)
    convs = [r for r in prog.layers if r.kind == "conv"]
    assert convs[0].geometry.weight_format == "block"  # the stem (3 input channels) stays dense
    assert all(r.geometry.weight_format == "masked" for r in convs[1:])
    assert list(prog.meta["weight_formats"]["notes"]) == [convs[0].name]
    check_bit_exact(built.graph, prog, module=built.module)
    pt = estimate_program(prog)
    bounds = program_bounds(prog)
    for (name, _, secs), b in zip(pt.layers, bounds, strict=True):
        assert secs >= b.floor_s * (1 - 1e-9) and b.floor_s >= b.bound_s * (1 - 1e-12), name


def test_a_hierarchy_keeps_its_block_bitmap_and_masks_inside_kept_blocks():
    built = build_graph_from(_net(TinyResNet), input_shape=(1, 3, 32, 32), pattern="8x8@0.5/2:4")
    prog = compile_graph(built.graph, "4x4")
    masked = [r for r in prog.layers if r.geometry.weight_format == "masked"]
    assert masked and any(r.packed_weight_bytes < 0.4 * r.dense_weight_bytes for r in masked)  # ~ 0.5 x 20/32
    check_bit_exact(built.graph, prog, module=built.module)


def test_2_4_is_faster_than_dense_and_packs_to_about_20_of_32_bytes():
    dense = compile_graph(build_graph_from(_net(TinyResNet), input_shape=(1, 3, 32, 32)).graph, "4x4")
    nm = compile_graph(build_graph_from(_net(TinyResNet), input_shape=(1, 3, 32, 32), pattern="2:4").graph, "4x4")
    assert estimate_program(nm).total_s < estimate_program(dense).total_s
    for r in nm.layers:
        if r.geometry.weight_format == "masked":  # bitmap padding aside, 20 of every 32 kept-block bytes
            assert r.packed_weight_bytes <= 20 / 32 * r.dense_weight_bytes + 4 * len(r.chunks)


def test_an_array_without_the_sparse_multiply_compiles_as_before():
    built = build_graph_from(_net(TinyResNet), input_shape=(1, 3, 32, 32), pattern="2:4")
    prog = compile_graph(built.graph, _without_sparse_multiply("4x4"))
    assert {r.geometry.weight_format for r in prog.layers if r.kind == "conv"} == {"block"}
    assert prog.meta["weight_formats"]["notes"] == {}
    check_bit_exact(built.graph, prog)


def test_torchvision_resnet18_at_2_4_is_bit_exact():
    built = build_graph_from(get_model("resnet18", seed=0), input_shape=(1, 3, 32, 32), pattern="2:4")
    prog = compile_graph(built.graph, "4x4")
    assert sum(r.geometry.weight_format == "masked" for r in prog.layers) >= 19  # every conv and fc but the stem
    check_bit_exact(built.graph, prog, module=built.module)


def test_program_files_keep_the_format_and_older_files_load_as_block(tmp_path):
    built = build_graph_from(_net(TinyResNet), input_shape=(1, 3, 32, 32), pattern="2:4")
    prog = compile_graph(built.graph, "2x2")
    prog.save(tmp_path / "p.tsp")
    loaded = Program.load(tmp_path / "p.tsp")
    assert [r.geometry for r in loaded.layers] == [r.geometry for r in prog.layers]
    check_bit_exact(built.graph, loaded)  # decoded from the file's bytes alone
    # a file written before the field existed: no weight_format key in any layer's geometry
    dense = compile_graph(build_graph_from(_net(TinyResNet), input_shape=(1, 3, 32, 32)).graph, "2x2")
    dense.save(tmp_path / "d.tsp")
    with np.load(tmp_path / "d.tsp") as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(arrays["header"].tobytes())
    for layer in header["layers"]:
        del layer["geometry"]["weight_format"]
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    np.savez(tmp_path / "old.npz", **arrays)
    (tmp_path / "old.npz").rename(tmp_path / "old.tsp")
    old = Program.load(tmp_path / "old.tsp")
    assert {r.geometry.weight_format for r in old.layers} == {"block"}
    assert old.layers == dense.layers
