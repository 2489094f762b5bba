"""A fine-tuning loop for users who don't bring their own: progress bar, evaluation every epoch
(top-1, top-5), the recipe's learning-rate schedule, a checkpoint after every epoch
(``<checkpoint_dir>/last.pt``, atomic) with the per-epoch records beside it (``metrics.csv``,
``metrics.jsonl``: ``sparsify.runlog``) and exact resume.

    trainer = Trainer(model, sparsifier, OneShot(), train_loader, test_loader, recipe.training)
    result = trainer.fit()            # or fit(resume=True) after an interruption

Resuming compares the run's settings (recipe, training, model, data: ``sparsify.resume``) with the
checkpoint's and refuses a difference unless ``fit(resume=True, override=True)``, which continues
with the new settings and records the override in every later checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tilesparse.errors import CheckpointError
from tilesparse.sparsify.checkpoint import load_plain_state, read_checkpoint, save_checkpoint
from tilesparse.sparsify.evaluation import evaluate_topk
from tilesparse.sparsify.methods.base import SparsityMethod, TrainContext
from tilesparse.sparsify.recipe import TrainingConfig
from tilesparse.sparsify.resume import TARGETS, check_targets, compare, override_record, run_settings, saved_settings
from tilesparse.sparsify.runlog import write_metrics
from tilesparse.sparsify.schedule import set_epoch_lr, tag_base_lr
from tilesparse.sparsify.sparsifier import Sparsifier

__all__ = ["Trainer", "FitResult", "EpochRecord", "evaluate", "LAST_CHECKPOINT"]

LAST_CHECKPOINT = "last.pt"
EPOCH_SEED_STRIDE = 100_003  # distinct (seed, epoch) pairs never share an RNG seed


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    train_loss: float
    test_accuracy: float | None
    sparsity: float  # mean block sparsity over sparsified layers
    test_top5: float | None = None  # the fields below: None in checkpoints from before they existed
    lr: float | None = None  # of the model weights' parameter group
    images_per_s: float | None = None  # training images / training time
    epoch_seconds: float | None = None  # wall time of training and evaluation


@dataclass
class FitResult:
    history: list[EpochRecord] = field(default_factory=list)
    final_accuracy: float | None = None
    overrides: list[dict[str, Any]] = field(default_factory=list)  # resume.override_record, oldest first


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device | str = "cpu") -> float:
    """Top-1 accuracy in percent (``evaluation.evaluate_topk`` gives top-5 too)."""
    return evaluate_topk(model, loader, device).top1


def _mean_sparsity(sp: Sparsifier | None) -> float:
    if sp is None:
        return 0.0
    vals = list(sp.sparsity().values())
    return sum(vals) / len(vals) if vals else 0.0


class Trainer:
    """Fine-tune a prepared model with a sparsity method (``sparsifier=None``: plain dense training).

    ``run``: settings besides the recipe that change the result (e.g. ``{"data": "digits"}``), saved
    in the checkpoint and compared on resume.
    """

    def __init__(self, model: nn.Module, sparsifier: Sparsifier | None, method: SparsityMethod | None,
                 train_loader: Iterable, test_loader: Iterable | None = None,
                 training: TrainingConfig | None = None, *, device: torch.device | str = "cpu",
                 checkpoint_dir: str | Path | None = None, model_name: str | None = None,
                 loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
                 progress: bool = True, run: dict[str, Any] | None = None):
        self.model, self.sparsifier = model, sparsifier
        self.method = method if method is not None else SparsityMethod()  # no-op: dense training
        self.train_loader, self.test_loader = train_loader, test_loader
        self.cfg = training or (sparsifier.recipe.training if sparsifier is not None else TrainingConfig())
        self.device = torch.device(device)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        if loss_fn is None:  # cross entropy, with the recipe's label smoothing
            loss_fn = partial(nn.functional.cross_entropy, label_smoothing=self.cfg.label_smoothing)
        self.model_name, self.loss_fn, self.progress = model_name, loss_fn, progress
        self.run = dict(run or {})
        self.images_seen = 0  # training images of the current epoch (its images/s)
        self.ctx = TrainContext(sparsifier, train_loader, loss_fn, self.device, self.cfg.epochs)

    def _optimizer(self) -> torch.optim.Optimizer:
        c = self.cfg
        extra = self.method.param_groups(self.ctx)
        extra_ids = {id(p) for g in extra for p in g["params"]}
        base = [p for p in self.model.parameters() if p.requires_grad and id(p) not in extra_ids]
        groups = [{"params": base}, *extra]
        if c.optimizer == "adam":
            return tag_base_lr(torch.optim.Adam(groups, lr=c.lr, weight_decay=c.weight_decay))
        return tag_base_lr(torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay))

    def _train_epoch(self, opt: torch.optim.Optimizer, epoch: int, bar: Any) -> float:
        self.model.train()
        total = n = 0.0
        for x, y in self.train_loader:
            x, y = x.to(self.device), y.to(self.device)
            loss = self.loss_fn(self.model(x), y)
            pen = self.method.penalty(self.ctx)
            full = loss if pen is None else loss + pen
            opt.zero_grad(set_to_none=True)
            full.backward()
            opt.step()
            self.method.after_optimizer_step(self.ctx)
            value = float(loss.detach())
            total, n = total + value * len(y), n + len(y)
            self.images_seen = int(n)
            if bar is not None:
                bar[0].update(bar[1], advance=1, description=f"epoch {epoch + 1}/{self.cfg.epochs} loss {value:.3f}")
        return total / max(n, 1)

    def _save(self, epoch: int, opt: torch.optim.Optimizer, result: FitResult) -> None:
        if self.checkpoint_dir is None:
            return
        extra = {"epoch": epoch, "optimizer": opt.state_dict(), "method": self.method.state_dict(),
                 "method_name": self.method.name, "history": [asdict(h) for h in result.history],
                 "training": self.cfg.model_dump(), "run": self.run, "overrides": result.overrides}
        save_checkpoint(self.checkpoint_dir / LAST_CHECKPOINT, self.model, self.sparsifier,
                        model_name=self.model_name, extra=extra)
        write_metrics(self.checkpoint_dir, result.history)  # after last.pt: never an epoch it lacks

    def _epoch_record(self, epoch: int, loss: float, lr: float, started: float) -> EpochRecord:
        """The epoch's evaluation (top-1, top-5), sparsity, learning rate and throughput."""
        trained = time.perf_counter() - started
        acc = evaluate_topk(self.model, self.test_loader, self.device) if self.test_loader is not None else None
        return EpochRecord(epoch, loss, acc.top1 if acc is not None else None, _mean_sparsity(self.sparsifier),
                           test_top5=acc.top5 if acc is not None else None, lr=lr,
                           images_per_s=self.images_seen / trained if trained > 0 else None,
                           epoch_seconds=time.perf_counter() - started)

    @property
    def settings(self) -> dict[str, Any]:
        """This run's settings as ``--resume`` compares them."""
        recipe = self.sparsifier.recipe if self.sparsifier is not None else None
        return run_settings(recipe, self.cfg, {"model": self.model_name, **self.run})

    def _resume(self, result: FitResult, override: bool) -> tuple[int, dict[str, Any], bool]:
        """(first epoch to run, optimizer state, whether settings were overridden)."""
        path = self.checkpoint_dir / LAST_CHECKPOINT if self.checkpoint_dir else None
        if path is None or not path.is_file():
            raise CheckpointError(f"cannot resume: no checkpoint at {path or '<no checkpoint_dir>'}")
        data = read_checkpoint(path)
        extra = data.get("extra", {})
        saved = saved_settings(data, str(path))
        changes = compare(saved, self.settings, str(path), override)
        if extra.get("method_name") != self.method.name:
            raise CheckpointError(f"{path}: saved by method {extra.get('method_name')!r}, "
                                  f"resuming with {self.method.name!r}")
        sp = self.sparsifier
        retarget = sp is not None and any(c.field in TARGETS for c in changes)
        if sp is not None and retarget:
            check_targets(saved, {n: layer.target for n, layer in sp.layers.items()}, str(path))
        load_plain_state(self.model, data["model_state"], str(path))
        if self.sparsifier is not None:
            self.sparsifier.load_state_dict(data["sparsifier"])
        self.method.load_state_dict(extra.get("method", {}))
        result.history = [EpochRecord(**h) for h in extra.get("history", [])]
        result.overrides = list(extra.get("overrides", []))
        start = int(extra["epoch"]) + 1
        if changes:
            result.overrides.append(override_record(changes, start))
        if retarget:
            self.method.retarget(self.ctx)  # the masks follow the new targets from this epoch on
        return start, extra["optimizer"], bool(changes)

    def _seed_epoch(self, epoch: int) -> None:
        """Seed shuffling and dropout from (seed, epoch) so a resumed run repeats the same epochs."""
        seed = self.cfg.seed * EPOCH_SEED_STRIDE + epoch
        torch.manual_seed(seed)
        gen = getattr(self.train_loader, "generator", None)
        if isinstance(gen, torch.Generator):
            gen.manual_seed(seed)

    def _restored_optimizer(self, state: dict[str, Any] | None, new_settings: bool) -> torch.optim.Optimizer:
        """The optimizer, with its saved state; with ``new_settings``, this run's lr, momentum and
        weight decay replace the saved ones (which loading the state brings back)."""
        opt = self._optimizer()
        if state is not None:
            fresh = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
            opt.load_state_dict(state)
            if new_settings:
                for group, settings in zip(opt.param_groups, fresh, strict=True):
                    group.update(settings)
        return opt

    def fit(self, resume: bool = False, override: bool = False) -> FitResult:
        """Run the epochs (from the last checkpoint if ``resume``); returns the history.

        Resuming with settings other than the checkpoint's raises ``CheckpointError`` naming them, unless
        ``override``: then the new settings apply from the first resumed epoch (lowered sparsity targets
        and fixed fields such as the block are refused even so), recorded in ``FitResult.overrides``.
        """
        from rich.progress import Progress

        self.model.to(self.device)
        result, start, opt_state, changed = FitResult(), 0, None, False
        if resume:
            start, opt_state, changed = self._resume(result, override)
        else:
            self.method.setup(self.ctx)
        opt = self._restored_optimizer(opt_state, changed)
        steps = len(self.train_loader) if hasattr(self.train_loader, "__len__") else None
        with Progress(disable=not self.progress, transient=True) as prog:
            for epoch in range(start, self.cfg.epochs):
                self._seed_epoch(epoch)
                if self.method.on_epoch_start(epoch, self.ctx):
                    opt = self._optimizer()
                if self.sparsifier is not None:
                    self.sparsifier.mask_optimizer_state(opt)  # pruned blocks lose their momentum
                lr, started, self.images_seen = set_epoch_lr(opt, self.cfg, epoch), time.perf_counter(), 0
                task = prog.add_task(f"epoch {epoch + 1}/{self.cfg.epochs}", total=steps)
                loss = self._train_epoch(opt, epoch, (prog, task) if self.progress else None)
                prog.remove_task(task)
                result.history.append(self._epoch_record(epoch, loss, lr, started))
                self._save(epoch, opt, result)
        self.method.finish(self.ctx)
        if self.test_loader is not None:
            result.final_accuracy = evaluate(self.model, self.test_loader, self.device)
        return result
