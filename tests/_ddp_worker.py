"""One rank of the DDP tests' training runs (launched by torchrun; see test_sparsify_ddp.py).

    python -m torch.distributed.run --nproc-per-node 2 tests/_ddp_worker.py OUT MODEL EPOCHS \
        [--kill-at STEP] [--resume] [--accumulate K]

Trains MODEL (``plain``: a BatchNorm-free CNN; ``digits_cnn``) on the first ``N_TRAIN[MODEL]`` digits with the
Trainer (``dist`` from torchrun's environment), then rank 0 saves the final plain state to OUT/final.pt.
Every rank logs the files it writes through ``save_checkpoint`` to OUT/writes-rank<R>.txt and the
digests of its masks to OUT/masks-rank<R>.json. ``--kill-at STEP``: every rank ends abruptly
(``os._exit``) after its STEP-th optimizer step, as a killed job would. ``--accumulate K``: batches of
``BATCH / K``, K of them per optimizer step (the same effective batch).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import tilesparse.sparsify.checkpoint as ckpt
from tilesparse.data.digits import load_digits_tensors
from tilesparse.models.digits import digits_cnn
from tilesparse.sparsify import Recipe, Sparsifier
from tilesparse.sparsify.ddp import digests, init_from_env
from tilesparse.sparsify.methods import make_method
from tilesparse.sparsify.recipe import TrainingConfig
from tilesparse.sparsify.trainer import Trainer

N_TRAIN = {"plain": 1344, "digits_cnn": 512}  # 42 / 16 global batches of 32: each splits evenly over 2 processes
BATCH = 32
KILLED = 17


def plain_net() -> nn.Module:
    """A digits CNN without BatchNorm (per-rank batch statistics would differ from one process's)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 4 * 4, 10))


def build(model: str, epochs: int, method: str, accumulate: int = 1):
    """(model, sparsifier, method, train loader, test loader, training config): the same in every process."""
    d = load_digits_tensors(0)
    torch.manual_seed(0)
    net = plain_net() if model == "plain" else digits_cnn()
    recipe = Recipe(pattern="8x8", sparsity=0.5, method=method, score="l1",
                    training=TrainingConfig(epochs=epochs, lr=0.05, batch_size=BATCH // accumulate, seed=3,
                                            accumulate=accumulate))
    sp = Sparsifier(recipe).prepare(net)
    gen = torch.Generator().manual_seed(3)
    n = N_TRAIN[model]
    train = DataLoader(TensorDataset(d.x_train[:n], d.y_train[:n]), batch_size=BATCH // accumulate,
                       shuffle=True,
                       generator=gen)
    test = DataLoader(TensorDataset(d.x_test, d.y_test), batch_size=100)
    return net, sp, make_method(method), train, test, recipe.training


def _log_writes(out: Path, rank: int) -> None:
    original = ckpt.atomic_torch_save

    def logged(obj, path):
        with open(out / f"writes-rank{rank}.txt", "a") as f:
            f.write(f"{Path(path).name}\n")
        return original(obj, path)

    ckpt.atomic_torch_save = logged


def _kill_at(method, step: int) -> None:
    count = [0]
    original = method.after_optimizer_step

    def counted(ctx):
        original(ctx)
        count[0] += 1
        if count[0] == step:
            os._exit(KILLED)

    method.after_optimizer_step = counted


def main(argv: list[str]) -> None:
    out, model, epochs = Path(argv[0]), argv[1], int(argv[2])
    method = "incremental" if model == "digits_cnn" else "oneshot"
    torch.set_num_threads(1)
    dist = init_from_env("cpu")
    rank = dist.rank if dist is not None else 0
    out.mkdir(parents=True, exist_ok=True)
    _log_writes(out, rank)
    k = int(argv[argv.index("--accumulate") + 1]) if "--accumulate" in argv else 1
    net, sp, meth, train, test, cfg = build(model, epochs, method, k)
    if "--kill-at" in argv:
        _kill_at(meth, int(argv[argv.index("--kill-at") + 1]))
    trainer = Trainer(net, sp, meth, train, test, cfg, checkpoint_dir=out, progress=False, dist=dist)
    result = trainer.fit(resume="--resume" in argv)
    (out / f"masks-rank{rank}.json").write_text(json.dumps(digests(sp.masks)))
    if rank == 0:
        torch.save({"state": ckpt.plain_state_dict(net), "masks": sp.masks, "accuracy": result.final_accuracy,
                    "history": [h.train_loss for h in result.history]}, out / "final.pt")
    if dist is not None:
        dist.close()


if __name__ == "__main__":
    main(sys.argv[1:])
