"""TASD error vs density: greedy structured decomposition of random weights, no fine-tuning.

    python benchmarks/tasd_curve.py

For every term list of up to 3 N:M terms (2:4, 1:4, 2:8, 1:8, 1:16), the relative Frobenius error
||W - sum(terms)|| / ||W|| against the nominal term density (sum of the terms' densities), on a
256 x 256 Gaussian and a Laplace (heavier-tailed, closer to trained weights) matrix, fixed seed.
Writes benchmarks/results/tasd_curve.md and .json; the best list per density is the Pareto front.
Unstructured magnitude pruning at the same density is the floor any term list can reach.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import torch

from tilesparse.patterns import NM, Unstructured, prune_mask
from tilesparse.patterns.decompose import decompose
from tilesparse.utils.atomic import atomic_write_text

RESULTS = Path(__file__).parent / "results"
CANDIDATES = (NM(2, 4), NM(1, 4), NM(2, 8), NM(1, 8), NM(1, 16))


def weights() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(20261206)
    gauss = torch.randn(256, 256, generator=g)
    laplace = torch.distributions.Laplace(0.0, 1.0).sample((256, 256))
    return {"gaussian": gauss, "laplace": laplace}


def unstructured_error(w: torch.Tensor, density: float) -> float:
    mask = prune_mask(Unstructured(1.0 - density), w)
    return float((w - w * mask).norm() / w.norm())


def main() -> None:
    torch.manual_seed(20261206)
    rows = []
    for name, w in weights().items():
        for k in (1, 2, 3):
            for combo in itertools.combinations_with_replacement(CANDIDATES, k):
                density = sum(1.0 - (p.nominal_sparsity() or 0.0) for p in combo)
                if density > 1.0 + 1e-9:
                    continue
                d = decompose(w, combo)
                rows.append({"weight": name, "terms": "+".join(p.spec() for p in combo), "density": density,
                             "error": d.relative_error(w), "unstructured_error": unstructured_error(w, density)})
    lines = ["# TASD error vs density (greedy, no fine-tuning)", "",
             "Command: `python benchmarks/tasd_curve.py`. 256x256 random weights, seed 20261206. "
             "Error = ||W - sum(terms)||_F / ||W||_F; density = sum of the terms' nominal densities; "
             "the unstructured column prunes the same fraction by magnitude (the floor).", "",
             "Best term list per density (Pareto front):", "",
             "| weight | density | terms | TASD error | unstructured error |", "|---|---|---|---|---|"]
    for name in ("gaussian", "laplace"):
        best: dict[float, dict] = {}
        for r in rows:
            if r["weight"] == name and (r["density"] not in best or r["error"] < best[r["density"]]["error"]):
                best[r["density"]] = r
        front, lowest = [], float("inf")
        for dens in sorted(best):
            if best[dens]["error"] < lowest:
                lowest = best[dens]["error"]
                front.append(best[dens])
        lines += [f"| {name} | {r['density']:.4g} | {r['terms']} | {r['error']:.3f} | {r['unstructured_error']:.3f} |"
                  for r in front]
    RESULTS.mkdir(exist_ok=True)
    atomic_write_text(RESULTS / "tasd_curve.md", "\n".join(lines) + "\n")
    atomic_write_text(RESULTS / "tasd_curve.json", json.dumps(rows, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
