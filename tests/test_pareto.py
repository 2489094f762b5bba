"""The pattern Pareto sweep: the front, the plan, a tiny sweep, its CSV / Markdown, the accuracy join."""

from __future__ import annotations

import csv
import io
import json
import random

import pytest
from typer.testing import CliRunner

from tilesparse.cli.main import app
from tilesparse.errors import ConfigError
from tilesparse.reports.pareto import (
    ParetoRow,
    load_accuracy,
    mark_fronts,
    pareto_front,
    plan_points,
    run_pareto,
)
from tilesparse.reports.pareto_render import COLUMNS, markdown, to_csv

runner = CliRunner()


def _dominated(i: int, pts: list[tuple[float, float]]) -> bool:
    """The definition, pair by pair: some other point is at least as good in both, better in one."""
    c, q = pts[i]
    return any(c2 <= c and q2 >= q and (c2 < c or q2 > q) for j, (c2, q2) in enumerate(pts) if j != i)


def test_front_on_hand_made_points():
    pts = [(1.0, 0.5), (2.0, 0.9), (2.0, 0.4), (3.0, 0.9), (0.5, 0.1), (1.0, 0.5)]
    # (2, 0.4) is beaten by (1, 0.5); (3, 0.9) by (2, 0.9); the duplicate (1, 0.5) does not beat its twin
    assert pareto_front(pts) == [True, True, False, False, True, True]
    assert pareto_front([(1.0, float("nan")), (2.0, 0.3)]) == [False, True]
    assert pareto_front([]) == []


def test_front_matches_the_definition_on_random_points():
    rng = random.Random(3)
    for _ in range(200):
        pts = [(float(rng.randint(0, 6)), float(rng.randint(0, 6))) for _ in range(rng.randint(1, 12))]
        assert pareto_front(pts) == [not _dominated(i, pts) for i in range(len(pts))], pts


def test_plan_fills_free_levels_and_keeps_fixed_ones():
    plan = [(p.pattern, p.spec, p.sparsity) for p in plan_points(["dense", "8x8", "1:4", "hss", "tasd"], [0.5, 0.75])]
    assert plan == [("dense", None, 0.0), ("8x8", "8x8@0.5", 0.5), ("8x8", "8x8@0.75", 0.75), ("1:4", "1:4", 0.75),
                    ("hss", "8x8@0/2:4", 0.5), ("hss", "8x8@0.5/2:4", 0.75), ("tasd", "2:4+1:4", 0.25)]
    # a hierarchy cannot go below its fixed level's sparsity: that target is skipped, not refused
    assert [p.spec for p in plan_points(["8x8/1:4"], [0.5, 0.875])] == ["8x8@0.5/1:4"]
    with pytest.raises(ConfigError, match="--patterns"):
        plan_points(["3x"], [0.5])
    with pytest.raises(ConfigError, match="--sparsity"):
        plan_points(["8x8"], [1.5])


@pytest.fixture(scope="module")
def tiny_rows():
    return run_pareto(["digits_cnn"], ["2x2"], ["dense", "8x8", "2:4", "tasd"], [0.5], energy_budget=30)


def test_tiny_sweep_measures_each_point(tiny_rows):
    from tilesparse.build import compile_source

    by_spec = {r.spec: r for r in tiny_rows}
    assert list(by_spec) == ["dense", "8x8@0.5", "2:4", "2:4+1:4"]
    dense, blocks, nm = by_spec["dense"], by_spec["8x8@0.5"], by_spec["2:4"]
    tasd = by_spec["2:4+1:4"]  # refused on a compiler without TASD, measured on one with it
    assert (tasd.status.startswith("not compiled: ") and tasd.latency_ms is None) or tasd.latency_ms > 0
    # independent: the same program compiled directly; its DDR bytes are the LOAD/LOADW/WRITE instructions'
    prog = compile_source("digits_cnn", "2x2", sparsity=0.5, block="8x8", quantized=False)
    ddr = sum(i.nbytes for i in prog.instrs if i.op in ("LOAD", "LOADW", "WRITE"))
    assert blocks.ddr_bytes == ddr and blocks.packed_weight_bytes == sum(r.packed_weight_bytes for r in prog.layers)
    # 8x8 blocks at 0.5 keep half the blocks of every layer but the first conv (bitmaps aside)
    assert 0.45 < blocks.packed_weight_bytes / dense.packed_weight_bytes < 0.6
    assert nm.packed_weight_bytes < dense.packed_weight_bytes
    for r in (dense, blocks, nm):
        assert r.ddr_bytes >= r.packed_weight_bytes and r.memtile_core_bytes > 0 and r.latency_ms >= r.bound_ms > 0
        assert sum(r.limiter_ms.values()) == pytest.approx(r.latency_ms)
    assert dense.energy_uj > blocks.energy_uj > 0 and dense.energy_uj > nm.energy_uj
    # no accuracy: the front is latency vs density; dense (most weights) and the fastest point are on it
    assert dense.on_front and min((r for r in tiny_rows if r.compiled), key=lambda r: r.latency_ms).on_front


def test_a_refused_point_is_a_row_without_figures(monkeypatch):
    import tilesparse.build

    def refuse(source, array, **kw):
        raise ConfigError("--pattern", [f"{kw.get('pattern')}: not in this compiler"])

    monkeypatch.setattr(tilesparse.build, "compile_source", refuse)
    rows = run_pareto(["digits_cnn"], ["2x2"], ["2:4"], [0.5], energy=False)
    assert len(rows) == 1 and rows[0].status == "not compiled: --pattern: 2:4: not in this compiler"
    assert rows[0].latency_ms is None and not rows[0].on_front
    assert "not compiled" in markdown(rows) and to_csv(rows).splitlines()[1].count(",,") >= 5


def test_dense_energy_is_the_cost_model_on_the_dense_mappings():
    from tilesparse.build import build_graph_from
    from tilesparse.costmodel.model import evaluate
    from tilesparse.hw import load_array
    from tilesparse.reports.pareto import EnergyModel

    g = build_graph_from("digits_cnn", sparsity=0.0, quantized=False).graph
    em = EnergyModel(g, load_array("2x2"), budget=30)
    direct = sum(evaluate(p, em.arch, em.mappings[n]).energy_pj for n, p in em.problems.items()) / 1e6
    assert em.energy_uj({}) == pytest.approx(direct)
    assert em.energy_uj(dict.fromkeys(em.problems, 0.25)) < direct


def test_csv_and_markdown_columns(tiny_rows):
    table = list(csv.DictReader(io.StringIO(to_csv(tiny_rows))))
    assert tuple(table[0]) == COLUMNS and len(table) == len(tiny_rows)
    for t in table:
        assert (t["status"] == "ok") == (t["latency_ms"] != "")
    md = markdown(tiny_rows)
    header = next(line for line in md.splitlines() if line.startswith("| pattern"))
    assert [c.strip() for c in header.strip("|").split("|")][:5] == ["pattern", "spec", "sparsity", "latency ms",
                                                                     "bound ms"]
    # every table row has the header's cells, a refusal's '|' escaped
    n = header.count("|")
    rows = [line for line in md.splitlines() if line.startswith("| ") and line != header]
    assert rows and all(line.replace("\\|", "").count("|") == n for line in rows)


def _row(spec: str, sparsity: float, latency: float) -> ParetoRow:
    return ParetoRow("digits_cnn", "aie2-2x2", spec, spec, sparsity, latency_ms=latency)


def test_accuracy_join_from_a_csv_and_the_front_on_accuracy(tmp_path):
    f = tmp_path / "acc.csv"
    f.write_text("network,pattern,density,accuracy\ndigits_cnn,dense,1,99\ndigits_cnn,8x8,0.5,97\n"
                 "digits_cnn,8x8,0.5,98\ndigits_cnn,2:4,0.5,98.5\n")
    table = load_accuracy(f)
    assert table[("digits_cnn", "8x8@0.5", 0.5)] == pytest.approx(97.5)  # the mean of two evaluations
    from tilesparse.reports.pareto import accuracy_of

    rows = [_row("dense", 0.0, 3.0), _row("8x8@0.5", 0.5, 1.0), _row("2:4", 0.5, 2.0), _row("1:4", 0.75, 0.5)]
    for r in rows:
        r.accuracy = accuracy_of(table, r)
    assert [r.accuracy for r in rows] == [99.0, 97.5, 98.5, None]
    mark_fronts(rows)
    assert [r.on_front for r in rows] == [True, True, True, False]  # no accuracy: not on an accuracy front


def test_accuracy_join_from_the_study_and_json(tmp_path):
    study = tmp_path / "s.jsonl"
    recs = [{"dataset": "digits", "kind": "dense", "pattern": "dense", "sparsity": 0.0, "accuracy": 99.0},
            {"dataset": "digits", "kind": "train", "spec": "8x8", "sparsity": 0.75, "method": "oneshot",
             "accuracy": 96.0},
            {"dataset": "digits", "kind": "train", "spec": "8x8", "sparsity": 0.75, "method": "incremental",
             "accuracy": 10.0},
            {"dataset": "digits", "kind": "tasd", "sparsity": 0.5, "accuracy": 50.0}]
    study.write_text("\n".join(json.dumps(r) for r in recs))
    assert load_accuracy(study) == {("digits_cnn", "dense", 0.0): 99.0, ("digits_cnn", "8x8@0.75", 0.75): 96.0}
    j = tmp_path / "a.json"
    j.write_text(json.dumps([{"network": "n", "pattern": "hss", "sparsity": 0.75, "accuracy": 90}]))
    assert ("n", "8x8@0.5/2:4", 0.75) in load_accuracy(j)
    j.write_text(json.dumps([{"network": "n", "pattern": "2:4", "accuracy": 90}]))
    with pytest.raises(ConfigError, match="record 1") as e:
        load_accuracy(j)
    assert "density or sparsity" in str(e.value.errors)
    with pytest.raises(ConfigError, match="no such file"):
        load_accuracy(tmp_path / "missing.csv")


def test_cli_writes_csv_md_png_json(tmp_path):
    acc = tmp_path / "acc.csv"
    acc.write_text("network,pattern,sparsity,accuracy\ndigits_cnn,dense,0,99\ndigits_cnn,8x8,0.75,97\n")
    out = {k: tmp_path / f"p.{k}" for k in ("csv", "md", "png", "json")}
    res = runner.invoke(app, ["pareto", "--networks", "digits_cnn", "--arrays", "2x2", "--patterns", "dense,8x8",
                              "--sparsity", "0.75", "--no-energy", "--accuracy", str(acc), "--csv", str(out["csv"]),
                              "--md", str(out["md"]), "--plot", str(out["png"]), "--json", str(out["json"])])
    assert res.exit_code == 0, res.output
    recs = json.loads(out["json"].read_text())
    assert [(r["spec"], r["accuracy"], r["on_front"]) for r in recs] == [("dense", 99.0, True),
                                                                          ("8x8@0.75", 97.0, True)]
    assert recs[0]["energy_uj"] is None
    assert out["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "latency against accuracy" in out["md"].read_text()
    assert len(out["csv"].read_text().splitlines()) == 3


def test_cli_refuses_bad_input_before_work(tmp_path):
    for args, where in ((["--patterns", "9:4"], "pattern"), (["--sparsity", "0.5,x"], "--sparsity"),
                        (["--arrays", "0x4"], "--arrays"), (["--plot", str(tmp_path / "p.pdf")], "--plot"),
                        (["--patterns", ","], "--patterns")):
        res = runner.invoke(app, ["pareto", "--networks", "digits_cnn", *args])
        assert res.exit_code != 0 and isinstance(res.exception, ConfigError), args
        assert where in str(res.exception), (args, res.exception)
