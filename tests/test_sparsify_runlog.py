"""Per-epoch records (metrics.csv / metrics.jsonl beside last.pt), top-5 accuracy, learning-rate schedules,
label smoothing and the ``report`` verb."""

import copy
import csv
import json
import math
import sys

import pytest
import torch
from _sparsify_helpers import ToyNet, toy_loaders
from PIL import Image

from tilesparse.cli.main import main
from tilesparse.data.digits import digits_loaders
from tilesparse.errors import ConfigError
from tilesparse.models.zoo import get_model
from tilesparse.sparsify import Recipe, Sparsifier, Trainer, make_method, sparsify_model
from tilesparse.sparsify.evaluation import evaluate_topk, topk_correct
from tilesparse.sparsify.runlog import COLUMNS, metric_rows, read_metrics, write_metrics
from tilesparse.sparsify.schedule import lr_factor
from tilesparse.sparsify.trainer import EpochRecord

RECIPE = {"method": "oneshot", "sparsity": 0.5, "block": (4, 4), "bn_recalibration_batches": 2,
          "training": {"epochs": 3, "lr": 0.05, "lr_schedule": "cosine", "lr_min": 0.005, "batch_size": 64}}
TIMING = ("images_per_s", "epoch_seconds")  # measured, so never compared between runs


def _digits_run(out, stop_at=None, resume=False):
    """digits_cnn sparsified under RECIPE into ``out``; ``stop_at``: interrupted as that epoch starts."""
    torch.manual_seed(0)
    model = get_model("digits_cnn")
    recipe = Recipe.from_dict(RECIPE)
    train, test = digits_loaders(recipe.training.batch_size, 0)
    if stop_at is not None:
        start = Trainer._train_epoch

        def interrupt(self, opt, epoch, bar):
            if epoch == stop_at:
                raise KeyboardInterrupt
            return start(self, opt, epoch, bar)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(Trainer, "_train_epoch", interrupt)
            with pytest.raises(KeyboardInterrupt):
                sparsify_model(model, recipe, train, test, checkpoint_dir=out, progress=False)
        return None
    return sparsify_model(model, recipe, train, test, checkpoint_dir=out, resume=resume, progress=False).fit


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return out, _digits_run(out)


def _without_timing(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def test_metrics_files_hold_the_fit_history(digits_run):
    out, fit = digits_run
    rows = read_metrics(out)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for row, rec in zip(rows, fit.history, strict=True):
        assert (row["loss"], row["top1"], row["top5"], row["sparsity"], row["lr"]) == (
            rec.train_loss, rec.test_accuracy, rec.test_top5, rec.sparsity, rec.lr)
        assert row["images_per_s"] > 0 and row["epoch_seconds"] > 0
        assert row["top1"] <= row["top5"] <= 100 and row["sparsity"] == 0.5
    assert [r["lr"] for r in rows] == pytest.approx(
        [0.005 + 0.045 * (1 + math.cos(math.pi * e / 3)) / 2 for e in range(3)])
    with open(out / "metrics.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert tuple(table[0]) == COLUMNS
    assert [{k: float(v) for k, v in r.items()} for r in table] == rows  # same numbers, same order


def test_resume_continues_the_records_without_repeating_an_epoch(tmp_path, digits_run):
    _digits_run(tmp_path, stop_at=2)  # epochs 1 and 2 done, killed as epoch 3 starts
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [1, 2]
    with open(tmp_path / "metrics.jsonl", "a") as f:  # a record last.pt does not hold (as if written after it)
        f.write(json.dumps({"epoch": 3, "loss": 9.0}) + "\n")
    fit = _digits_run(tmp_path, resume=True)
    rows = read_metrics(tmp_path)
    assert [r["epoch"] for r in rows] == [1, 2, 3] and len(fit.history) == 3
    assert _without_timing(rows) == _without_timing(read_metrics(digits_run[0]))  # exact, lr schedule too


LOGITS = torch.tensor([[0.0, 9.0, 1.0, 2.0, 3.0, 4.0, 5.0],    # label 1: first
                       [7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0],    # label 4: fifth place
                       [7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0],    # label 5: sixth place
                       [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]])   # label 0: tie for first, argmax's pick
LABELS = torch.tensor([1, 4, 5, 0])


def test_top5_by_hand():
    assert topk_correct(LOGITS, LABELS) == [2, 3]
    assert topk_correct(LOGITS[:, :3], torch.tensor([1, 2, 2, 1])) == [1, 4]  # 3 classes: top-5 holds all


def test_evaluate_topk_over_batches_in_eval_mode():
    class Fixed(torch.nn.Module):
        def forward(self, x):
            assert not self.training
            return x

    model = Fixed().train()
    acc = evaluate_topk(model, [(LOGITS[:3], LABELS[:3]), (LOGITS[3:], LABELS[3:])])
    assert (acc.top1, acc.top5, acc.samples) == (50.0, 75.0, 4) and model.training


@pytest.mark.parametrize("schedule,reference", [
    ({"lr_schedule": "step", "lr_step_epochs": 2, "lr_gamma": 0.5},
     lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)),
    ({"lr_schedule": "cosine", "lr_min": 0.01},
     lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=7, eta_min=0.01)),
    ({}, lambda opt: torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0)),
])
def test_schedules_match_torch_schedulers_stepped_per_epoch(schedule, reference):
    cfg = Recipe.from_dict({"training": {"epochs": 7, "lr": 0.1, **schedule}}).training
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = reference(opt)
    torch_lrs = []
    for _ in range(7):
        torch_lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert [0.1 * lr_factor(cfg, e) for e in range(7)] == pytest.approx(torch_lrs)


def test_the_schedule_carries_on_through_the_optimizer_rebuilt_at_penalty_hardening():
    torch.manual_seed(0)
    model = ToyNet()
    train, _ = toy_loaders(n=16, batch=8)
    recipe = Recipe.from_dict({"method": "penalty", "block": (4, 4), "sparsity": 0.5, "penalty": {"epochs": 2},
                               "training": {"epochs": 4, "lr": 0.1, "lr_schedule": "step", "lr_step_epochs": 1,
                                            "lr_gamma": 0.5}})
    sp = Sparsifier(recipe).prepare(model)
    gate_lrs = []
    train_epoch = Trainer._train_epoch

    def spy(self, opt, epoch, bar):
        gate_lrs.append([g["lr"] for g in opt.param_groups[1:]])
        return train_epoch(self, opt, epoch, bar)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "_train_epoch", spy)
        fit = Trainer(model, sp, make_method("penalty"), train, None, recipe.training, progress=False).fit()
    assert [h.lr for h in fit.history] == pytest.approx([0.1, 0.05, 0.025, 0.0125])
    assert gate_lrs == [[0.01], [0.005], [], []]  # the gates' own rate, scaled alike, until they are folded in


@pytest.mark.parametrize("training,needle", [
    ({"lr": 0.01, "lr_min": 0.01}, "lr_min: 0.01 must be below lr 0.01"),
    ({"lr_schedule": "linear"}, "training.lr_schedule"),
    ({"label_smoothing": 1.0}, "training.label_smoothing"),
    ({"lr_gamma": 0}, "training.lr_gamma"),
])
def test_bad_schedule_fields_are_named(training, needle):
    with pytest.raises(ConfigError) as e:
        Recipe.from_dict({"training": training})
    assert needle in str(e.value)


def test_label_smoothing_is_the_training_loss():
    torch.manual_seed(0)
    model = ToyNet()
    train, _ = toy_loaders(n=16, batch=16)  # one batch: the epoch's loss is that batch's, before the step
    before = copy.deepcopy(model)
    cfg = Recipe.from_dict({"training": {"epochs": 1, "label_smoothing": 0.2}}).training
    fit = Trainer(model, None, None, train, None, cfg, progress=False).fit()
    x, y = next(iter(train))  # the whole set (the mean over it does not depend on the order)
    with torch.no_grad():
        want = torch.nn.CrossEntropyLoss(label_smoothing=0.2)(before(x), y)
    assert fit.history[0].train_loss == pytest.approx(float(want), rel=1e-6)


def test_records_from_before_the_new_fields_write_empty_cells(tmp_path):
    old = EpochRecord(**{"epoch": 0, "train_loss": 0.5, "test_accuracy": None, "sparsity": 0.25})
    write_metrics(tmp_path, [old])
    assert metric_rows([old])[0] == {"epoch": 1, "loss": 0.5, "top1": None, "top5": None, "sparsity": 0.25,
                                     "lr": None, "images_per_s": None, "epoch_seconds": None}
    assert (tmp_path / "metrics.csv").read_text().splitlines()[1] == "1,0.5,,,0.25,,,"


def _main(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["tilesparse", *args])
    with pytest.raises(SystemExit) as e:
        main()
    return e.value.code, capsys.readouterr()


def test_report_prints_the_table_and_writes_a_plot(digits_run, tmp_path, monkeypatch, capsys):
    out, fit = digits_run
    png = tmp_path / "m.png"
    code, cap = _main(monkeypatch, capsys, "report", str(out), "--plot", str(png), "--json", str(tmp_path / "m.json"))
    assert code == 0, cap.err
    lines = cap.out.splitlines()
    assert lines[0].split() == ["epoch", "loss", "top-1", "%", "top-5", "%", "sparsity", "lr", "images/s", "time",
                                "s"]
    for line, rec in zip(lines[1:4], fit.history, strict=True):
        cells = line.split()
        assert cells[0] == str(rec.epoch + 1) and cells[1] == f"{rec.train_loss:.4g}"
        assert cells[2] == f"{rec.test_accuracy:.4g}" and cells[4:6] == ["50.0", "%"]
    assert f"wrote {png}" in cap.out
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > im.size[1] > 100
    assert json.loads((tmp_path / "m.json").read_text()) == read_metrics(out)


def test_report_of_a_folder_without_records_is_refused(tmp_path, monkeypatch, capsys):
    code, cap = _main(monkeypatch, capsys, "report", str(tmp_path))
    assert code == 2
    assert f"{tmp_path / 'metrics.jsonl'}: not found; a run writes it after its first epoch" in cap.err
    assert not list(tmp_path.iterdir())  # no plot of nothing
