"""Table and plot of the accuracy study from its .jsonl records (see accuracy_study.py)."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from tilesparse.utils.atomic import atomic_write_text

Records = list[dict[str, Any]]


def _ms(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def _fmt(xs: list[float]) -> str:
    m, s = _ms(xs)
    return f"{m:.2f} ± {s:.2f}" if len(xs) > 1 else f"{m:.2f}"


def group(records: Records, kind: str) -> dict[tuple, list[dict[str, Any]]]:
    """(dataset, method, pattern, sparsity) -> records over seeds."""
    out: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if r["kind"] == kind:
            out[(r["dataset"], r["method"], r["pattern"], r["sparsity"])].append(r)
    return out


def _header(study: Any, command: str, records: Records) -> list[str]:
    seconds = sum(r["seconds"] for r in records)
    per_run = {ds: statistics.fmean(r["seconds"] for r in records if r["dataset"] == ds and r["kind"] == "train")
               for ds in _datasets(records, study)
               if any(r["dataset"] == ds and r["kind"] == "train" for r in records)}
    lines = ["# Accuracy study: pattern x density x method", "",
             f"Command: `{command}` (resumable; `--render` rewrites this file and the plot from the .jsonl). "
             f"Raw records: the .jsonl beside this file. Seeds {list(study.seeds)}; mean ± std of top-1 test "
             f"accuracy (%) over seeds. Total compute {seconds / 60:.0f} min on one core (1 torch thread; a sparse "
             "run takes " + ", ".join(f"{v:.1f} s on {k}" for k, v in per_run.items()) + " on average, on a shared "
             "machine).", "",
             "Rules:", ""]
    for r in study.rules.values():
        sizes = "sklearn's 1347 train / 450 test split (seeded, stratified)" if r.n_train is None else \
            f"{r.n_train} train / {r.n_test} test images (the fixed generated set, data seed 0)"
        lines.append(f"- **{r.dataset}**: {r.model}, width {r.width}; {sizes}. Dense: {r.dense_epochs} epochs SGD "
                     f"lr {r.dense_lr}, momentum 0.9, wd 5e-4, batch {r.batch_size}, then {r.epochs} epochs at lr "
                     f"{r.lr} (so the low-learning-rate epochs the sparse runs get are not credited to "
                     f"sparsity). Every sparse run starts from "
                     f"that seed's dense model and gets {r.epochs} epochs SGD lr {r.lr} (same momentum, wd, batch). "
                     f"Methods: {', '.join(r.methods)}.")
    lines += ["- Sparsified: the three convs after the first (first conv and classifier dense), L2 scores, each "
              "pattern's default selection (8x8 blocks: balanced rows, which keeps at least one block per block "
              "row, so the achieved sparsity of the smallest layers can fall below the target; the achieved "
              "column reports zero weights / all weights over the sparsified layers). BatchNorm re-estimated "
              "on 16 batches after every pruning step.",
              "- one-shot: prune once to the target, fine-tune. incremental: cubic schedule (Zhu & Gupta) "
              "reaching the target after 3 pruning steps, one per epoch from the first, then fine-tune.",
              "- N:M at each density: 2:4 (50 %), 1:4 (75 %), 1:8 (87.5 %), 1:16 (93.75 %), along input "
              "channels. HSS: 8x8 blocks (50 / 75 / 87.5 % of them zero) with 2:4 inside each kept block.",
              "- TASD (no training): each sparsified conv replaced by its best greedy sum of up to 3 N:M terms "
              "(2:4, 1:4, 1:8, 2:8, 1:16) whose densities add up to at most 1 - sparsity. SDQ (no training): "
              "each sparsified conv replaced by its int8 N:M outlier part plus dense int4 rest, dequantized. "
              "Both reported as is and after BatchNorm re-estimation (no weight changes).", ""]
    return lines


def _dense_lines(records: Records) -> list[str]:
    lines = ["## Dense baseline", "", "| dataset | accuracy | per seed |", "|---|---|---|"]
    for ds in sorted({r["dataset"] for r in records}):
        accs = [r["accuracy"] for r in sorted(records, key=lambda r: r["seed"])
                if r["kind"] == "dense" and r["dataset"] == ds]
        if accs:
            lines.append(f"| {ds} | {_fmt(accs)} | {', '.join(f'{a:.2f}' for a in accs)} |")
    return lines + [""]


def _datasets(records: Records, study: Any) -> list[str]:
    return [ds for ds in study.rules if any(r["dataset"] == ds for r in records)]


def _interp(points: list[tuple[float, float]], x: float) -> float | None:
    """Linear interpolation of sorted (x, y) points at x; None outside their range."""
    for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):  # consecutive pairs
        if x0 - 1e-9 <= x <= x1 + 1e-9:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0) if x1 > x0 else y0
    return points[0][1] if len(points) == 1 and abs(points[0][0] - x) < 1e-9 else None


def _cost_cells(acc: float, ach: float, s: float, base: dict[float, float], pat: str) -> tuple[str, str]:
    if pat == "unstructured" or not base:
        return "—", "—"
    at_target = f"{acc - base[s]:+.2f}" if s in base else "—"
    ref = _interp(sorted(base.items()), ach)
    return at_target, (f"{acc - ref:+.2f}" if ref is not None else "— (below range)")


def _main_table(records: Records, study: Any) -> list[str]:
    g = group(records, "train")
    lines = ["## Accuracy after fine-tuning", "",
             "Cost = the pattern's mean accuracy minus unstructured's (points; negative = the structure costs "
             "accuracy), same dataset and method: at the same target sparsity, and at the sparsity the pattern "
             "actually reached (unstructured interpolated linearly between its measured sparsities; blank when "
             "the achieved sparsity is below 50 %). Achieved = mean zero fraction of the sparsified weights.", ""]
    for ds in _datasets(records, study):
        for method in study.rules[ds].methods:
            base = {s: statistics.fmean(r["accuracy"] for r in g[(ds, method, "unstructured", s)])
                    for s in study.sparsities if g.get((ds, method, "unstructured", s))}
            lines += [f"### {ds}, {method}", "",
                      "| pattern | target sparsity | accuracy | achieved | cost vs unstructured at target | "
                      "at achieved | seeds |", "|---|---|---|---|---|---|---|"]
            for pat in study.patterns:
                for s in study.sparsities:
                    rs = g.get((ds, method, pat, s))
                    if not rs:
                        continue
                    acc = [r["accuracy"] for r in rs]
                    ach = statistics.fmean(r["achieved_sparsity"] for r in rs)
                    c1, c2 = _cost_cells(statistics.fmean(acc), ach, s, base, pat)
                    lines.append(f"| {pat} | {s:.4g} | {_fmt(acc)} | {ach:.3f} | {c1} | {c2} | {len(rs)} |")
            lines.append("")
    return lines


def _extras(records: Records) -> list[str]:
    lines = ["## Without training: TASD and SDQ", "",
             "| dataset | point | sparsity | accuracy | after BN re-estimation | mean rel. weight error | "
             "achieved |", "|---|---|---|---|---|---|---|"]
    for kind in ("tasd", "sdq"):
        for (ds, _, pat, s), rs in sorted(group(records, kind).items()):
            err = statistics.fmean(e for r in rs for e in r["rel_errors"])
            ach = statistics.fmean(r["achieved_sparsity"] for r in rs)
            lines.append(f"| {ds} | {pat} | {s:.4g} | {_fmt([r['accuracy'] for r in rs])} | "
                         f"{_fmt([r['accuracy_bn'] for r in rs])} | {err:.3f} | {ach:.3f} |")
    return lines + [""]


def _at_target(rs: list[dict[str, Any]], s: float) -> bool:
    return abs(statistics.fmean(r["achieved_sparsity"] for r in rs) - s) < 0.01


def _reading(records: Records, study: Any) -> list[str]:
    """Spreads computed from the records: how far apart patterns and methods end, per dataset. Only
    cells that reached their target sparsity are compared (blocks may stop short of it)."""
    g = group(records, "train")
    lines = ["## Reading", "", "Computed from the records; pattern comparisons use only cells whose achieved "
             "sparsity is within 0.01 of the target.", ""]
    for ds in _datasets(records, study):
        spreads, costs = [], defaultdict(list)
        for method in study.rules[ds].methods:
            for s in study.sparsities:
                cells = {pat: g[(ds, method, pat, s)] for pat in study.patterns if g.get((ds, method, pat, s))}
                means = {pat: statistics.fmean(r["accuracy"] for r in rs) for pat, rs in cells.items()
                         if _at_target(rs, s)}
                if len(means) > 1:
                    best, worst = max(means, key=means.__getitem__), min(means, key=means.__getitem__)
                    spreads.append((means[best] - means[worst], method, s, best, worst))
                for pat, m in means.items():
                    if pat != "unstructured" and "unstructured" in means:
                        costs[pat].append(m - means["unstructured"])
        lines.append(_methods_line(g, ds, study))
        if not spreads:
            continue
        noise = [_ms([r["accuracy"] for r in rs])[1] for k, rs in g.items() if k[0] == ds and len(rs) > 1]
        top = max(spreads)
        lines.append(f"- {ds}: the patterns' spread (best minus worst mean at one density and method) is "
                     f"{min(spreads)[0]:.1f} to {top[0]:.1f} points (widest: {top[1]} at {top[2]:.4g}, {top[3]} "
                     f"vs {top[4]}); the mean seed-to-seed std is "
                     f"{statistics.fmean(noise) if noise else 0.0:.2f} points.")
        ranked = sorted(costs, key=lambda p: -statistics.fmean(costs[p]))
        if ranked:
            lines.append(f"- {ds}: mean cost vs unstructured over the cells at target: " + ", ".join(
                f"{p} {statistics.fmean(costs[p]):+.1f} ({len(costs[p])} cells)" for p in ranked) + ".")
    return lines + [""]


def _methods_line(g: dict[tuple, list[dict[str, Any]]], ds: str, study: Any) -> str:
    """Incremental minus one-shot, per (pattern, sparsity) cell present for both."""
    if len(study.rules[ds].methods) < 2:
        return f"- {ds}: one method only ({study.rules[ds].methods[0]})."
    diffs = []
    for pat in study.patterns:
        for s in study.sparsities:
            a, b = g.get((ds, "incremental", pat, s)), g.get((ds, "oneshot", pat, s))
            if a and b:
                ma, sa = _ms([r["accuracy"] for r in a])
                mb, sb = _ms([r["accuracy"] for r in b])
                diffs.append((ma - mb, abs(ma - mb) > sa + sb))
    if not diffs:
        return f"- {ds}: no cell has both methods yet."
    wins = sum(1 for d, sep in diffs if sep and d > 0)
    losses = sum(1 for d, sep in diffs if sep and d < 0)
    return (f"- {ds}: incremental minus one-shot averages {statistics.fmean(d for d, _ in diffs):+.2f} points over "
            f"{len(diffs)} cells (range {min(d for d, _ in diffs):+.1f} to {max(d for d, _ in diffs):+.1f}); "
            f"separated by more than the two stds summed in {wins} cells for incremental, {losses} for one-shot.")


def plot(records: Records, study: Any, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = group(records, "train")
    panels = [(ds, m) for ds in _datasets(records, study) for m in study.rules[ds].methods]
    cols = 2
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.9 * rows), squeeze=False)
    for ax, (ds, method) in zip(axes.flat, panels, strict=False):  # a spare axis stays empty
        for pat in study.patterns:
            pts = [(s, [r["accuracy"] for r in g[(ds, method, pat, s)]]) for s in study.sparsities
                   if g.get((ds, method, pat, s))]
            if pts:  # at the density reached (blocks keep >= 1 per block row: can stay above the target's)
                ms = [_ms(a) for _, a in pts]
                xs = [1 - statistics.fmean(r["achieved_sparsity"] for r in g[(ds, method, pat, s)]) for s, _ in pts]
                ax.errorbar(xs, [m for m, _ in ms], yerr=[sd for _, sd in ms], marker="o", capsize=3, label=pat)
        tasd = [(s, [r["accuracy_bn"] for r in rs]) for (d, _, _, s), rs in sorted(group(records, "tasd").items())
                if d == ds]
        if tasd:
            ax.plot([1 - s for s, _ in tasd], [statistics.fmean(a) for _, a in tasd], "k:", marker="x",
                    label="TASD, no training (BN re-est.)")
        dense = [r["accuracy"] for r in records if r["kind"] == "dense" and r["dataset"] == ds]
        if dense:
            ax.axhline(statistics.fmean(dense), color="grey", lw=0.8, ls="--", label="dense")
        ax.set_xscale("log", base=2)
        ticks = [1 - s for s in study.sparsities]
        ax.set_xticks(ticks, [f"{t:.4g}" for t in ticks])
        ax.minorticks_off()
        ax.invert_xaxis()  # sparser to the right
        ax.set_xlabel("density reached (nonzero fraction of the sparsified weights)")
        ax.set_title(f"{ds}, {method}")
        ax.grid(alpha=0.3)
    for row in axes:
        row[0].set_ylabel("test accuracy (%)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(records: Records, study: Any, stem: Path, command: str) -> str:
    """Write ``stem``.md and ``stem``.png; returns the Markdown."""
    md = "\n".join(_header(study, command, records) + _dense_lines(records) + _main_table(records, study)
                   + _extras(records) + _reading(records, study))
    atomic_write_text(stem.with_suffix(".md"), md)
    plot(records, study, stem.with_suffix(".png"))
    return md
