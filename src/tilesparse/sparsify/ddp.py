"""Training across processes (``torchrun``): what the Trainer does differently when it is one of N ranks.

    dist = init_from_env("cpu")            # None outside torchrun (or with one process)
    Trainer(..., dist=dist).fit()

``training.batch_size`` stays the *global* batch: each rank loads ``batch_size / N`` samples of it
through a ``DistributedSampler`` whose permutation is seeded from (seed, epoch) as a single process
seeds its shuffling, so the N shards of step k are together the samples one process would take at
step k. Gradients are averaged by ``DistributedDataParallel``, wrapped around the prepared model
(mask parametrizations included) after the method's setup and again whenever the parameters change
(soft gates folded away). Every rank runs the method's pruning on the same full data; rank 0's masks,
weights and buffers are then broadcast, and every rank checks a digest of its state against the
others' (``check_same``) before rank 0 alone writes a checkpoint. BatchNorm running statistics,
which each rank updates from its own shard, are averaged at the end of every epoch.
"""

from __future__ import annotations

import inspect
import os
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as tdist
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler, Subset

from tilesparse.errors import ConfigError, TilesparseError

__all__ = ["Distributed", "DistributedError", "init_from_env", "digests", "mismatches", "check_same",
           "strip_nproc"]

T = TypeVar("T")
_MASK_BUFFERS = ".parametrizations."  # mask and element_mask: broadcast with the masks, never averaged


class DistributedError(TilesparseError):
    """The ranks of a distributed run disagree (or a rank failed where all must act together)."""


@dataclass
class Distributed:
    """This process's place in a torchrun job (process group already initialised)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        """Rank 0: the one that reads the checkpoint to resume from and writes every file."""
        return self.rank == 0

    # ---- data ------------------------------------------------------------------------------
    def shard_train(self, loader: Iterable, seed: int) -> DataLoader:
        """This rank's part of every global batch of ``loader`` (``set_epoch(e)`` reseeds it to ``seed + e``)."""
        dl = _dataloader(loader, "training")
        batch = dl.batch_size or 1
        if batch % self.world_size:
            raise ConfigError("training.batch_size", [f"the global batch {batch} does not split over "
                                                      f"{self.world_size} processes; give a multiple of "
                                                      f"{self.world_size}"])
        sampler = DistributedSampler(dl.dataset, self.world_size, self.rank, shuffle=_shuffles(dl), seed=seed)
        return DataLoader(dl.dataset, batch_size=batch // self.world_size, sampler=sampler,
                          num_workers=dl.num_workers, collate_fn=dl.collate_fn, pin_memory=dl.pin_memory,
                          drop_last=dl.drop_last, generator=torch.Generator().manual_seed(seed))

    def shard_eval(self, loader: Iterable | None) -> DataLoader | None:
        """Every N-th sample from this rank's index on (no padding: the all-reduced counts are exact)."""
        if loader is None:
            return None
        dl = _dataloader(loader, "evaluation")
        part = Subset(dl.dataset, range(self.rank, len(dl.dataset), self.world_size))  # type: ignore[arg-type]
        return DataLoader(part, batch_size=dl.batch_size, num_workers=dl.num_workers, collate_fn=dl.collate_fn,
                          pin_memory=dl.pin_memory)

    # ---- collectives -----------------------------------------------------------------------
    def sum(self, *values: float) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device)
        tdist.all_reduce(t)
        return t.tolist()

    @property
    def _comm_device(self) -> torch.device:
        return self.device if tdist.get_backend() == "nccl" else torch.device("cpu")

    def from_main(self, fn: Callable[[], T]) -> T:
        """``fn()`` run on rank 0 alone, its result (or its error) delivered to every rank."""
        box: list[Any] = [None]
        if self.main:
            try:
                box[0] = ("ok", fn())
            except TilesparseError as e:
                box[0] = ("error", e)
        tdist.broadcast_object_list(box, src=0)
        kind, value = box[0]
        if kind == "error":
            raise value
        return value  # type: ignore[no-any-return]

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` in DistributedDataParallel (buffers are reconciled per epoch, not per step)."""
        ids = [self.device.index] if self.device.type == "cuda" else None
        ddp = nn.parallel.DistributedDataParallel
        quiet = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(ddp).parameters \
            else "broadcast_buffers"  # the older name
        return ddp(model, device_ids=ids, **{quiet: False})

    @torch.no_grad()
    def broadcast_state(self, model: nn.Module) -> None:
        """Rank 0's parameters and buffers (masks included) on every rank."""
        for t in model.state_dict(keep_vars=True).values():
            _broadcast_(t.data, self._comm_device)

    @torch.no_grad()
    def average_buffers(self, model: nn.Module) -> None:
        """Average the floating buffers (BatchNorm running statistics) over the ranks; others from rank 0."""
        for name, buf in model.named_buffers():
            if _MASK_BUFFERS in name:
                continue
            if buf.is_floating_point():
                t = buf.to(self._comm_device)
                tdist.all_reduce(t)
                buf.copy_(t / self.world_size)
            else:
                _broadcast_(buf, self._comm_device)

    def check(self, model: nn.Module, what: str) -> None:
        """Every rank's parameters and buffers equal rank 0's, bit for bit (``DistributedError`` if not)."""
        check_same(digests(model.state_dict()), what, self)

    def barrier(self) -> None:
        tdist.barrier()

    def close(self) -> None:
        """Leave the process group once every rank is done (rank 0 may still be writing)."""
        if tdist.is_initialized():
            tdist.barrier()
            tdist.destroy_process_group()


def _broadcast_(t: Tensor, comm: torch.device) -> None:
    """In-place broadcast from rank 0 of any tensor (bool through uint8, which gloo lacks)."""
    buf = t.to(comm, torch.uint8 if t.dtype == torch.bool else t.dtype)
    tdist.broadcast(buf, src=0)
    t.copy_(buf)


def _dataloader(loader: Iterable, role: str) -> DataLoader:
    if not isinstance(loader, DataLoader) or not hasattr(loader.dataset, "__len__"):
        raise ConfigError("data", [f"training across processes needs the {role} data as a torch DataLoader over a "
                                   f"map-style dataset (one with len()), got {type(loader).__name__}"])
    return loader


def _shuffles(dl: DataLoader) -> bool:
    return isinstance(dl.sampler, torch.utils.data.RandomSampler)


def digests(tensors: Mapping[str, Tensor]) -> dict[str, int]:
    """CRC-32 of every tensor's bytes, by name: equal digests, equal tensors (bar a collision)."""
    out = {}
    for name, t in tensors.items():
        flat = t.detach().cpu().contiguous().reshape(-1)
        out[name] = zlib.crc32(flat.view(torch.uint8).numpy().data) if flat.numel() else 0
    return out


def mismatches(per_rank: list[dict[str, int]]) -> list[str]:
    """'rank R: NAME, ...' for every rank whose digests differ from rank 0's (names missing on either side too)."""
    ref = per_rank[0]
    out = []
    for r, d in enumerate(per_rank[1:], start=1):
        bad = sorted(n for n in set(ref) | set(d) if ref.get(n) != d.get(n))
        if bad:
            shown = ", ".join(bad[:5]) + (f" (+{len(bad) - 5} more)" if len(bad) > 5 else "")
            out.append(f"rank {r}: {shown}")
    return out


def check_same(local: dict[str, int], what: str, dist: Distributed) -> None:
    """All-gather every rank's digests; every rank raises ``DistributedError`` naming the ranks and tensors
    that differ from rank 0's (together, so that none is left waiting in a collective)."""
    gathered: list[Any] = [None] * dist.world_size
    tdist.all_gather_object(gathered, local)
    bad = mismatches(gathered)
    if bad:
        raise DistributedError(f"{what}: the processes disagree with rank 0 on {'; '.join(bad)}")


def init_from_env(device: torch.device | str = "cpu") -> Distributed | None:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT):
    nccl on CUDA (each rank on cuda:LOCAL_RANK), gloo otherwise. None for a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if not tdist.is_initialized():
        tdist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Distributed(rank, world, local, dev)


def strip_nproc(argv: list[str]) -> tuple[list[str], int | None]:
    """``argv`` without ``--nproc N`` / ``--nproc=N``, and N (what each launched process is given)."""
    out, n, it = [], None, iter(argv)
    for a in it:
        if a == "--nproc":
            n = int(next(it, "0"))
        elif a.startswith("--nproc="):
            n = int(a.partition("=")[2])
        else:
            out.append(a)
    return out, n
