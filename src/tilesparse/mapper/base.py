"""What every mapper shares: the budgeted, batched evaluator and the search result."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from tilesparse.costmodel.mapping import Invalid, Mapping, MappingBatch, check_batch
from tilesparse.costmodel.model import (
    Breakdown,
    SparseSpec,
    evaluate,
    evaluate_batch,
    objective_values,
)
from tilesparse.errors import ConfigError, TilesparseError
from tilesparse.mapper.space import Genomes, MapSpace

__all__ = ["Evaluator", "NoValidMappingError", "SearchResult"]

TOP_K = 8  # best distinct mappings kept for warm start replay


class NoValidMappingError(TilesparseError):
    """The search found no valid mapping within its budget."""


@dataclass
class SearchResult:
    mapper: str
    mapping: Mapping
    value: float
    breakdown: Breakdown
    history: np.ndarray  # best-so-far objective after each evaluation
    n_evals: int
    n_valid: int
    seconds: float
    top: list[Mapping] = field(default_factory=list)

    def evals_to_reach(self, target: float) -> int | None:
        """Evaluations needed until the best-so-far is <= target (None if never)."""
        hit = np.flatnonzero(self.history <= target)
        return int(hit[0]) + 1 if hit.size else None


class Evaluator:
    """Counts evaluations against a budget, keeps the best valid mapping and the history.

    With several ``sparse`` specs the objective is their geometric mean (sparsity-aware search:
    a mapping must be good across densities)."""

    def __init__(self, space: MapSpace, objective: str = "edp",
                 sparse: SparseSpec | Sequence[SparseSpec] | None = None, budget: int = 10_000,
                 progress: bool = False, desc: str = "mapping"):
        if budget < 1:
            raise ConfigError("budget", [f"the evaluation budget must be >= 1, got {budget}"])
        if objective not in ("latency", "energy", "edp"):
            raise ConfigError("objective", [f"expected latency, energy or edp, got {objective!r}"])
        self.space, self.objective, self.budget = space, objective, budget
        specs = [sparse] if sparse is None or isinstance(sparse, SparseSpec) else list(sparse)
        self.specs = specs or [None]
        self.n_evals = self.n_valid = 0
        self.best_value = np.inf
        self.best: Mapping | None = None
        self._hist: list[np.ndarray] = []
        self._top: list[tuple[float, Mapping]] = []
        self._t0 = time.perf_counter()
        self._bar = _Bar(budget, desc, progress)

    @property
    def remaining(self) -> int:
        return self.budget - self.n_evals

    @property
    def exhausted(self) -> bool:
        return self.n_evals >= self.budget

    def values(self, batch: MappingBatch) -> np.ndarray:
        """Objective of each mapping (inf if invalid), without counting or recording."""
        ok = check_batch(self.space.problem, self.space.arch, batch) == Invalid.OK
        vals = np.full(len(batch), np.inf)
        if ok.any():
            sub = batch.take(ok)
            logs = [np.log(objective_values(evaluate_batch(self.space.problem, self.space.arch, sub, s),
                                            self.objective)) for s in self.specs]
            vals[ok] = np.exp(np.mean(logs, axis=0))
        return vals

    def __call__(self, g: Genomes | MappingBatch) -> np.ndarray:
        """Evaluate up to the remaining budget; mappings beyond it get inf."""
        batch = self.space.decode(g) if isinstance(g, Genomes) else g
        n = min(len(batch), self.remaining)
        vals = np.full(len(batch), np.inf)
        if n <= 0:
            return vals
        head = batch.take(slice(0, n))
        vals[:n] = self.values(head)
        fin = np.isfinite(vals[:n])
        self.n_valid += int(fin.sum())
        i = int(np.argmin(vals[:n]))
        if vals[i] < self.best_value:
            self.best_value, self.best = float(vals[i]), head[i]
        self._record_top(head, vals[:n])
        prev = self._hist[-1][-1] if self._hist else np.inf
        self._hist.append(np.minimum.accumulate(np.concatenate([[prev], vals[:n]]))[1:])
        self.n_evals += n
        self._bar.advance(n, self.best_value)
        return vals

    def _record_top(self, batch: MappingBatch, vals: np.ndarray) -> None:
        cand = [(float(vals[i]), batch[int(i)]) for i in np.argsort(vals)[:TOP_K] if np.isfinite(vals[i])]
        merged = sorted(self._top + cand, key=lambda t: t[0])
        seen, self._top = set(), []
        for v, m in merged:
            if m not in seen and len(self._top) < TOP_K:
                seen.add(m)
                self._top.append((v, m))

    def result(self, mapper: str) -> SearchResult:
        self._bar.close()
        if self.best is None:
            raise NoValidMappingError(
                f"{self.space.problem.name} on {self.space.arch.name}: {mapper} found no valid "
                f"mapping in {self.n_evals} evaluations (every tile too large for a level?)")
        hist = np.concatenate(self._hist) if self._hist else np.array([])
        bd = evaluate(self.space.problem, self.space.arch, self.best, self.specs[0])
        return SearchResult(mapper, self.best, self.best_value, bd, hist, self.n_evals, self.n_valid,
                            time.perf_counter() - self._t0, [m for _, m in self._top])



class _Bar:
    """A rich progress bar over evaluations (disabled -> no output)."""

    def __init__(self, total: int, desc: str, enabled: bool):
        self.progress = None
        if enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("best {task.fields[best]}"), TimeElapsedColumn(),
                                     transient=True)
            self.progress.start()
            self.task = self.progress.add_task(desc, total=total, best="-")

    def advance(self, n: int, best: float) -> None:
        if self.progress is not None:
            self.progress.update(self.task, advance=n, best=f"{best:.4g}")

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
