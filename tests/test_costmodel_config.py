"""Architectures, problems and mappings: presets, YAML validation and clear errors on bad input."""

from __future__ import annotations

import pytest
import yaml

from tilesparse.costmodel import (
    InvalidMappingError,
    Mapping,
    Problem,
    evaluate,
    load_arch,
    why_invalid,
)
from tilesparse.errors import ConfigError, TilesparseError, UnsupportedOpError
from tilesparse.hw import load_array


def test_aie2_preset_follows_the_hw_description():
    for spec in ("4x4", "aie2-8x2", "strix"):
        hw = load_array(spec)
        arch = load_arch(f"aie2:{spec}")
        core, memtile, ddr = arch.levels
        assert core.capacity_bytes == hw.core.data_memory_bytes
        assert core.tensor_capacity_bytes["W"] == hw.core.weight_buffer_bytes
        assert memtile.capacity_bytes == hw.memtile.bytes and ddr.capacity_bytes == hw.ddr.bytes
        assert (memtile.fanout, ddr.fanout) == (hw.rows, hw.cols)
        assert arch.mac_units * arch.compute.macs_per_cycle * arch.clock_hz == hw.peak_macs_per_s
        # two DDR channels per column, each at the hw link rate
        assert ddr.read_bytes_per_cycle == hw.cols * 2 * hw.links.ddr_to_memtile_bytes_per_s / hw.clock_hz


def test_eyeriss_preset_loads():
    arch = load_arch("eyeriss")
    assert arch.mac_units == 168 and arch.levels[0].capacity_bytes == 512


def _write(tmp_path, data):
    path = tmp_path / "arch.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


BASE = {"name": "x", "levels": [{"name": "buf", "capacity_bytes": 1024}, {"name": "dram"}]}


def test_yaml_unknown_key_names_file_and_field(tmp_path):
    bad = {**BASE, "levels": [{"name": "buf", "capacity_bytes": 1024, "bandwith": 3}, {"name": "dram"}]}
    with pytest.raises(ConfigError) as e:
        load_arch(_write(tmp_path, bad))
    msg = str(e.value)
    assert "arch.yaml" in msg and "levels.0.bandwith" in msg and "unknown field" in msg


def test_zero_capacity_level_is_rejected(tmp_path):
    bad = {**BASE, "levels": [{"name": "buf", "capacity_bytes": 0}, {"name": "dram"}]}
    with pytest.raises(ConfigError, match="levels.0.capacity_bytes"):
        load_arch(_write(tmp_path, bad))


def test_outermost_level_must_hold_everything(tmp_path):
    bad = {**BASE, "levels": [{"name": "buf"}, {"name": "dram", "holds": ["W", "I"]}]}
    with pytest.raises(ConfigError, match="outermost level must hold"):
        load_arch(_write(tmp_path, bad))


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown architecture"):
        load_arch("tpu9000")


def test_bad_problem_numbers():
    with pytest.raises(ConfigError, match="groups=3"):
        Problem.conv(k=8, c=8, p=4, q=4, groups=3)
    with pytest.raises(ConfigError, match="positive integer"):
        Problem.conv(k=0, c=8, p=4, q=4)


def test_problem_from_ir_nodes():
    from tilesparse.ir.graph import Node, Op, TensorType

    conv = Node("conv1", Op.CONV2D, ("x",), TensorType((1, 64, 112, 112)),
                {"kernel": (7, 7), "stride": (2, 2), "padding": (3, 3), "dilation": (1, 1), "groups": 1})
    p = Problem.from_node(conv, in_shape=(1, 3, 224, 224))
    assert p.macs == 64 * 3 * 112 * 112 * 49 and p.stride == (2, 2)
    fc = Node("fc", Op.LINEAR, ("x",), TensorType((1, 1000)))
    assert Problem.from_node(fc, in_shape=(1, 2048)).macs == 2048 * 1000
    with pytest.raises(UnsupportedOpError, match="relu"):
        Problem.from_node(Node("r", Op.RELU, ("x",), TensorType((1, 4))))


def test_impossible_mappings_give_the_reason():
    arch = load_arch("eyeriss")
    p = Problem.matmul(16, 16, 16)
    wrong = Mapping.build(arch, [{}, {}, {"P": 16, "K": 16, "C": 8}])
    assert "C: factors multiply to 8, bound is 16" in why_invalid(p, arch, wrong)
    fits = Mapping.build(arch, [{}, {"C": 16}, {"P": 16}], spatial=[{}, {"K": 16}, {}])
    assert why_invalid(p, arch, fits) is None
    wide = Mapping.build(arch, [{}, {}, {"P": 16, "C": 16}], spatial=[{}, {"K": 16}, {"K": 1}])
    assert why_invalid(p, arch, wide) is None
    fan = Mapping.build(arch, [{}, {}, {"C": 1}], spatial=[{}, {"K": 16, "P": 16}, {"C": 16}])
    assert "dram: spatial factors use 16 > fanout 1" in why_invalid(p, arch, fan)
    big = Mapping.build(arch, [{"K": 16, "C": 16, "P": 16}, {}, {}])  # 3 x 256 B > 512 B
    assert "rf: tiles need" in why_invalid(p, arch, big)
    with pytest.raises(InvalidMappingError, match="invalid mapping") as e:
        evaluate(p, arch, big)
    assert isinstance(e.value, TilesparseError)
    bypass_top = Mapping.build(arch, [{}, {}, {"P": 16, "K": 16, "C": 16}], bypass=["", "", "W"])
    assert "dram" in why_invalid(p, arch, bypass_top)
    with pytest.raises(InvalidMappingError, match="unknown loop"):
        Mapping.build(arch, [{"X": 2}, {}, {}])


def test_input_window_counts_touched_rows():
    # 1x1 stride 2: each of the 4 output rows reads one input row -> 4 x 4 = 16 inputs, not the 7 x 7
    # bounding box; 3x3 stride 2: windows overlap, rows 0..8 are all read -> 9 x 9.
    assert Problem.conv(k=1, c=1, p=4, q=4, stride=2).tensor_elems[1] == 16
    assert Problem.conv(k=1, c=1, p=4, q=4, r=3, s=3, stride=2).tensor_elems[1] == 81
    assert Problem.conv(k=1, c=2, p=3, q=1, r=3, s=1, dilation=2).tensor_elems[1] == 2 * 7
