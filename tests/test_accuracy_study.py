"""The accuracy study's machinery on a tiny slice: records, resume, report, and masks that obey their pattern."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import accuracy_report  # noqa: E402
import accuracy_study as study  # noqa: E402

TINY = dataclasses.replace(study.QUICK_RULES["shapes"], n_train=36, n_test=18, dense_epochs=1, epochs=1,
                           batch_size=18)
FIELDS = {"dataset", "kind", "pattern", "sparsity", "method", "seed", "key", "accuracy", "dense_accuracy",
          "achieved_sparsity", "seconds", "rules"}


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_sweep_records_resume_and_report(tmp_path):
    s = study.Study({"shapes": TINY}, seeds=(0,), sparsities=(0.75,))
    out = tmp_path / "s.jsonl"
    records = study.sweep(s, out, tmp_path / "models", progress=False)
    plan = s.plan()
    assert [r["key"] for r in records] == [r.key for r in plan]
    # 5 patterns x 2 methods at 75 % (every pattern has a 75 % form), dense, 1 TASD, 2 SDQ points
    assert len(plan) == 1 + 10 + 1 + 2
    for r in records:
        assert FIELDS <= set(r), r["key"]
        assert 0.0 <= r["accuracy"] <= 100.0 and r["dense_accuracy"] == records[0]["accuracy"]
        if r["kind"] in ("tasd", "sdq"):
            assert 0.0 <= r["accuracy_bn"] <= 100.0 and r["rel_errors"]
    nm = next(r for r in records if r["pattern"] == "N:M" and r["method"] == "oneshot")
    assert nm["spec"] == "1:4" and nm["achieved_sparsity"] == pytest.approx(0.75)
    tasd = next(r for r in records if r["kind"] == "tasd")
    assert tasd["achieved_sparsity"] >= 0.75 - 1e-9  # terms' densities add up to at most the budget
    # resume: a second sweep finds everything done and appends nothing
    lines = out.read_text().splitlines()
    again = study.sweep(s, out, tmp_path / "models", progress=False)
    assert out.read_text().splitlines() == lines and [r["key"] for r in again] == [r.key for r in plan]
    assert json.loads(lines[0])["kind"] == "dense"
    md = accuracy_report.render(again, s, tmp_path / "report", "cmd")
    assert "| N:M | 0.75 |" in md and "cost vs unstructured" in md
    assert (tmp_path / "report.png").stat().st_size > 0


@pytest.mark.parametrize("pattern", list(study.PATTERNS))
@pytest.mark.parametrize("method", study.METHODS)
def test_masks_obey_the_pattern(pattern, method):
    sparsity = 0.875
    data = study.loaders(TINY, 0)
    dense = study.new_model(TINY, 0)
    recipe = study.recipe_for(pattern, sparsity, method, TINY, 0)
    rec, sp = study.train_sparse(dense, recipe, data)
    assert rec["layers"] == 3  # the convs after the first
    for layer in sp.layers.values():
        mask = layer.param.element_mask.bool()
        assert layer.pattern.check(mask, layer.shape, layer.groups) == [], layer.name
        zero = ~mask.expand(layer.shape)
        assert (layer.module.weight.detach()[zero] == 0).all()  # zeros are exactly zero after training
        assert (layer.raw_weight.detach()[zero] == 0).all()  # the stored weight too
    if pattern in ("N:M", "unstructured"):  # blocks (HSS too) keep one per block row: at most the target
        assert rec["achieved_sparsity"] == pytest.approx(sparsity)
    assert 0 < rec["achieved_sparsity"] <= sparsity + 1e-9
