"""Training methods, the fine-tuning loop and resume."""

import math

import pytest
import torch
from _sparsify_helpers import ToyNet, toy_loaders

from tilesparse.errors import CheckpointError, ConfigError
from tilesparse.sparsify import (
    BlockSparsifier,
    Incremental,
    OneShot,
    Penalty,
    Recipe,
    TrainContext,
    Trainer,
    TrainingConfig,
    lse_penalty,
)
from tilesparse.sparsify.methods.incremental import ranked_steps


def _setup(seed=0, **kw):
    torch.manual_seed(seed)
    model = ToyNet()
    recipe = Recipe(**kw)
    return model, BlockSparsifier(recipe).prepare(model), recipe


def test_lse_penalty_hand_computed():
    g = torch.tensor([0.2, 0.9, 0.5])
    a, b, i, t = 10.0, 0.1, 0.01, 0.5
    smax = math.log(sum(math.exp(a * x) for x in (0.2, 0.9, 0.5))) / a
    smin = -math.log(sum(math.exp(-a * x) for x in (0.2, 0.9, 0.5))) / a
    ref = -(smax - smin) + b * math.sqrt(0.3 ** 2 + 0.4 ** 2 + 0.0) + i * 1.6
    assert lse_penalty(g, a, b, i, t).item() == pytest.approx(ref, rel=1e-6)
    # large alpha -> the smooth max / min approach the true max / min
    assert lse_penalty(g, 1e4, 0, 0, t).item() == pytest.approx(-(0.9 - 0.2), abs=1e-3)


def test_oneshot_reaches_target_with_each_score():
    train, _ = toy_loaders()
    for score in ("l1", "variance", "taylor", "fisher", "hessian"):
        model, sp, r = _setup(sparsity=0.5, score=score, score_batches=2, hutchinson_samples=2)
        OneShot().setup(TrainContext(sp, train))
        assert sp.sparsity() == {"conv": 0.5, "grouped": 0.5}, score


def test_gradient_score_without_data_is_rejected():
    model, sp, r = _setup(score="fisher")
    with pytest.raises(ConfigError, match="needs training data"):
        OneShot().setup(TrainContext(sp, None))


def test_incremental_schedule_is_monotone_and_reaches_target():
    train, test = toy_loaders()
    model, sp, r = _setup(sparsity=0.75, selection="layer", incremental={"step": 0.25}, allow_empty_rows=True,
                          training=TrainingConfig(epochs=4, lr=0.01))
    method = Incremental()
    seen, prev = [], None
    ctx = TrainContext(sp, train, epochs=4)
    method.setup(ctx)
    for epoch in range(4):
        method.on_epoch_start(epoch, ctx)
        masks = sp.masks
        if prev is not None:
            assert all(not (masks[n] & ~prev[n]).any() for n in masks)  # zeroed blocks stay zero
        prev = masks
        seen.append(sp.sparsity()["conv"])
    # conv: 3x2 blocks at 8x8 (24 out, 16 in); levels 0.25, 0.5, 0.75 -> round(1.5)=2, 3, round(4.5)=4 of 6
    assert seen == pytest.approx([2 / 6, 3 / 6, 4 / 6, 4 / 6])


def test_incremental_finish_forces_target():
    train, _ = toy_loaders()
    model, sp, r = _setup(sparsity=0.5, incremental={"step": 0.1, "every_epochs": 2})
    ctx = TrainContext(sp, train, epochs=1)
    m = Incremental()
    m.setup(ctx)
    m.on_epoch_start(0, ctx)
    assert sp.sparsity()["grouped"] < 0.5
    m.finish(ctx)
    assert sp.sparsity()["grouped"] == 0.5


def test_ranked_steps_by_tertile():
    traces = {"a": 5.0, "b": 1.0, "c": 3.0, "d": 9.0, "e": 0.5, "f": 7.0}
    steps = ranked_steps(traces, (0.12, 0.08, 0.05))
    assert steps == {"e": 0.12, "b": 0.12, "c": 0.08, "a": 0.08, "f": 0.05, "d": 0.05}


def test_incremental_hessian_ranked_and_unknown_layer():
    train, _ = toy_loaders()
    model, sp, r = _setup(score="hessian", incremental={"hessian_ranked_steps": True}, score_batches=1,
                          hutchinson_samples=1)
    m = Incremental()
    m.setup(TrainContext(sp, train))
    assert set(m.steps.values()) <= {0.12, 0.08, 0.05}
    model, sp, r = _setup(incremental={"layer_steps": {"nope": 0.1}})
    with pytest.raises(ConfigError, match="'nope'"):
        Incremental().setup(TrainContext(sp, train))


def test_penalty_trains_gates_then_hardens():
    train, test = toy_loaders()
    model, sp, r = _setup(method="penalty", sparsity=0.5, penalty={"epochs": 1, "gate_lr": 0.5},
                          training=TrainingConfig(epochs=2, lr=0.01))
    method = Penalty()
    Trainer(model, sp, method, train, test, r.training, progress=False).fit()
    assert not sp.gates and method.hardened
    assert sp.sparsity() == {"conv": 0.5, "grouped": 0.5}
    w = model.conv.weight  # hardened: a bitmap, exact zeros
    assert int((w.abs().sum(dim=(2, 3)) == 0).sum()) == 3 * 64


def test_penalty_gates_move_and_stay_in_unit_interval():
    train, _ = toy_loaders()
    model, sp, r = _setup(method="penalty", penalty={"gate_lr": 1.0, "iota": 0.1})
    method = Penalty()
    ctx = TrainContext(sp, train, epochs=2)
    method.setup(ctx)
    gate_ids = {id(g) for g in sp.gates.values()}
    base = [p for p in model.parameters() if id(p) not in gate_ids]  # gates go in their own group
    opt = torch.optim.SGD([{"params": base}, *method.param_groups(ctx)], lr=0.01)
    for x, y in train:
        loss = torch.nn.functional.cross_entropy(model(x), y) + method.penalty(ctx)
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.after_optimizer_step(ctx)
    gates = torch.cat([g.flatten() for g in sp.gates.values()])
    assert gates.min() >= 0 and gates.max() <= 1 and gates.min() < 1


def _fit(tmp_path, epochs, resume=False, method="incremental", stop_at=None):
    """Train ToyNet; ``stop_at``: interrupted (KeyboardInterrupt) as that epoch starts."""
    torch.manual_seed(0)
    model = ToyNet()
    train, test = toy_loaders()
    recipe = Recipe(method=method, sparsity=0.5, incremental={"step": 0.25},
                    penalty={"epochs": 2}, training=TrainingConfig(epochs=epochs, lr=0.05))
    sp = BlockSparsifier(recipe).prepare(model)
    from tilesparse.sparsify import make_method

    m = make_method(method)
    start = m.on_epoch_start

    def interrupt(epoch, ctx):
        if epoch == stop_at:
            raise KeyboardInterrupt
        return start(epoch, ctx)

    m.on_epoch_start = interrupt
    res = Trainer(model, sp, m, train, test, recipe.training, checkpoint_dir=tmp_path,
                  progress=False).fit(resume=resume)
    return model, res


@pytest.mark.parametrize("method", ["incremental", "penalty"])
def test_resume_is_exact(tmp_path, method):
    full, full_res = _fit(tmp_path / "a", 4, method=method)
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path / "b", 4, method=method, stop_at=2)  # interrupted after 2 epochs
    resumed, res = _fit(tmp_path / "b", 4, resume=True, method=method)
    assert [h.epoch for h in res.history] == [0, 1, 2, 3]
    for (n, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), n


def test_resume_without_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        _fit(tmp_path, 2, resume=True)


def test_recalibrate_batchnorm_matches_batch_statistics():
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from tilesparse.sparsify import recalibrate_batchnorm

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
    x = torch.randn(40, 3, 6, 6)
    loader = DataLoader(TensorDataset(x, torch.zeros(40)), batch_size=8)
    model.eval()
    assert recalibrate_batchnorm(model, loader) == 1
    pre = model[0](x)  # reference: per-channel mean over all conv outputs
    assert torch.allclose(model[1].running_mean, pre.mean(dim=(0, 2, 3)), atol=1e-5)
    assert not model.training and model[1].momentum == 0.1
