"""Digits experiment: dense baseline vs 50 % / 75 % 8x8 block sparsity by each training method.

    python benchmarks/digits_experiment.py [--quick]

Per seed: train the digits CNN dense, then start every sparse run from that same dense model with the
same epoch budget. Writes benchmarks/results/digits.md and digits.json (mean +- std over seeds).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from tilesparse.data.digits import digits_loaders
from tilesparse.sparsify import BlockSparsifier, Recipe, Trainer, TrainingConfig, build_report, make_method
from tilesparse.sparsify.demo import DENSE_TRAINING, torch_threads, train_dense_digits

RESULTS = Path(__file__).parent / "results"
SPARSITIES = (0.5, 0.75)
FINETUNE_EPOCHS = 12
PRUNE_STEPS = 5  # incremental: the target is reached after this many pruning steps (one per epoch)
# Targets from the issue: one-shot + fine-tune within 1.0 point of dense at 50 %, within 3 at 75 %.
TARGET_GAP = {0.5: 1.0, 0.75: 3.0}

# name -> (description, recipe fields)
METHODS = {
    "oneshot_l2_noft_nobn": ("one-shot L2, no fine-tuning, stale BatchNorm (for scale)",
                             {"method": "oneshot", "score": "l2", "epochs": 0, "bn_recalibration_batches": 0}),
    "oneshot_l2_noft": ("one-shot L2 + BatchNorm re-estimation, no fine-tuning (for scale)",
                        {"method": "oneshot", "score": "l2", "epochs": 0}),
    "oneshot_l2": ("one-shot L2 + fine-tune", {"method": "oneshot", "score": "l2"}),
    "incremental_l2": ("incremental L2", {"method": "incremental", "score": "l2"}),
    "penalty_lse": ("penalty (soft LSE mask)", {"method": "penalty", "score": "l2"}),
    "oneshot_fisher": ("one-shot Fisher + fine-tune", {"method": "oneshot", "score": "fisher"}),
    "incremental_hessian": ("incremental Hessian (Hutchinson)", {"method": "incremental", "score": "hessian"}),
}


def recipe_for(fields: dict, sparsity: float, epochs: int, seed: int) -> Recipe:
    fields = dict(fields)
    epochs = fields.pop("epochs", epochs)
    return Recipe(
        sparsity=sparsity, block=(8, 8), selection="balanced_rows", **fields,
        incremental={"every_epochs": 1, "step": sparsity / PRUNE_STEPS},
        penalty={"epochs": max(1, epochs // 2)},
        training=TrainingConfig(epochs=epochs, lr=0.01, seed=seed),  # same as the dense fine-tune
    )


def run_sparse(dense_model, recipe: Recipe | None, seed: int, training: TrainingConfig) -> dict:
    """Fine-tune a copy of the dense model with ``recipe`` (None: dense, same epochs and optimizer)."""
    model = copy.deepcopy(dense_model)
    train, test = digits_loaders(training.batch_size, seed)
    sp = BlockSparsifier(recipe).prepare(model) if recipe is not None else None
    method = make_method(recipe.method) if recipe is not None else None
    t0 = time.perf_counter()
    fit = Trainer(model, sp, method, train, test, training, progress=False).fit()
    rep = build_report(model, sp)
    return {"accuracy": fit.final_accuracy, "block_sparsity": rep.block_sparsity, "seconds": time.perf_counter() - t0}


def _ms(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarize(raw: dict, seeds: list[int]) -> dict:
    """Gaps are measured against the dense model fine-tuned for the same epochs (the fair baseline)."""
    dense0 = _ms(raw["dense"])
    dense = _ms([r["accuracy"] for r in raw["dense_ft"]])
    rows = {}
    for name in METHODS:
        rows[name] = {}
        for s in SPARSITIES:
            accs = [r["accuracy"] for r in raw[name][str(s)]]
            m, sd = _ms(accs)
            rows[name][str(s)] = {"mean": m, "std": sd, "gap": dense[0] - m, "runs": accs,
                                  "block_sparsity": statistics.fmean(r["block_sparsity"] for r in raw[name][str(s)])}
    return {"seeds": seeds, "dense": {"mean": dense0[0], "std": dense0[1], "runs": raw["dense"]},
            "dense_ft": {"mean": dense[0], "std": dense[1], "runs": [r["accuracy"] for r in raw["dense_ft"]]},
            "methods": rows}


def markdown(summary: dict, epochs: int, dense_epochs: int, elapsed: float) -> str:
    d, f = summary["dense"], summary["dense_ft"]
    lines = [
        "# Digits: 8x8 block sparsity by training method",
        "",
        f"Small CNN (4 convs 32-32-64-64, the last three sparsified; first conv and classifier dense) on "
        f"scikit-learn's digits (1347 train / 450 test, stratified, seeded). Mean ± std of top-1 test accuracy "
        f"over seeds {summary['seeds']}. Dense: {dense_epochs} epochs SGD (lr 0.05). Every sparse run starts "
        f"from the same seed's dense model and gets {epochs} epochs (SGD lr 0.01, momentum 0.9, wd 5e-4); "
        f"balanced-rows selection (every block row keeps the same number of blocks); BatchNorm statistics "
        f"re-estimated on 16 batches after every pruning step. Incremental: "
        f"{PRUNE_STEPS} pruning steps, one per epoch, then fine-tuning. Penalty: {epochs // 2} epochs with "
        f"trainable gates and the LSE penalty (alpha 100, beta = iota = 1e-3), then hardened by L2 of W x Gamma "
        f"and fine-tuned. Fisher/Hessian: 8 batches; Hutchinson 4 probes per batch. Wall time {elapsed:.0f} s on 2 "
        f"cores (1 torch thread).",
        "",
        f"**Dense baseline: {d['mean']:.2f} ± {d['std']:.2f} %** after the dense epochs; "
        f"**{f['mean']:.2f} ± {f['std']:.2f} %** after {epochs} more dense epochs with the fine-tuning optimizer "
        "(the fair baseline: every gap below is measured against it, so extra training is not credited to sparsity).",
        "",
        "Loss = fair dense baseline minus the method's accuracy, in points (positive = worse than dense).",
        "",
        "| method | 50 % blocks zero | loss | 75 % blocks zero | loss |",
        "|---|---|---|---|---|",
    ]
    for name, (desc, _) in METHODS.items():
        cells = []
        for s in SPARSITIES:
            r = summary["methods"][name][str(s)]
            cells += [f"{r['mean']:.2f} ± {r['std']:.2f}", f"{r['gap']:+.2f}"]
        lines.append(f"| {desc} | " + " | ".join(cells) + " |")
    lines += ["", "Targets (one-shot + fine-tune): within 1.0 point of dense at 50 %, within 3 points at 75 %.", ""]
    for s in SPARSITIES:
        for name, (desc, _) in METHODS.items():
            gap = summary["methods"][name][str(s)]["gap"]
            verdict = "meets" if gap <= TARGET_GAP[s] else "falls short of"
            lines.append(f"- {desc} at {s:.0%}: {gap:+.2f} points, {verdict} the {TARGET_GAP[s]:.1f}-point bar.")
    lines += ["", *reading(summary), ""]
    return "\n".join(lines)


def reading(summary: dict) -> list[str]:
    """What the numbers can and cannot say (computed from the results, not written in advance)."""
    tuned = {n: summary["methods"][n] for n in METHODS if METHODS[n][1].get("epochs") != 0}
    gaps = [r[str(s)]["gap"] for r in tuned.values() for s in SPARSITIES]
    n_test = summary.get("test_images", 450)  # 25 % of sklearn's 1797 digits
    image = 100.0 / n_test
    spread = statistics.fmean(r[str(s)]["std"] for r in tuned.values() for s in SPARSITIES)
    def at(name: str) -> str:
        return " / ".join(f"{summary['methods'][name][str(s)]['mean']:.0f} %" for s in SPARSITIES)

    best = min(tuned, key=lambda n: sum(tuned[n][str(s)]["gap"] for s in SPARSITIES))
    worst = max(tuned, key=lambda n: sum(tuned[n][str(s)]["gap"] for s in SPARSITIES))
    return [
        "## Reading",
        "",
        f"Every fine-tuned method ends within {min(gaps):+.2f} to {max(gaps):+.2f} points of the fair dense "
        f"baseline. Methods differ by at most {max(gaps) - min(gaps):.2f} points (about "
        f"{round((max(gaps) - min(gaps)) / image)} of {n_test} test images) against a "
        f"seed-to-seed std of {spread:.2f} points on average: the task is nearly saturated, so the ranking "
        f"(best on average: {METHODS[best][0]}; worst: {METHODS[worst][0]}) is weak evidence. The paper, "
        "on ImageNet, found one-shot clearly best and the others at least 7 points behind — a separation "
        "this small CNN on 8x8 digits does not have the difficulty to show. The no-fine-tuning rows: "
        "right after one-shot pruning to "
        f"{' / '.join(f'{s:.0%}' for s in SPARSITIES)} the network scores {at('oneshot_l2_noft_nobn')} with the "
        f"dense network's BatchNorm statistics (chance: 10 %), {at('oneshot_l2_noft')} once they are "
        "re-estimated on the training data (the default after every pruning step); fine-tuning does the rest.",
    ]


def render(quick: bool) -> int:
    from tilesparse.utils.atomic import atomic_write_text

    suffix = "_quick" if quick else ""
    summary = json.loads((RESULTS / f"digits{suffix}.json").read_text())
    md = markdown(summary, summary["epochs"], summary["dense_epochs"], summary["seconds"])
    atomic_write_text(RESULTS / f"digits{suffix}.md", md)
    print(md)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one seed, fewer epochs (smoke run)")
    ap.add_argument("--render", action="store_true", help="rewrite the Markdown from the saved JSON only")
    args = ap.parse_args(argv)
    if args.render:
        return render(args.quick)
    seeds = [0] if args.quick else [0, 1, 2]
    epochs = 4 if args.quick else FINETUNE_EPOCHS
    dense_cfg = DENSE_TRAINING.model_copy(update={"epochs": 5}) if args.quick else DENSE_TRAINING
    raw: dict = {"dense": [], "dense_ft": [], **{n: {str(s): [] for s in SPARSITIES} for n in METHODS}}
    t0 = time.perf_counter()
    with torch_threads(1):
        for seed in seeds:
            dense_model, dense_acc = train_dense_digits(seed, dense_cfg, progress=False)
            raw["dense"].append(dense_acc)
            ft = TrainingConfig(epochs=epochs, lr=0.01, seed=seed)
            raw["dense_ft"].append(run_sparse(dense_model, None, seed, ft))
            ft_acc = raw["dense_ft"][-1]["accuracy"]
            print(f"seed {seed}: dense {dense_acc:.2f}, dense fine-tuned {ft_acc:.2f}", flush=True)
            for name, (_, fields) in METHODS.items():
                for s in SPARSITIES:
                    recipe = recipe_for(fields, s, epochs, seed)
                    r = run_sparse(dense_model, recipe, seed, recipe.training)
                    raw[name][str(s)].append(r)
                    print(f"  {name:<20} {s:.2f}: {r['accuracy']:.2f} ({r['seconds']:.0f} s)", flush=True)
    elapsed = time.perf_counter() - t0
    summary = summarize(raw, seeds)
    summary.update(epochs=epochs, dense_epochs=dense_cfg.epochs, seconds=elapsed, quick=args.quick,
                   test_images=len(digits_loaders(64, 0)[1].dataset))
    suffix = "_quick" if args.quick else ""
    RESULTS.mkdir(parents=True, exist_ok=True)
    from tilesparse.utils.atomic import atomic_write_text

    atomic_write_text(RESULTS / f"digits{suffix}.json", json.dumps(summary, indent=2) + "\n")
    md = markdown(summary, epochs, dense_cfg.epochs, elapsed)
    atomic_write_text(RESULTS / f"digits{suffix}.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    torch.manual_seed(0)
    sys.exit(main())
