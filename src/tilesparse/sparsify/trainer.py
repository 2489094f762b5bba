"""A fine-tuning loop for users who don't bring their own: progress bar, evaluation every epoch
(top-1, top-5), the recipe's learning-rate schedule, a checkpoint after every epoch
(``<checkpoint_dir>/last.pt``, atomic) with the per-epoch records beside it (``metrics.csv``,
``metrics.jsonl``: ``sparsify.runlog``) and exact resume.

    trainer = Trainer(model, sparsifier, OneShot(), train_loader, test_loader, recipe.training)
    result = trainer.fit()            # or fit(resume=True) after an interruption

Resuming compares the run's settings (recipe, training, model, data: ``sparsify.resume``) with the
checkpoint's and refuses a difference unless ``fit(resume=True, override=True)``, which continues
with the new settings and records the override in every later checkpoint.

``training.amp`` runs the forward pass under autocast (``sparsify.precision``); ``training.accumulate``
sums the gradients of that many batches before each optimizer step. Given ``dist`` (one rank of a
torchrun job, ``sparsify.ddp``), the model trains in DistributedDataParallel on this rank's shard of
every batch and rank 0 alone writes checkpoints.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tilesparse.errors import CheckpointError
from tilesparse.sparsify.checkpoint import load_plain_state, read_checkpoint, save_checkpoint
from tilesparse.sparsify.ddp import Distributed
from tilesparse.sparsify.evaluation import Accuracy, evaluate_topk
from tilesparse.sparsify.methods.base import SparsityMethod, TrainContext
from tilesparse.sparsify.precision import Precision
from tilesparse.sparsify.recipe import TrainingConfig
from tilesparse.sparsify.resume import TARGETS, check_targets, compare, override_record, run_settings, saved_settings
from tilesparse.sparsify.runlog import write_metrics
from tilesparse.sparsify.schedule import set_epoch_lr, tag_base_lr
from tilesparse.sparsify.sparsifier import Sparsifier

__all__ = ["Trainer", "FitResult", "EpochRecord", "evaluate", "LAST_CHECKPOINT"]

LAST_CHECKPOINT = "last.pt"
EPOCH_SEED_STRIDE = 100_003  # distinct (seed, epoch) pairs never share an RNG seed
RANK_SEED_SHIFT = 40  # rank r adds r << 40 to its dropout seed: ranks draw different dropout masks


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
def evaluate(model: nn.Module, loader: Iterable, device: torch.device | str = "cpu",
             dist: Distributed | None = None) -> float:
    """Top-1 accuracy in percent (``evaluation.evaluate_topk`` gives top-5 too; ``dist``: over every
    rank's shard of the data)."""
    return accuracy(model, loader, device, dist).top1


def accuracy(model: nn.Module, loader: Iterable, device: torch.device | str = "cpu",
             dist: Distributed | None = None) -> Accuracy:
    """Top-1 and top-5 accuracy; across processes, of the counts summed over the ranks' shards."""
    acc = evaluate_topk(model, loader, device)
    if dist is None:
        return acc
    hits = [round(a * acc.samples / 100.0) for a in (acc.top1, acc.top5)]
    c1, c5, n = dist.sum(hits[0], hits[1], acc.samples)
    return Accuracy(100.0 * c1 / max(n, 1), 100.0 * c5 / max(n, 1), int(n))


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
                 progress: bool = True, run: dict[str, Any] | None = None, dist: Distributed | None = None):
        self.model, self.sparsifier, self.net = model, sparsifier, model  # net: what trains (DDP-wrapped)
        self.method = method if method is not None else SparsityMethod()  # no-op: dense training
        self.cfg = training or (sparsifier.recipe.training if sparsifier is not None else TrainingConfig())
        self.dist, self.full_loader = dist, train_loader  # pruning reads the full data on every rank
        if dist is not None:
            train_loader = dist.shard_train(train_loader) if self.cfg.epochs else train_loader
            test_loader = dist.shard_eval(test_loader)
        self.train_loader, self.test_loader = train_loader, test_loader
        self.device = torch.device(device)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        if loss_fn is None:  # cross entropy, with the recipe's label smoothing
            loss_fn = partial(nn.functional.cross_entropy, label_smoothing=self.cfg.label_smoothing)
        self.model_name, self.loss_fn = model_name, loss_fn
        self.progress = progress and (dist is None or dist.main)
        self.run = dict(run or {})
        self.images_seen = 0  # training images of the current epoch, all processes (its images/s)
        self.precision = Precision(self.cfg.amp, self.device)
        self.ctx = TrainContext(sparsifier, train_loader if dist is None else self.full_loader, loss_fn,
                                self.device, self.cfg.epochs)

    def _optimizer(self) -> torch.optim.Optimizer:
        c = self.cfg
        extra = self.method.param_groups(self.ctx)
        extra_ids = {id(p) for g in extra for p in g["params"]}
        base = [p for p in self.model.parameters() if p.requires_grad and id(p) not in extra_ids]
        groups = [{"params": base}, *extra]
        if c.optimizer == "adam":
            return tag_base_lr(torch.optim.Adam(groups, lr=c.lr, weight_decay=c.weight_decay))
        return tag_base_lr(torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay))

    def _micro_batch(self, x: Tensor, y: Tensor, group: int, sync: bool) -> float:
        """Forward and backward of one batch, its loss (and penalty) divided by the ``group`` of batches
        summed into the next optimizer step; DDP averages gradients over the ranks only when ``sync``."""
        x, y = x.to(self.device), y.to(self.device)
        quiet = not sync and isinstance(self.net, nn.parallel.DistributedDataParallel)
        with self.net.no_sync() if quiet else nullcontext():  # type: ignore[operator]
            with self.precision.autocast():
                loss = self.loss_fn(self.net(x), y)
            pen = self.method.penalty(self.ctx)
            full = loss if pen is None else loss + pen
            self.precision.backward(full / group)
        return float(loss.detach())

    def _step(self, opt: torch.optim.Optimizer) -> None:
        self.precision.step(opt)
        self.method.after_optimizer_step(self.ctx)
        opt.zero_grad(set_to_none=True)

    def _train_epoch(self, opt: torch.optim.Optimizer, epoch: int, bar: Any) -> float:
        self.net.train()
        k = self.cfg.accumulate
        steps = len(self.train_loader) if hasattr(self.train_loader, "__len__") else None
        total = n = 0.0
        pending = 0  # batches whose gradients wait for an optimizer step
        opt.zero_grad(set_to_none=True)
        for i, (x, y) in enumerate(self.train_loader):
            last = (i + 1) % k == 0 or i + 1 == steps
            group = k if steps is None else min(k, steps - i // k * k)  # the epoch's last group may be short
            value = self._micro_batch(x, y, group, sync=last)
            pending += 1
            if last:
                self._step(opt)
                pending = 0
            total, n = total + value * len(y), n + len(y)
            if bar is not None:
                bar[0].update(bar[1], advance=1, description=f"epoch {epoch + 1}/{self.cfg.epochs} loss {value:.3f}")
        if pending:  # a loader without len() ended inside a group
            self._step(opt)
        if self.dist is not None:
            total, n = self.dist.sum(total, n)
        self.images_seen = int(n)
        return total / max(n, 1)

    def _save(self, epoch: int, opt: torch.optim.Optimizer, result: FitResult) -> None:
        if self.checkpoint_dir is None or (self.dist is not None and not self.dist.main):
            return
        extra = {"epoch": epoch, "optimizer": opt.state_dict(), "method": self.method.state_dict(),
                 "method_name": self.method.name, "history": [asdict(h) for h in result.history],
                 "training": self.cfg.model_dump(), "run": self.run, "overrides": result.overrides,
                 "amp_scaler": self.precision.state_dict(),
                 "processes": self.dist.world_size if self.dist is not None else 1}
        save_checkpoint(self.checkpoint_dir / LAST_CHECKPOINT, self.model, self.sparsifier,
                        model_name=self.model_name, extra=extra)
        write_metrics(self.checkpoint_dir, result.history)  # after last.pt: never an epoch it lacks

    def _epoch_record(self, epoch: int, loss: float, lr: float, started: float) -> EpochRecord:
        """The epoch's evaluation (top-1, top-5), sparsity, learning rate and throughput."""
        trained = time.perf_counter() - started
        acc = accuracy(self.model, self.test_loader, self.device, self.dist) if self.test_loader is not None else None
        return EpochRecord(epoch, loss, acc.top1 if acc is not None else None, _mean_sparsity(self.sparsifier),
                           test_top5=acc.top5 if acc is not None else None, lr=lr,
                           images_per_s=self.images_seen / trained if trained > 0 else None,
                           epoch_seconds=time.perf_counter() - started)

    @property
    def settings(self) -> dict[str, Any]:
        """This run's settings as ``--resume`` compares them."""
        recipe = self.sparsifier.recipe if self.sparsifier is not None else None
        return run_settings(recipe, self.cfg, {"model": self.model_name, **self.run})

    def _read_last(self) -> tuple[dict[str, Any], Path]:
        """The checkpoint to resume from, as rank 0 reads it (every rank gets rank 0's copy)."""
        path = self.checkpoint_dir / LAST_CHECKPOINT if self.checkpoint_dir else None

        def read() -> dict[str, Any]:
            if path is None or not path.is_file():
                raise CheckpointError(f"cannot resume: no checkpoint at {path or '<no checkpoint_dir>'}")
            return read_checkpoint(path)

        data = read() if self.dist is None else self.dist.from_main(read)
        assert path is not None
        return data, path

    def _resume(self, result: FitResult, override: bool) -> tuple[int, dict[str, Any], bool]:
        """(first epoch to run, optimizer state, whether settings were overridden)."""
        data, path = self._read_last()
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
        self.precision.load_state_dict(extra.get("amp_scaler", {}))
        result.history = [EpochRecord(**h) for h in extra.get("history", [])]
        result.overrides = list(extra.get("overrides", []))
        start = int(extra["epoch"]) + 1
        if changes:
            result.overrides.append(override_record(changes, start))
        if retarget:
            self.method.retarget(self.ctx)  # the masks follow the new targets from this epoch on
        return start, extra["optimizer"], bool(changes)

    def _seed_epoch(self, epoch: int) -> None:
        """Seed shuffling and dropout from (seed, epoch) so a resumed run repeats the same epochs
        (across processes: the same shuffle on every rank, each rank its own dropout)."""
        seed = self.cfg.seed * EPOCH_SEED_STRIDE + epoch
        torch.manual_seed(seed + ((self.dist.rank if self.dist is not None else 0) << RANK_SEED_SHIFT))
        for loader in (self.train_loader, self.full_loader):  # across processes: one generator, both loaders
            gen = getattr(loader, "generator", None)
            if isinstance(gen, torch.Generator):
                gen.manual_seed(seed)

    def _sync(self, what: str, rewrap: bool = True) -> None:
        """Across processes: rank 0's masks, weights and buffers on every rank (pruning may have
        changed them), checked, and the model (re)wrapped in DDP if its parameters changed."""
        if self.dist is None:
            return
        self.dist.broadcast_state(self.model)
        self.dist.check(self.model, what)
        if rewrap:
            self.net = self.dist.wrap(self.model)

    def _reconcile(self, epoch: int) -> None:
        """Across processes, average the BatchNorm statistics and check that every rank holds the
        same state (before the evaluation and the checkpoint)."""
        if self.dist is not None:
            self.dist.average_buffers(self.model)
            self.dist.check(self.model, f"end of epoch {epoch + 1}")

    def _evaluate(self) -> float | None:
        if self.test_loader is None:
            return None
        return evaluate(self.model, self.test_loader, self.device, self.dist)

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
        self._sync("masks after the method's setup")
        opt = self._restored_optimizer(opt_state, changed)
        steps = len(self.train_loader) if hasattr(self.train_loader, "__len__") else None
        with Progress(disable=not self.progress, transient=True) as prog:
            for epoch in range(start, self.cfg.epochs):
                self._seed_epoch(epoch)
                rebuild = self.method.on_epoch_start(epoch, self.ctx)
                self._sync(f"masks at the start of epoch {epoch + 1}", rewrap=rebuild)
                if rebuild:
                    opt = self._optimizer()
                if self.sparsifier is not None:
                    self.sparsifier.mask_optimizer_state(opt)  # pruned blocks lose their momentum
                lr, started, self.images_seen = set_epoch_lr(opt, self.cfg, epoch), time.perf_counter(), 0
                task = prog.add_task(f"epoch {epoch + 1}/{self.cfg.epochs}", total=steps)
                loss = self._train_epoch(opt, epoch, (prog, task) if self.progress else None)
                prog.remove_task(task)
                self._reconcile(epoch)
                result.history.append(self._epoch_record(epoch, loss, lr, started))
                self._save(epoch, opt, result)
        self.method.finish(self.ctx)
        self._sync("the final masks", rewrap=False)
        result.final_accuracy = self._evaluate()
        return result
