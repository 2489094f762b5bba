"""Mixed precision (training.amp) and gradient accumulation (training.accumulate) in the Trainer."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Subset

from tilesparse.sparsify.checkpoint import plain_state_dict, read_checkpoint
from tilesparse.sparsify.trainer import Trainer

sys.path.insert(0, str(Path(__file__).parent))
import _ddp_worker as worker  # noqa: E402

N = 256


def _run(accumulate: int = 1, amp: str = "none", epochs: int = 1, out: Path | None = None, resume: bool = False):
    torch.set_num_threads(1)
    net, sp, meth, train, test, cfg = worker.build("plain", epochs, "oneshot", accumulate)
    cfg = cfg.model_copy(update={"amp": amp})
    gen = torch.Generator().manual_seed(5)
    few = DataLoader(Subset(train.dataset, range(N)), batch_size=train.batch_size, shuffle=True, generator=gen)
    trainer = Trainer(net, sp, meth, few, None, cfg, checkpoint_dir=out, progress=False)
    return net, trainer, trainer.fit(resume=resume, override=resume)  # resume: with more epochs


def test_accumulating_two_half_batches_matches_one_full_batch():
    """Batches of 16, two per step, against batches of 32 in the same order (one generator draw
    order): the same 32 samples per step, hence the same weights up to summation order."""
    whole, _, a = _run(accumulate=1)
    halves, _, b = _run(accumulate=2)
    ref, got = plain_state_dict(whole), plain_state_dict(halves)
    assert max(float((ref[k] - got[k]).abs().max()) for k in ref) < 1e-5
    assert b.history[0].train_loss == pytest.approx(a.history[0].train_loss, rel=1e-5)


def test_a_short_last_group_is_averaged_over_its_own_batches():
    """An epoch of 3 batches of 16 with 4 per step: its one (short) step averages the 3 batches' gradients,
    as one batch of the same 48 samples would (not 3/4 of it)."""
    torch.set_num_threads(1)
    nets = []
    for batch, k in ((16, 4), (48, 1)):
        net, sp, meth, train, _, cfg = worker.build("plain", 1, "oneshot", 1)
        cfg = cfg.model_copy(update={"batch_size": batch, "accumulate": k, "momentum": 0.0})
        data = DataLoader(Subset(train.dataset, range(48)), batch_size=batch)
        Trainer(net, sp, meth, data, None, cfg, progress=False).fit()
        nets.append(plain_state_dict(net))
    assert max(float((nets[0][k] - nets[1][k]).abs().max()) for k in nets[0]) < 1e-6


def test_bf16_autocast_runs_the_forward_in_bf16_and_keeps_fp32_weights():
    seen = []
    torch.set_num_threads(1)
    net, sp, meth, train, _, cfg = worker.build("plain", 1, "oneshot")
    net[2].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    cfg = cfg.model_copy(update={"amp": "bf16"})
    few = DataLoader(Subset(train.dataset, range(64)), batch_size=32)
    fit = Trainer(net, sp, meth, few, few, cfg, progress=False).fit()
    assert set(seen[:2]) == {torch.bfloat16}  # the two training steps
    assert seen[-1] == torch.float32  # evaluation stays in float32
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert torch.isfinite(torch.tensor(fit.history[0].train_loss))


def test_fp16_loss_scaler_state_is_checkpointed_and_resumed(tmp_path):
    """The GradScaler's scale is part of last.pt; resuming with it gives the uninterrupted weights."""
    whole, _, _ = _run(amp="fp16", epochs=2)
    _run(amp="fp16", epochs=1, out=tmp_path)
    scaler = read_checkpoint(tmp_path / "last.pt")["extra"]["amp_scaler"]
    assert scaler["scale"] > 0
    resumed, trainer, _ = _run(amp="fp16", epochs=2, out=tmp_path, resume=True)
    assert trainer.precision.scaler is not None
    ref, got = plain_state_dict(whole), plain_state_dict(resumed)
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_cli_flags_reach_the_recipe_and_are_named_when_wrong(tmp_path):
    from typer.testing import CliRunner

    from tilesparse.cli.main import app

    runner = CliRunner()
    out = tmp_path / "run"
    r = runner.invoke(app, ["sparsify", "digits_cnn", "--epochs", "0", "--amp", "bf16", "--accumulate", "2",
                            "--threads", "1", "-o", str(out)])
    assert r.exit_code == 0, r.output
    text = (out / "recipe.yaml").read_text()
    assert "amp: bf16" in text and "accumulate: 2" in text
    r = runner.invoke(app, ["sparsify", "digits_cnn", "--epochs", "0", "--amp", "fp32", "-o", str(tmp_path / "x")])
    assert r.exit_code != 0
    assert "--amp" in str(r.exception) + r.output
