"""Resume compares the run's settings with the checkpoint's: a difference is refused naming each field,
unless overridden; an override applies from the resumed epoch and is recorded."""

import pytest
import torch
from _sparsify_helpers import ToyNet, toy_loaders

from tilesparse.errors import CheckpointError
from tilesparse.sparsify import BlockSparsifier, Recipe, Trainer, make_method
from tilesparse.sparsify.checkpoint import read_checkpoint

BASE = {"method": "oneshot", "sparsity": 0.5, "block": (4, 4), "training": {"epochs": 2, "lr": 0.05}}
HINT = "give the same values, or --override to continue with the new ones"


def _recipe(**changes):
    data = {**BASE, **changes, "training": {**BASE["training"], **changes.get("training", {})}}
    return Recipe.from_dict(data)


def _fit(ckdir, recipe, resume=False, override=False, run=None, stop_at=None):
    """ToyNet trained under ``recipe``; ``stop_at``: interrupted as that epoch starts."""
    torch.manual_seed(0)
    model = ToyNet()
    train, test = toy_loaders()
    sp = BlockSparsifier(recipe).prepare(model)
    method = make_method(recipe.method)
    start = method.on_epoch_start

    def interrupt(epoch, ctx):
        if epoch == stop_at:
            raise KeyboardInterrupt
        return start(epoch, ctx)

    method.on_epoch_start = interrupt
    trainer = Trainer(model, sp, method, train, None, recipe.training, checkpoint_dir=ckdir, progress=False, run=run)
    return model, sp, trainer.fit(resume=resume, override=override)


@pytest.fixture
def interrupted(tmp_path):
    """A 2-epoch one-shot run at 50 % (4x4 blocks) interrupted after its first epoch."""
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path, _recipe(), run={"data": "toy"}, stop_at=1)
    return tmp_path


@pytest.mark.parametrize("changes,run,was,asks", [
    ({"sparsity": 0.75}, None, "sparsity 0.5", "sparsity 0.75"),
    ({"training": {"seed": 1, "epochs": 3}}, None, "epochs 2, seed 0", "epochs 3, seed 1"),
    ({"training": {"lr": 0.01}}, None, "lr 0.05", "lr 0.01"),
    ({"score": "l1", "incremental": {"step": 0.2}}, None, "score l2, incremental.step 0.1",
     "score l1, incremental.step 0.2"),
    ({}, {"data": "other"}, "data toy", "data other"),
])
def test_a_changed_setting_is_refused_naming_both_values(interrupted, changes, run, was, asks):
    with pytest.raises(CheckpointError) as e:
        _fit(interrupted, _recipe(**changes), resume=True, run=run or {"data": "toy"})
    path = interrupted / "last.pt"
    assert str(e.value) == f"--resume: {path} was trained with {was}; this command asks {asks}; {HINT}"


def test_the_block_cannot_change_even_with_override(interrupted):
    with pytest.raises(CheckpointError) as e:
        _fit(interrupted, _recipe(block=(8, 8)), resume=True, override=True, run={"data": "toy"})
    assert str(e.value) == (f"--resume: {interrupted / 'last.pt'} was trained with pattern 4x4; this command asks "
                            "pattern 8x8; pattern cannot change on resume (the saved masks, method state and optimizer "
                            "state depend on it): give the same values, or sparsify into another --out")


def test_override_of_the_lr_applies_from_the_resumed_epoch_and_is_recorded(interrupted, monkeypatch):
    seen = []
    train_epoch = Trainer._train_epoch

    def spy(self, opt, epoch, bar):
        seen.append((epoch, opt.param_groups[0]["lr"]))
        return train_epoch(self, opt, epoch, bar)

    monkeypatch.setattr(Trainer, "_train_epoch", spy)
    _, _, fit = _fit(interrupted, _recipe(training={"lr": 0.01}), resume=True, override=True, run={"data": "toy"})
    assert seen == [(1, 0.01)]  # not the 0.05 the saved optimizer state carries
    record = [{"epoch": 1, "changed": {"training.lr": [0.05, 0.01]}}]
    assert fit.overrides == record
    assert read_checkpoint(interrupted / "last.pt")["extra"]["overrides"] == record


def test_override_raises_one_shot_masks_to_the_new_target(interrupted):
    before = read_checkpoint(interrupted / "last.pt")["sparsifier"]["masks"]
    _, sp, fit = _fit(interrupted, _recipe(sparsity=0.75), resume=True, override=True, run={"data": "toy"})
    # balanced_rows zeroes round(s * cols) blocks per row, at most cols - 1: conv 6x4 blocks -> 3 of 4;
    # grouped (2 groups of 16 out x 12 in) 8x3 blocks -> round(2.25) = 2 of 3 (it had round(1.5) = 2 already)
    assert sp.sparsity() == {"conv": 0.75, "grouped": pytest.approx(2 / 3)}
    assert all(not (sp.masks[n] & ~before[n]).any() for n in before)  # pruned blocks stay pruned
    assert fit.overrides == [{"epoch": 1, "changed": {"sparsity": [0.5, 0.75]}}]


def test_override_cannot_lower_a_target(interrupted):
    with pytest.raises(CheckpointError) as e:
        _fit(interrupted, _recipe(sparsity=0.25), resume=True, override=True, run={"data": "toy"})
    assert str(e.value) == (f"--override: {interrupted / 'last.pt'}: the new recipe lowers the target sparsity of "
                            "layer conv 0.5 -> 0.25, grouped 0.5 -> 0.25, and pruned units stay pruned; keep or "
                            "raise the targets, or sparsify into another --out")


def test_same_settings_resume_exactly(interrupted, tmp_path_factory):
    full, _, _ = _fit(tmp_path_factory.mktemp("full"), _recipe(), run={"data": "toy"})
    resumed, _, fit = _fit(interrupted, _recipe(), resume=True, run={"data": "toy"})
    assert fit.overrides == [] and [h.epoch for h in fit.history] == [0, 1]
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("method", ["incremental", "penalty"])
def test_override_moves_finished_masks_of_every_method(tmp_path, method):
    """Interrupted after epoch 1 of 3: incremental (step 0.25) has reached 50 %, penalty (1 soft epoch)
    has hardened; both must end at the new 75 % target (conv 3 of 4 blocks per row, grouped 2 of 3)."""
    old = _recipe(method=method, incremental={"step": 0.25}, penalty={"epochs": 1}, training={"epochs": 3})
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path, old, stop_at=2)
    saved = read_checkpoint(tmp_path / "last.pt")["extra"]["method"]
    assert saved == ({"steps": {"conv": 0.25, "grouped": 0.25}, "reached": True} if method == "incremental"
                     else {"hardened": True})
    new = _recipe(method=method, sparsity=0.75, incremental={"step": 0.25}, penalty={"epochs": 1},
                  training={"epochs": 3})
    _, sp, _ = _fit(tmp_path, new, resume=True, override=True)
    assert sp.sparsity() == {"conv": 0.75, "grouped": pytest.approx(2 / 3)}
