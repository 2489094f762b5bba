"""TASD on a trained digits CNN: accuracy with no fine-tuning, after BatchNorm re-estimation only, and
after 1 and 2 epochs of term fine-tuning, for a few term lists.

    python benchmarks/tasd_finetune.py [--quick]

Per seed: train the digits CNN dense (the demo's 15 epochs), then for every term list decompose a
copy (the convs the sparsifier takes: all but the first; the classifier stays dense), measure test
accuracy as is, with BatchNorm statistics re-estimated (no weight changes), and while fine-tuning
the terms for 2 epochs (masks fixed, other weights frozen, BatchNorm statistics follow the data; SGD
lr 0.01, momentum 0.9, wd 5e-4, constant lr, so the accuracy after epoch 1 is the 1-epoch point);
each fine-tuned model also with its BatchNorm statistics re-estimated afterwards. The dense model
fine-tuned 2 more epochs with the same optimizer is the fair baseline.
Writes benchmarks/results/tasd_finetune.md and .json (mean ± std over seeds).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch

from tilesparse.data.digits import digits_loaders
from tilesparse.sparsify import Trainer, TrainingConfig, evaluate, recalibrate_batchnorm
from tilesparse.sparsify.demo import DENSE_TRAINING, train_dense_digits
from tilesparse.sparsify.tasd import finetune_terms, tasd_model
from tilesparse.utils.atomic import atomic_write_text

RESULTS = Path(__file__).parent / "results"
TERM_LISTS = ("2:4", "2:4+1:4", "2:4+1:8", "1:4+1:8", "1:8", "1:16")  # the last two: where BatchNorm alone fails
FT_EPOCHS = 2
FINETUNE = TrainingConfig(epochs=FT_EPOCHS, lr=0.01, momentum=0.9, weight_decay=5e-4, batch_size=64)
COLUMNS = ("no_ft", "bn_only", "ft1", "ft1_bn", "ft2", "ft2_bn")


def run_terms(dense: torch.nn.Module, terms: str, seed: int) -> dict:
    """One term list on a copy of the dense model: errors, densities and the four accuracies."""
    train, test = digits_loaders(FINETUNE.batch_size, seed)
    model = copy.deepcopy(dense)
    report = tasd_model(model, terms)
    row = {"density": report.density, "error": statistics.fmean(la.error for la in report.layers.values()),
           "layers": {n: {"error": la.error, "density": la.density} for n, la in report.layers.items()},
           "no_ft": evaluate(model, test)}
    row["bn_only"] = bn_reestimated(model, train, test)
    one = copy.deepcopy(model)  # the same seeded first epoch as the 2-epoch run, stopped there
    finetune_terms(one, train, training=FINETUNE.model_copy(update={"seed": seed, "epochs": 1}))
    row["ft1_bn"] = bn_reestimated(one, train, test)
    fit = finetune_terms(model, train, test_loader=test, training=FINETUNE.model_copy(update={"seed": seed}))
    row["ft1"], row["ft2"] = (fit.history[i].test_accuracy for i in (0, 1))
    row["ft2_bn"] = bn_reestimated(model, train, test)
    return row


def bn_reestimated(model: torch.nn.Module, train, test) -> float:
    """Test accuracy of a copy with BatchNorm statistics re-estimated on 16 batches (weights unchanged)."""
    bn = copy.deepcopy(model)
    recalibrate_batchnorm(bn, train, n_batches=16)
    return evaluate(bn, test)


def dense_finetuned(dense: torch.nn.Module, seed: int) -> float:
    """The fair baseline: the dense model trained FT_EPOCHS more epochs with the fine-tuning optimizer."""
    train, test = digits_loaders(FINETUNE.batch_size, seed)
    fit = Trainer(copy.deepcopy(dense), None, None, train, test, FINETUNE.model_copy(update={"seed": seed}),
                  progress=False).fit()
    return float(fit.final_accuracy or 0.0)


def _ms(xs: list[float]) -> str:
    return f"{statistics.fmean(xs):.2f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:.2f}"


def markdown(raw: dict, seeds: list[int], elapsed: float, command: str) -> str:
    lines = [
        "# TASD on a trained digits CNN: no fine-tuning vs term fine-tuning", "",
        f"Command: `{command}`. Seeds {seeds}; mean ± std of top-1 test accuracy (%) on scikit-learn's digits "
        "(1347 train / 450 test, stratified, seeded; one test image = 0.22 points). Dense: the digits CNN trained "
        f"{DENSE_TRAINING.epochs} epochs (SGD lr {DENSE_TRAINING.lr}). TASD (`sparsify.tasd.tasd_model`): the three "
        "convs the sparsifier takes (all but the first; the classifier stays dense) become sums of greedy "
        "structured-sparse terms of the dense weight. Columns: as decomposed (stale BatchNorm statistics); "
        "BatchNorm statistics re-estimated on 16 batches (no weight changes); the terms fine-tuned "
        f"(`finetune_terms`: masks fixed, other weights frozen, BatchNorm statistics follow the data; SGD lr "
        f"{FINETUNE.lr}, momentum {FINETUNE.momentum}, wd {FINETUNE.weight_decay}, constant lr) after 1 and "
        f"{FT_EPOCHS} epochs, each also with BatchNorm statistics re-estimated afterwards (+ BN). Density: sum of "
        "the terms' kept slots / weights over the decomposed convs; error: "
        f"mean over those convs of ||W - sum(terms)|| / ||W||. Wall time {elapsed:.0f} s, 1 torch thread.", "",
        f"Dense: **{_ms(raw['dense'])}**; dense + {FT_EPOCHS} epochs with the fine-tuning optimizer (fair "
        f"baseline): **{_ms(raw['dense_ft'])}**.", "",
        "| terms | density | rel. error | no fine-tuning | BatchNorm re-estimated | 1 epoch | 1 epoch + BN | "
        f"{FT_EPOCHS} epochs | {FT_EPOCHS} epochs + BN |", "|---|---|---|---|---|---|---|---|---|",
    ]
    for terms in TERM_LISTS:
        runs = raw["terms"][terms]
        cells = [_ms([r[c] for r in runs]) for c in COLUMNS]
        lines.append(f"| {terms} | {statistics.fmean(r['density'] for r in runs):.3f} | "
                     f"{statistics.fmean(r['error'] for r in runs):.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", *reading(raw), ""])


def reading(raw: dict) -> list[str]:
    """What the numbers say, computed from them: the gain of each step against the seeds' spread."""
    mean = statistics.fmean
    out = ["Reading (computed from the runs):", ""]
    fair = mean(raw["dense_ft"])
    for terms in TERM_LISTS:
        runs = raw["terms"][terms]
        acc = {c: mean(r[c] for r in runs) for c in COLUMNS}
        spread = max(statistics.stdev(r[c] for r in runs) if len(runs) > 1 else 0.0 for c in ("bn_only", "ft2"))
        out.append(f"- {terms}: BatchNorm re-estimation {acc['bn_only'] - acc['no_ft']:+.2f} points over the "
                   f"decomposed model, term fine-tuning {acc['ft2'] - acc['bn_only']:+.2f} more "
                   f"({FT_EPOCHS} epochs, against BatchNorm alone); {acc['ft2'] - fair:+.2f} against the fair dense "
                   f"baseline (seed std of the BatchNorm and {FT_EPOCHS}-epoch columns up to {spread:.2f}); "
                   f"after 1 epoch {acc['ft1']:.2f}, {acc['ft1_bn']:.2f} with BatchNorm re-estimated.")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one seed (smoke run)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    seeds = [0] if args.quick else [0, 1, 2]
    t0 = time.perf_counter()
    raw: dict = {"dense": [], "dense_ft": [], "terms": {t: [] for t in TERM_LISTS}}
    for seed in seeds:
        dense, acc = train_dense_digits(seed, progress=False)
        raw["dense"].append(acc)
        raw["dense_ft"].append(dense_finetuned(dense, seed))
        for terms in TERM_LISTS:
            row = run_terms(dense, terms, seed)
            raw["terms"][terms].append(row)
            print(f"seed {seed} {terms}: {row['no_ft']:.2f} -> {row['ft2']:.2f}")
    command = "python benchmarks/tasd_finetune.py" + (" --quick" if args.quick else "")
    text = markdown(raw, seeds, time.perf_counter() - t0, command)
    RESULTS.mkdir(exist_ok=True)
    atomic_write_text(RESULTS / "tasd_finetune.md", text)
    atomic_write_text(RESULTS / "tasd_finetune.json", json.dumps({"seeds": seeds, **raw}, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
