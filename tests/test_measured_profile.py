"""The `measured` profile: the NPU1 / NPU2 presets, the fit of its figures, the per-invocation floor
(docs/time-model.md, "Profiles" and "NPU presets"; benchmarks/measured_profile.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tilesparse.errors import ConfigError
from tilesparse.estimate.calibrate import fit_figures, measured_profile, model_seconds, predict
from tilesparse.estimate.timemodel import estimate_program
from tilesparse.hw import MEASURED, MeasuredFigures, list_presets, load_array

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "measured_profile.json"


# --- presets -----------------------------------------------------------------------------------


def test_npu1_preset_peak_is_the_hand_computed_rate():
    hw = load_array("npu1")
    assert (hw.name, hw.rows, hw.cols, hw.clock_hz) == ("npu1", 4, 4, 1.024e9)
    # AM020 "Summary": 512 int8 ops (256 MACs) per tile per cycle; 16 tiles at the driver's 1024 MHz
    assert hw.peak_macs_per_s * 2 == pytest.approx(16 * 512 * 1.024e9)  # 8.39 TOPS
    assert hw.links.memtile_to_core_bytes_per_s == 4 * hw.clock_hz  # a 32-bit stream at the array clock
    assert hw.core.sparse_matmul.enabled and hw.core.sparse_matmul.chunk_bytes == 32


def test_npu2_preset_peak_is_the_drivers_formula():
    hw = load_array("npu2")
    assert (hw.name, hw.rows, hw.cols, hw.clock_hz) == ("npu2", 4, 8, 1.8e9)
    # xdna driver, NPU4_DPM_TOPS: 4096 int8 ops per column per cycle x columns x hclk (MHz) / 1e6 TOPS
    assert hw.peak_macs_per_s * 2 / 1e12 == pytest.approx(4096 * 8 * 1800 / 1e6)  # 58.98 TOPS
    assert hw.core.matmul_shape == (8, 8, 8) and hw.macs_per_cycle("int8") == 512
    assert hw.links.memtile_to_core_bytes_per_s == 8 * hw.clock_hz  # a 64-bit stream (AIE-ML v2)
    # not modelled on v2: the sparse multiply's rate (off, its 512-bit chunk format recorded) and int4
    sm = hw.core.sparse_matmul
    assert not sm.enabled and (sm.chunk_bytes, sm.mask_bytes) == (64, 8)
    with pytest.raises(ConfigError, match="int8xint4"):
        hw.macs_per_cycle("int8xint4")


def test_presets_are_selectable_like_the_other_arrays():
    assert {"npu1", "npu2"} <= set(list_presets())
    assert load_array(" NPU2 ").label == "npu2-4x8"
    assert load_array("npu2-2x2").label == "npu2-2x2" and load_array("npu2-2x2").clock_hz == 1.8e9
    with pytest.raises(ConfigError, match="npu1"):  # the error lists them
        load_array("npu3")


def test_compile_help_lists_the_presets():
    from typer.testing import CliRunner

    from tilesparse.cli.main import app

    r = CliRunner().invoke(app, ["compile", "--help"], terminal_width=200)
    assert r.exit_code == 0 and "npu1" in r.output and "npu2" in r.output


# --- the fit -----------------------------------------------------------------------------------


def _overlap_times(e: float) -> np.ndarray:
    """An analytic stand-in for the time model, independent of it: per workload, compute / e
    overlapped with a transfer (the larger wins), plus a drain."""
    compute = np.array([3e-3, 4e-4, 2e-5, 0.0])
    transfer = np.array([1e-3, 6e-4, 1e-6, 0.0])
    return np.maximum(compute / e, transfer) + np.array([1e-5, 2e-6, 1e-6, 0.0])


@pytest.mark.parametrize("eff,call", [(0.3, 150e-6), (0.9, 20e-6), (0.05, 2e-3)])
def test_the_fit_recovers_known_figures(eff, call):
    measured = _overlap_times(eff) + call  # synthetic measurements, the last an empty call
    fit = fit_figures(_overlap_times, measured)
    assert fit.kernel_efficiency == pytest.approx(eff, rel=1e-4)
    assert fit.invocation_s == pytest.approx(call, rel=1e-4)
    assert fit.rms_log_error < 1e-4


def test_the_fit_is_least_squares_on_log_times():
    # two measurements of one workload that disagree by 2x: the best model time is their geometric
    # mean (sqrt(2 * 4) ms), which splits the log error evenly (the arithmetic mean, 3 ms, would not)
    fit = fit_figures(lambda e: np.array([1e-3 / e, 1e-3 / e]), [2e-3, 4e-3])
    assert 1e-3 / fit.kernel_efficiency + fit.invocation_s == pytest.approx(np.sqrt(8e-6), rel=1e-4)
    assert fit.log_errors[0] == pytest.approx(-fit.log_errors[1], abs=1e-4)


def test_the_fit_on_the_time_model_recovers_known_figures(tiny_programs):
    figs = MeasuredFigures(kernel_efficiency=0.4, invocation_s=80e-6)
    measured = predict(tiny_programs, figs)
    fit = fit_figures(lambda e: model_seconds(tiny_programs, e), measured)
    assert fit.kernel_efficiency == pytest.approx(0.4, rel=1e-3)
    assert fit.invocation_s == pytest.approx(80e-6, rel=1e-3)


def test_bad_fit_inputs_are_named():
    with pytest.raises(ValueError, match="at least 2 measured times"):
        fit_figures(lambda e: np.array([1.0]), [1.0])
    with pytest.raises(ValueError, match="positive seconds"):
        fit_figures(lambda e: np.array([1.0, 1.0]), [1.0, -1.0])
    with pytest.raises(ValueError, match="returned 3 times for 2"):
        fit_figures(lambda e: np.ones(3), [1.0, 2.0])


# --- the floor and the shipped figures ---------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_programs():
    """A 64x64x64 GEMM as a 1x1 conv on npu2, and a 3x3 conv on npu1 (timing only)."""
    import torch

    from tilesparse.build import build_graph_from
    from tilesparse.compiler.pipeline import compile_graph

    torch.manual_seed(0)
    g1 = build_graph_from(torch.nn.Conv2d(64, 64, 1), input_shape=(1, 64, 8, 8), quantized=False).graph
    g2 = build_graph_from(torch.nn.Conv2d(32, 64, 3, padding=1), input_shape=(1, 32, 16, 16), quantized=False).graph
    return [compile_graph(g1, "npu2"), compile_graph(g2, "npu1")]


def test_a_small_layer_under_measured_is_the_per_invocation_floor(tiny_programs):
    p = tiny_programs[0]
    fixed = MEASURED.measured.invocation_s
    total = estimate_program(p, "measured").total_s
    array_s = model_seconds([p], MEASURED.measured.kernel_efficiency)[0]
    assert total == pytest.approx(array_s + fixed, rel=1e-12)
    assert fixed / total > 0.9  # the fixed cost dominates a small layer
    # and the array part is the tilesparse estimate with COMP scaled: never below it
    assert estimate_program(p, "tilesparse").total_s <= array_s


def test_measured_holds_the_benchmarks_fit():
    doc = json.loads(RESULTS.read_text())
    fit = doc["fit"]
    assert MEASURED.measured.kernel_efficiency == round(fit["kernel_efficiency"], 3)
    assert round(MEASURED.measured.invocation_s * 1e6) == round(fit["invocation_s"] * 1e6)
    assert measured_profile(0.5, 1e-6).measured == MeasuredFigures(0.5, 1e-6)
    held = [r for r in doc["rows"] if r["role"] == "held-out"]
    assert held and all(abs(r["range_error"]) <= 0.25 or r["verdict"].startswith("MISS, explained") for r in held)
