"""The hardware description: presets, shapes, validation errors."""

import pytest
import yaml

from tilesparse.errors import ConfigError
from tilesparse.hw import ArrayConfig, load_array


@pytest.mark.parametrize("r", range(2, 9))
def test_square_presets_keep_paper_numbers(r):
    hw = load_array(f"{r}x{r}")
    assert (hw.rows, hw.cols, hw.n_cores) == (r, r, r * r)
    # The paper's overlay: 256 int8 MAC/cycle at 1 GHz, 64 KB core memory, 512 KB MemTile per column.
    assert hw.peak_macs_per_s == r * r * 256 * 1e9
    assert hw.core.data_memory_bytes == 64 * 1024
    assert hw.memtile.bytes == 512 * 1024
    assert hw.links.ddr_to_memtile_bytes_per_s == 4e9


@pytest.mark.parametrize("spec,shape", [("4x2", (4, 2)), ("aie2-8x2", (8, 2)), ("4x8", (4, 8)),
                                        ("strix", (4, 8)), ("phoenix", (4, 4))])
def test_rectangular_and_named(spec, shape):
    hw = load_array(spec)
    assert (hw.rows, hw.cols) == shape


def test_yaml_roundtrip(tmp_path):
    hw = load_array("5x7")
    p = tmp_path / "a.yaml"
    p.write_text(yaml.safe_dump(hw.model_dump(mode="json")))
    assert load_array(p) == hw


@pytest.mark.parametrize("spec", ["foo", "0x4", "4x", "nosuchbase-4x4"])
def test_unknown_array_names_it(spec):
    with pytest.raises(ConfigError) as e:
        load_array(spec)
    assert spec in str(e.value)


def test_invalid_yaml_field_is_named(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("rows: 4\ncols: 4\ncore: {data_memory_bytes: -1, warp_drive: 3}\n")
    with pytest.raises(ConfigError) as e:
        load_array(p)
    msg = str(e.value)
    assert "bad.yaml" in msg and "core.data_memory_bytes" in msg and "core.warp_drive: unknown field" in msg


def test_buffers_must_fit_core_memory():
    with pytest.raises(ValueError, match="exceed data_memory_bytes"):
        ArrayConfig.model_validate({"core": {"data_memory_bytes": 1024}})


def test_matmul_shape_must_match_mac_rate():
    with pytest.raises(ValueError, match="matmul_shape"):
        ArrayConfig.model_validate({"core": {"matmul_shape": [4, 8, 4]}})


def test_empty_and_missing_files(tmp_path):
    p = tmp_path / "empty.yaml"
    p.write_text("")
    with pytest.raises(ConfigError, match="empty"):
        load_array(p)
    with pytest.raises(ConfigError, match="file not found"):
        load_array(tmp_path / "missing.yaml")
