"""Accuracy study: density x pattern x method x seed on digits and on procedural shapes.

    python benchmarks/accuracy_study.py            # the full sweep (resumable: rerun to continue)
    python benchmarks/accuracy_study.py --datasets shapes-w32   # only some datasets' points
    python benchmarks/accuracy_study.py --quick    # a tiny smoke version (own files, *_quick.*)
    python benchmarks/accuracy_study.py --render   # table and plot from the saved .jsonl only

Per (dataset, seed) one dense model is trained first; every sparse run starts from a copy of it with
the same fine-tuning budget. Datasets: digits (the digits CNN), shapes (``tilesparse.data.shapes``
with the CNN at half width, as ``shapes_cnn``) and shapes-w32 (full width: finer 8x8 block grids).
Patterns: 8x8 blocks, N:M at the matching density (2:4, 1:4, 1:8, 1:16), HSS 8x8 blocks with 2:4
inside, unstructured and whole input channels; methods: one-shot + fine-tune and incremental (cubic
schedule). Extra points without any training: TASD (each sparsified conv
replaced by its best greedy sum of N:M terms at the density budget) and SDQ (an int8 N:M outlier
part plus a dense int4 part). Every finished run is appended to benchmarks/results/accuracy_study.jsonl;
runs already there are skipped on restart. Writes accuracy_study.md and accuracy_study.png.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tilesparse.patterns import NM
from tilesparse.patterns.decompose import search_terms
from tilesparse.quant.sdq import sdq
from tilesparse.sparsify import Recipe, Sparsifier, Trainer, TrainingConfig, evaluate, find_layers, make_method
from tilesparse.sparsify.calibration import recalibrate_batchnorm

RESULTS = Path(__file__).parent / "results"
SPARSITIES = (0.5, 0.75, 0.875, 0.9375)
METHODS = ("oneshot", "incremental")
SEEDS = (0, 1, 2)
DATASETS = ("digits", "shapes", "shapes-w32")
PRUNE_STEPS = 3  # incremental: cubic schedule reaching the target after this many pruning steps, one per epoch
BN_BATCHES = 16  # BatchNorm re-estimation after pruning (the library's default)

# pattern label -> spec at each sparsity (None: the pattern has no form at that density)
NM_AT = {0.5: "2:4", 0.75: "1:4", 0.875: "1:8", 0.9375: "1:16"}
HSS_AT = {0.75: "8x8@0.5/2:4", 0.875: "8x8@0.75/2:4", 0.9375: "8x8@0.875/2:4"}
PATTERNS: dict[str, Callable[[float], str | None]] = {
    "8x8 blocks": lambda s: "8x8",
    "N:M": NM_AT.get,
    "HSS 8x8/2:4": HSS_AT.get,
    "unstructured": lambda s: "unstructured",
    "channel": lambda s: "channel",
}
SDQ_PARTS = {"SDQ 1:4 int8 + int4": NM(1, 4), "SDQ 1:8 int8 + int4": NM(1, 8)}


@dataclass(frozen=True)
class Rules:
    """Everything that fixes a dataset's runs (stated in the report's header)."""

    dataset: str
    model: str
    width: int
    n_train: int | None  # None: the dataset's own split
    n_test: int | None
    dense_epochs: int
    dense_lr: float
    epochs: int  # sparse fine-tuning budget, both methods
    lr: float = 0.01
    batch_size: int = 64
    methods: tuple[str, ...] = METHODS


FULL_RULES = {
    "digits": Rules("digits", "digits CNN (convs 32-32-64-64)", 32, None, None, dense_epochs=15, dense_lr=0.05,
                    epochs=4),
    "shapes": Rules("shapes", "digits CNN (convs 16-16-32-32), 18 classes", 16, 3600, 1800, dense_epochs=16,
                    dense_lr=0.05, epochs=4),
    # twice as wide: finer 8x8 block grids, so blocks get closer to the high targets (balanced rows keep >= 1 per row)
    "shapes-w32": Rules("shapes-w32", "digits CNN (convs 32-32-64-64), 18 classes", 32, 3600, 1800,
                        dense_epochs=16, dense_lr=0.05, epochs=4),
}
QUICK_RULES = {
    "digits": Rules("digits", "digits CNN (convs 32-32-64-64)", 32, None, None, dense_epochs=2, dense_lr=0.05,
                    epochs=1),
    "shapes": Rules("shapes", "digits CNN (convs 16-16-32-32), 18 classes", 16, 360, 180, dense_epochs=2,
                    dense_lr=0.05, epochs=1),
}


@dataclass(frozen=True)
class Run:
    """One point of the sweep; ``key`` identifies it in the .jsonl."""

    dataset: str
    kind: str  # dense | train | tasd | sdq
    pattern: str
    sparsity: float
    method: str
    seed: int

    @property
    def key(self) -> str:
        return f"{self.dataset}|{self.kind}|{self.pattern}|{self.sparsity:g}|{self.method}|{self.seed}"


@dataclass
class Study:
    rules: dict[str, Rules]
    seeds: tuple[int, ...] = SEEDS
    sparsities: tuple[float, ...] = SPARSITIES
    patterns: tuple[str, ...] = tuple(PATTERNS)
    extras: bool = True  # TASD and SDQ points
    runs: list[Run] = field(default_factory=list)

    def plan(self) -> list[Run]:
        out = []
        for ds, rules in self.rules.items():
            for seed in self.seeds:
                out.append(Run(ds, "dense", "dense", 0.0, "dense", seed))
                for method in rules.methods:
                    for pat in self.patterns:
                        out += [Run(ds, "train", pat, s, method, seed) for s in self.sparsities if PATTERNS[pat](s)]
                if self.extras:
                    out += [Run(ds, "tasd", "TASD N:M terms", s, "none", seed) for s in self.sparsities]
                    out += [Run(ds, "sdq", name, 0.0, "none", seed) for name in SDQ_PARTS]
        return out


# ---- data and models -----------------------------------------------------------------------------

def loaders(rules: Rules, seed: int) -> tuple[Any, Any]:
    """(train, test) loaders of the dataset, sliced to the rules' sizes."""
    from torch.utils.data import DataLoader, TensorDataset

    if not rules.dataset.startswith("shapes"):
        from tilesparse.data.digits import load_digits_tensors

        d = load_digits_tensors(seed)
        xs = (d.x_train, d.y_train, d.x_test, d.y_test)
    else:
        from tilesparse.data.shapes import load_shapes_tensors

        s = load_shapes_tensors(rules.n_train or 12_600, rules.n_test or 3_060)  # exact sizes: balanced classes
        xs = (s.x_train, s.y_train, s.x_test, s.y_test)
    x_tr, y_tr, x_te, y_te = xs
    if rules.n_train is not None:
        x_tr, y_tr = x_tr[:rules.n_train], y_tr[:rules.n_train]
    if rules.n_test is not None:
        x_te, y_te = x_te[:rules.n_test], y_te[:rules.n_test]
    gen = torch.Generator().manual_seed(seed)
    train = DataLoader(TensorDataset(x_tr, y_tr), batch_size=rules.batch_size, shuffle=True, generator=gen)
    return train, DataLoader(TensorDataset(x_te, y_te), batch_size=512)


def new_model(rules: Rules, seed: int) -> nn.Module:
    from tilesparse.models.digits import DigitsCNN

    torch.manual_seed(seed)
    return DigitsCNN(num_classes=18 if rules.dataset.startswith("shapes") else 10, width=rules.width)


def train_dense(rules: Rules, seed: int, data: tuple[Any, Any]) -> tuple[nn.Module, float]:
    """``dense_epochs`` at ``dense_lr``, then ``epochs`` at the fine-tuning ``lr``: the sparse runs start
    from a model that has already had the low learning rate, so fine-tuning is not credited to sparsity."""
    model = new_model(rules, seed)
    fit = None
    for epochs, lr, s in ((rules.dense_epochs, rules.dense_lr, seed), (rules.epochs, rules.lr, seed + 1000)):
        cfg = TrainingConfig(epochs=epochs, lr=lr, batch_size=rules.batch_size, seed=s)
        fit = Trainer(model, None, None, data[0], data[1], cfg, progress=False).fit()
    assert fit is not None
    return model, float(fit.final_accuracy)


# ---- one sparse run ------------------------------------------------------------------------------

def recipe_for(pattern: str, sparsity: float, method: str, rules: Rules, seed: int) -> Recipe:
    spec = PATTERNS[pattern](sparsity)
    if spec is None:
        raise ValueError(f"pattern {pattern} has no form at sparsity {sparsity}")
    return Recipe(pattern=spec, sparsity=sparsity, method=method, bn_recalibration_batches=BN_BATCHES,
                  incremental={"schedule": "cubic", "every_epochs": 1, "step": sparsity / PRUNE_STEPS},
                  training=TrainingConfig(epochs=rules.epochs, lr=rules.lr, batch_size=rules.batch_size, seed=seed))


def weight_sparsity(sp: Sparsifier) -> float:
    """Zero weights / all weights over the sparsified layers (what the density axis means)."""
    zeros = sum(float((1 - la.param.element_mask).sum()) for la in sp.layers.values())
    total = sum(la.param.element_mask.numel() for la in sp.layers.values())
    return zeros / max(total, 1)


def train_sparse(dense: nn.Module, recipe: Recipe, data: tuple[Any, Any]) -> tuple[dict[str, Any], Sparsifier]:
    """Fine-tune a copy of ``dense`` under ``recipe`` (the wiring of ``sparsify_model``); returns the
    record's measured fields and the sparsifier (masks still attached)."""
    model = copy.deepcopy(dense)
    sp = Sparsifier(recipe).prepare(model)
    fit = Trainer(model, sp, make_method(recipe.method), data[0], data[1], recipe.training, progress=False).fit()
    return {"accuracy": float(fit.final_accuracy), "achieved_sparsity": weight_sparsity(sp),
            "spec": recipe.pattern, "layers": len(sp.layers)}, sp


# ---- no-training extra points --------------------------------------------------------------------

def _eligible_convs(model: nn.Module) -> dict[str, nn.Module]:
    """The layers the sparse runs sparsify (first conv and classifier stay dense)."""
    return find_layers(model, Recipe(pattern="1:16"))[0]


@torch.no_grad()
def _replaced(dense: nn.Module, make: Callable[[torch.Tensor, int], torch.Tensor]) -> tuple[nn.Module, float]:
    model = copy.deepcopy(dense)
    zeros = total = 0
    for m in _eligible_convs(model).values():
        w = make(m.weight.detach(), m.groups)
        m.weight.copy_(w.to(m.weight.dtype))
        zeros, total = zeros + int((w == 0).sum()), total + w.numel()
    return model, zeros / max(total, 1)


def tasd_point(dense: nn.Module, sparsity: float, data: tuple[Any, Any]) -> dict[str, Any]:
    """Every eligible conv -> its best sum of up to 3 N:M terms within density 1 - sparsity; no training.
    Accuracy as is, and after BatchNorm re-estimation (no weight changes)."""
    terms: list[str] = []
    errors: list[float] = []

    def make(w: torch.Tensor, groups: int) -> torch.Tensor:
        d = search_terms(w, 1.0 - sparsity, groups=groups)
        terms.append("+".join(p.spec() for p in d.patterns))
        errors.append(d.relative_error(w))
        return d.approximation

    model, zeros = _replaced(dense, make)
    return _two_accuracies(model, data) | {"achieved_sparsity": zeros, "terms": terms, "rel_errors": errors}


def sdq_point(dense: nn.Module, name: str, data: tuple[Any, Any]) -> dict[str, Any]:
    """Every eligible conv -> its SDQ parts (int8 outliers on the N:M pattern + dense int4), dequantized."""
    errors: list[float] = []

    def make(w: torch.Tensor, groups: int) -> torch.Tensor:
        q = torch.from_numpy(sdq(w, SDQ_PARTS[name], sparse_bits=8, dense_bits=4, groups=groups).dequantized())
        errors.append(float((w.double() - q).norm() / w.double().norm()))
        return q

    model, _ = _replaced(dense, make)
    return _two_accuracies(model, data) | {"achieved_sparsity": 0.0, "rel_errors": errors}


def _two_accuracies(model: nn.Module, data: tuple[Any, Any]) -> dict[str, float]:
    plain = evaluate(model, data[1])
    recalibrate_batchnorm(model, data[0], "cpu", BN_BATCHES)
    return {"accuracy": plain, "accuracy_bn": evaluate(model, data[1])}


# ---- the sweep -----------------------------------------------------------------------------------

def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Finished runs; a last line cut short (interrupted while writing) is dropped: that run runs again."""
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    out = []
    for i, line in enumerate(lines):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i != len(lines) - 1:
                raise
    return out


def execute(run: Run, rules: Rules, dense: nn.Module, dense_acc: float, data: tuple[Any, Any]) -> dict[str, Any]:
    """Run one non-dense point; returns its full record."""
    t0 = time.perf_counter()
    if run.kind == "train":
        fields, _ = train_sparse(dense, recipe_for(run.pattern, run.sparsity, run.method, rules, run.seed), data)
    elif run.kind == "tasd":
        fields = tasd_point(dense, run.sparsity, data)
    else:
        fields = sdq_point(dense, run.pattern, data)
    return {**asdict(run), "key": run.key, "dense_accuracy": dense_acc, **fields,
            "seconds": time.perf_counter() - t0, "rules": asdict(rules)}


def sweep(study: Study, out: Path, models_dir: Path, progress: bool = True) -> list[dict[str, Any]]:
    """Run every planned point not yet in ``out``, appending one JSON line per finished run."""
    done = {r["key"]: r for r in read_jsonl(out)}
    plan = study.plan()
    todo = [r for r in plan if r.key not in done]
    out.parent.mkdir(parents=True, exist_ok=True)
    models_dir.mkdir(parents=True, exist_ok=True)
    with _bar(progress, len(plan), len(plan) - len(todo)) as advance:
        for (ds, seed), runs in _by_model(todo):
            rules = study.rules[ds]
            data = loaders(rules, seed)
            dense, dense_acc = _dense(rules, seed, data, done, out, models_dir)
            advance(f"{ds} seed {seed} dense {dense_acc:.1f}", 0)
            for run in runs:
                if run.kind == "dense":
                    advance(f"{ds} seed {seed} dense {dense_acc:.1f}", 1)
                    continue
                rec = execute(run, rules, dense, dense_acc, data)
                _append(out, rec)
                done[run.key] = rec
                advance(f"{run.key} {rec['accuracy']:.1f} ({rec['seconds']:.0f} s)", 1)
    return [done[r.key] for r in plan]


def _by_model(runs: list[Run]) -> Iterator[tuple[tuple[str, int], list[Run]]]:
    groups: dict[tuple[str, int], list[Run]] = {}
    for r in runs:
        groups.setdefault((r.dataset, r.seed), []).append(r)
    yield from groups.items()


def _dense(rules: Rules, seed: int, data: tuple[Any, Any], done: dict[str, Any], out: Path,
           models_dir: Path) -> tuple[nn.Module, float]:
    """The (dataset, seed) dense model: from the models directory if trained before, else trained now."""
    run = Run(rules.dataset, "dense", "dense", 0.0, "dense", seed)
    path = models_dir / f"{rules.dataset}_seed{seed}.pt"
    if run.key in done and path.is_file():
        model = new_model(rules, seed)
        model.load_state_dict(torch.load(path, weights_only=True))
        return model, float(done[run.key]["accuracy"])
    t0 = time.perf_counter()
    model, acc = train_dense(rules, seed, data)
    torch.save(model.state_dict(), path)
    rec = {**asdict(run), "key": run.key, "accuracy": acc, "dense_accuracy": acc, "achieved_sparsity": 0.0,
           "seconds": time.perf_counter() - t0, "rules": asdict(rules)}
    _append(out, rec)
    done[run.key] = rec
    return model, acc


def _append(path: Path, rec: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(rec) + "\n")
        f.flush()


class _bar:
    """A rich progress bar (or plain lines when ``progress`` is off); yields advance(description, n)."""

    def __init__(self, progress: bool, total: int, completed: int):
        self.progress, self.total, self.completed = progress, total, completed

    def __enter__(self) -> Callable[[str, int], None]:
        if not self.progress:  # one plain line per finished run (for logs)
            done = [self.completed]

            def line(desc: str, n: int) -> None:
                done[0] += n
                print(f"[{done[0]}/{self.total}] {desc}", flush=True)
            return line
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        self.p.start()
        task = self.p.add_task("accuracy study", total=self.total, completed=self.completed)
        return lambda desc, n: self.p.update(task, advance=n, description=desc[:70])

    def __exit__(self, *exc: object) -> None:
        if self.progress:
            self.p.stop()


def main(argv: Iterable[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[2:]))
    ap.add_argument("--quick", action="store_true", help="tiny smoke version: 1 seed, 2 densities, 1 epoch, "
                    "small data; writes accuracy_study_quick.*")
    ap.add_argument("--render", action="store_true", help="only rewrite the .md and .png from the .jsonl")
    ap.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS),
                    help="run only these datasets' points (the report always covers every dataset in the .jsonl)")
    ap.add_argument("--no-progress", action="store_true", help="one plain line per run instead of a progress bar")
    args = ap.parse_args(list(argv) if argv is not None else None)
    from accuracy_report import render  # benchmarks/ is on sys.path when run as a script

    suffix = "_quick" if args.quick else ""
    out = RESULTS / f"accuracy_study{suffix}.jsonl"
    study = quick_study() if args.quick else Study(FULL_RULES)
    if not args.render:
        torch.set_num_threads(1)
        t0 = time.perf_counter()
        part = dataclasses.replace(study, rules={k: v for k, v in study.rules.items() if k in args.datasets})
        sweep(part, out, RESULTS / f"accuracy_study{suffix}_models", progress=not args.no_progress)
        print(f"sweep done in {time.perf_counter() - t0:.0f} s", flush=True)
    command = "python benchmarks/accuracy_study.py" + (" --quick" if args.quick else "")
    render(read_jsonl(out), study, RESULTS / f"accuracy_study{suffix}", command)
    return 0


def quick_study() -> Study:
    return Study(QUICK_RULES, seeds=(0,), sparsities=(0.5, 0.75))


if __name__ == "__main__":
    sys.exit(main())
