"""Rule profiles (tilesparse.hw.profiles): values, validation, the hw YAML key and --rules."""

from __future__ import annotations

import dataclasses

import pytest

from tilesparse.hw import MEASURED, PAPER, PROFILES, TILESPARSE, MeasuredFigures, get_profile, load_array
from tilesparse.hw.profiles import ALL_EXTRA_MECHANISMS
from tilesparse.sim.replay import PROFILES as REPLAY_PROFILES
from tilesparse.sim.replay import ReplayRules


def test_the_three_profiles():
    assert set(PROFILES) == {"tilesparse", "paper", "measured"}
    assert get_profile(None) is TILESPARSE and get_profile(" Paper ") is PAPER and get_profile(MEASURED) is MEASURED
    # the paper: every rule it states differently, and no mechanism it did not use
    assert PAPER.serial_single_steps and not PAPER.loadw_prefetch and not PAPER.cut_through
    assert not PAPER.residual_fusion and not PAPER.scratch_as_buffer
    assert not any(PAPER.allows(m) for m in ALL_EXTRA_MECHANISMS)
    assert all(TILESPARSE.allows(m) for m in ALL_EXTRA_MECHANISMS)
    # measured: tilesparse's rules, plus the measured figures
    assert dataclasses.replace(MEASURED, name="tilesparse", measured=MeasuredFigures()) == TILESPARSE
    assert 0 < MEASURED.measured.kernel_efficiency < 1 and MEASURED.measured.invocation_s > 0


def test_the_replay_takes_its_rules_from_the_profiles():
    for name, prof in PROFILES.items():
        r = REPLAY_PROFILES[name]
        assert r == ReplayRules.from_profile(prof)
        assert (r.serial_single_steps, r.loadw_prefetch, r.cut_through) == (
            prof.serial_single_steps, prof.loadw_prefetch, prof.cut_through)
    assert REPLAY_PROFILES["tilesparse"] == ReplayRules()  # today's replay, unchanged


def test_bad_profiles_are_named():
    with pytest.raises(ValueError, match="unknown rule profile 'fast'.*tilesparse, paper, measured"):
        get_profile("fast")
    with pytest.raises(ValueError, match="kernel_efficiency.*1.5"):
        MeasuredFigures(kernel_efficiency=1.5)
    with pytest.raises(ValueError, match="invocation_s"):
        MeasuredFigures(invocation_s=-1.0)
    with pytest.raises(ValueError, match="unknown mechanism 'core.magic'"):
        PAPER.allows("core.magic")


def test_hw_yaml_sets_the_default_profile(tmp_path):
    from tilesparse.errors import ConfigError

    f = tmp_path / "a.yaml"
    f.write_text("rows: 2\ncols: 2\nrules: paper\n")
    assert load_array(f).rules == "paper"
    assert load_array("4x4").rules == "tilesparse"
    f.write_text("rows: 2\ncols: 2\nrules: quick\n")
    with pytest.raises(ConfigError, match="rules"):
        load_array(f)


def test_estimate_rules_option(tmp_path):
    import json

    from typer.testing import CliRunner

    from tilesparse.cli.main import app

    got = {}
    for rules in ("tilesparse", "paper", "measured"):
        out = tmp_path / f"{rules}.json"
        r = CliRunner().invoke(app, ["estimate", "digits_cnn", "-a", "2x2", "--rules", rules, "--json", str(out)])
        assert r.exit_code == 0, r.output
        doc = json.loads(out.read_text())
        assert doc["rules"] == rules
        got[rules] = doc["estimate_ms"]
    assert got["paper"] >= got["tilesparse"]  # the paper's rules never overlap more
    assert got["measured"] > got["tilesparse"] + MEASURED.measured.invocation_s * 1e3 * 0.999
    r = CliRunner().invoke(app, ["estimate", "digits_cnn", "-a", "2x2", "--rules", "fast"])
    assert r.exit_code != 0 and "--rules fast" in str(r.exception)


def test_compile_rules_searches_under_the_profile_and_the_program_keeps_it(tmp_path):
    import json

    from typer.testing import CliRunner

    from tilesparse.cli.main import app
    from tilesparse.estimate.timemodel import estimate_program
    from tilesparse.program import Program

    tsp = tmp_path / "d.tsp"
    r = CliRunner().invoke(app, ["compile", "digits_cnn", "-a", "2x2", "--sparsity", "0.5", "--no-quantized",
                                 "--rules", "paper", "-o", str(tsp)])
    assert r.exit_code == 0, r.output
    prog = Program.load(tsp)
    assert prog.hw.rules == "paper"
    out = tmp_path / "e.json"
    r = CliRunner().invoke(app, ["estimate", str(tsp), "--json", str(out)])  # default: the program's rules
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    assert doc["rules"] == "paper"
    assert doc["estimate_ms"] == pytest.approx(estimate_program(prog, PAPER).total_s * 1e3, rel=1e-12)
    # the search ran under the paper's rules: its program is no slower under them than the one
    # searched under tilesparse's rules
    from tilesparse.build import compile_source

    prog_t = compile_source("digits_cnn", "2x2", sparsity=0.5, block=(8, 8), quantized=False)
    assert prog_t.hw.rules == "tilesparse"
    assert estimate_program(prog, PAPER).total_s <= estimate_program(prog_t, PAPER).total_s * (1 + 1e-9)
