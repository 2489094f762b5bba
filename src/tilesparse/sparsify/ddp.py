"""Training across processes (``torchrun``): what the Trainer does differently when it is one of N ranks.

    dist = init_from_env("cpu")            # None outside torchrun (or with one process)
    Trainer(..., dist=dist).fit()

``training.batch_size`` stays the *global* batch: each rank loads ``batch_size / N`` samples of it.
Every rank draws the loader's own order from its generator, seeded per epoch as for one process, and
takes every N-th sample of it (``ShardSampler``), so the N shards of step k are together the samples
one process would take at step k. Gradients are averaged by ``DistributedDataParallel``, wrapped
around the prepared model (mask parametrizations included) after the method's setup and again
whenever the parameters change (soft gates folded away). Every rank runs the method's pruning on
the same full data; rank 0's masks, weights and buffers are then broadcast, and every rank checks a
digest of its state against the others' (``check_same``) before rank 0 alone writes a checkpoint.
BatchNorm running statistics, which each rank updates from its own shard, are averaged at the end of
every epoch.
"""

from __future__ import annotations

import copy
import inspect
import os
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as tdist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Sampler

from tilesparse.errors import ConfigError, TilesparseError

__all__ = ["Distributed", "DistributedError", "ShardSampler", "init_from_env", "digests", "mismatches", "check_same",
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
    def shard_train(self, loader: Iterable) -> Any:
        """This rank's part of every global batch of ``loader``: its sampler's order (drawn on every rank
        from the same seeded generator, so the same order one process would take) split every N-th item."""
        dl = _dataloader(loader, "training")
        batch = dl.batch_size or 1
        if batch % self.world_size:
            raise ConfigError("training.batch_size", [f"the global batch {batch} does not split over "
                                                      f"{self.world_size} processes; give a multiple of "
                                                      f"{self.world_size}"])
        return _resampled(loader, ShardSampler(dl.sampler, self.rank, self.world_size), batch // self.world_size)

    def shard_eval(self, loader: Iterable | None) -> Any:
        """Every N-th sample from this rank's index on (no padding: the all-reduced counts are exact)."""
        if loader is None:
            return None
        dl = _dataloader(loader, "evaluation")
        return _resampled(loader, ShardSampler(dl.sampler, self.rank, self.world_size, pad=False), dl.batch_size)

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

    def union(self, d: Mapping[str, Any]) -> dict[str, Any]:
        """Every rank's ``d`` merged (rank 0's value first for a key in several)."""
        gathered: list[Any] = [None] * self.world_size
        tdist.all_gather_object(gathered, dict(d))
        out: dict[str, Any] = {}
        for part in gathered:
            for k, v in part.items():
                out.setdefault(k, v)
        return out

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


class ShardSampler(Sampler):
    """Rank ``rank``'s share of ``base``'s order: every ``world``-th item from ``rank`` on. With ``pad``,
    the order is first padded with its own first items to a multiple of ``world`` (every rank then takes
    as many steps; a few samples are seen twice per epoch)."""

    def __init__(self, base: Sampler, rank: int, world: int, pad: bool = True):
        self.base, self.rank, self.world, self.pad = base, rank, world, pad

    def __len__(self) -> int:
        n = len(self.base)  # type: ignore[arg-type]
        return -(-n // self.world) if self.pad else len(range(self.rank, n, self.world))

    def __iter__(self) -> Iterator[Any]:
        items = list(self.base)
        if self.pad and len(items) % self.world:
            items += (items * self.world)[: self.world - len(items) % self.world]
        return iter(items[self.rank::self.world])


def _dataloader(loader: Iterable, role: str) -> DataLoader:
    """The DataLoader of ``loader`` (itself, or a wrapper's ``.loader``, as image folders have)."""
    dl = loader if isinstance(loader, DataLoader) else getattr(loader, "loader", None)
    if not isinstance(dl, DataLoader) or dl.batch_size is None:
        raise ConfigError("data", [f"training across processes needs the {role} data as a torch DataLoader with "
                                   f"a batch size (or a wrapper of one in .loader), got {type(loader).__name__}"])
    return dl


def _resampled(loader: Any, sampler: Sampler, batch_size: int | None) -> Any:
    """``loader`` drawing from ``sampler`` in batches of ``batch_size``, its other settings kept (its
    generator too: the same object, reseeded every epoch by the Trainer); a wrapper is copied around it
    (its other fields, such as the count of skipped images, shared)."""
    dl = _dataloader(loader, "")
    opts: dict[str, Any] = {"num_workers": dl.num_workers, "collate_fn": dl.collate_fn, "pin_memory": dl.pin_memory,
                            "drop_last": dl.drop_last, "worker_init_fn": dl.worker_init_fn, "timeout": dl.timeout,
                            "generator": dl.generator}
    if dl.num_workers > 0:
        opts.update(persistent_workers=dl.persistent_workers, prefetch_factor=dl.prefetch_factor)
    new = DataLoader(dl.dataset, batch_size=batch_size, sampler=sampler, **opts)
    if loader is dl:
        return new
    shard = copy.copy(loader)
    shard.loader = new
    return shard


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
