"""``tilesparse map`` end to end through the typer app."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from tilesparse.cli.main import app
from tilesparse.errors import ConfigError

runner = CliRunner()


def test_map_one_layer_writes_json(tmp_path):
    out = tmp_path / "r.json"
    res = runner.invoke(app, ["map", "--layer", "conv:k=32,c=16,p=14,q=14,r=3,s=3", "--budget", "300",
                              "--objective", "latency", "--no-progress", "--explain", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "bound by" in res.output and "core" in res.output
    data = json.loads(out.read_text())
    layer = data["layers"][0]
    assert layer["macs"] == 32 * 16 * 14 * 14 * 9 and layer["evaluations"] <= 300
    assert layer["cycles"] >= layer["macs"] / (16 * 256)  # never faster than the peak MAC rate


def test_map_sparse_layer_on_eyeriss():
    res = runner.invoke(app, ["map", "-l", "matmul:m=16,k=64,n=32", "-a", "eyeriss", "--budget", "200",
                              "--density", "0.25", "--format", "bitmask", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "eyeriss" in res.output


def test_map_bad_inputs_are_config_errors():
    for args in (["map", "-l", "conv:k=64"], ["map", "-l", "matmul:m=4,k=4,n=4", "--density", "1.5"],
                 ["map"], ["map", "-l", "matmul:m=4,k=4,n=4", "--arch", "nope"]):
        res = runner.invoke(app, args)
        assert res.exit_code != 0 and isinstance(res.exception, ConfigError), args


def test_map_model_source_with_sparsity_to_json_stdout():
    """A model source as the positional argument, pruned by the front door; --json - prints JSON."""
    res = runner.invoke(app, ["map", "digits_cnn", "--array", "aie2", "--sparsity", "0.5", "--budget", "50",
                              "--no-progress", "--json", "-"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)  # the table goes to stderr with --json -
    assert [r["layer"] for r in data["layers"]] == ["features_0", "features_3", "features_7", "features_10", "fc"]
    dense = runner.invoke(app, ["map", "digits_cnn", "--budget", "50", "--no-progress", "--json", "-"])
    d = json.loads(dense.stdout)
    # the pruned layers (all but the first conv) keep about half their MACs' work
    assert data["layers"][2]["cycles"] < d["layers"][2]["cycles"]
