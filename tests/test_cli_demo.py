"""``tilesparse demo``: the whole pipeline runs, every simulated image is bit-exact, sparsity pays."""

import json

from typer.testing import CliRunner

from tilesparse.cli.main import app


def test_demo_end_to_end(tmp_path):
    res = CliRunner().invoke(app, ["demo", "--images", "2", "--networks", "resnet18", "--array", "3x2",
                                   "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "2 bit-exact" in res.output
    summary = json.loads((tmp_path / "demo.json").read_text())
    assert summary["bit_exact"] == summary["images"] == 2
    dense, sparse = summary["networks"]
    assert (dense["sparsity"], sparse["sparsity"]) == (0.0, 0.5)
    # Sparsity must pay, and no estimate may beat its own lower bound.
    assert sparse["estimate_ms"] < dense["estimate_ms"]
    for n in (dense, sparse):
        assert n["estimate_ms"] >= n["bound_ms"] > 0
    assert sparse["packed_weight_fraction"] <= 0.52
    assert (tmp_path / "sparse.pt").is_file()
    # The digits program went through the front door as an in-memory module, not pruned again
    # (its trained zero blocks masked) and calibrated on the 16 training images it was given.
    prov = summary["provenance"]
    assert (prov["source_kind"], prov["source"], prov["selection"]) == ("module", "DigitsCNN", "module-weights")
    assert prov["calibration"] == "given: n=16" and prov["source_sha256"] is None
    # masked: half of the three trained convs' 8x8 blocks (8 of 16, 16 of 32, 32 of 64); the
    # classifier's 2x8 blocks are not in the recipe and stay dense -> 56 of 128
    assert prov["sparsity"] == 56 / 128


def test_demo_rejects_bad_sparsity():
    res = CliRunner().invoke(app, ["demo", "--sparsity", "1.5"])
    assert res.exit_code != 0
    assert "sparsity" in str(res.exception or res.output)
