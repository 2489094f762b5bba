"""benchmarks/replay_check.py's machinery on the digits CNN: each combination compiled under its
profile and compared layer by layer; the report lists every layer that differs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import replay_check as rc  # noqa: E402


def test_rules_are_named_profiles():
    assert rc._rules_list(" Paper,measured ") == ["paper", "measured"]
    with pytest.raises(argparse.ArgumentTypeError, match="unknown rule profile 'fast'"):
        rc._rules_list("paper,fast")
    with pytest.raises(argparse.ArgumentTypeError, match="got nothing"):
        rc._rules_list(" , ")


@pytest.fixture(scope="module")
def rows():
    return rc.run_one("digits_cnn", "sparse", ["2x2"], list(rc.RULES), quick=False)


def test_each_profile_compiles_and_times_under_itself(rows):
    assert [r["rules"] for r in rows] == list(rc.RULES)
    for r in rows:
        assert r["equal"] == r["layers"] == 8 and not r["unequal"]
        assert r["replay_total_s"] == pytest.approx(r["model_total_s"], rel=1e-9)
    by = {r["rules"]: r["model_total_s"] for r in rows}
    assert by["paper"] > by["tilesparse"]  # serial steps, no prefetch, no cut-through: never faster here
    assert by["measured"] > by["tilesparse"] + 50e-6  # its 52 µs per call, and COMP at 80 % of peak
    assert [bool(r["variants_s"]) for r in rows] == [p == rc.VARIANT_RULES for p in rc.RULES]


def test_the_report_lists_a_layer_that_differs(rows):
    bad = dict(rows[0], equal=rows[0]["layers"] - 1,
               unequal=[{"layer": "conv_x", "model_s": 1e-6, "replay_s": 2e-6, "diff_s": 1e-6, "rel": 1.0}])
    md = rc.markdown([bad, *rows[1:]], "cmd", 1.0, list(rc.RULES), quick=False)
    assert "**23 of 24 layers equal.**" in md
    assert "Layers that differ by more than float rounding: 1." in md
    assert "* digits_cnn 2x2 sparse paper conv_x: time model 1.0000 µs, replay 2.0000 µs" in md
    assert "| digits_cnn | 2x2 | sparse | " in md.split("## Latency per profile")[1]
