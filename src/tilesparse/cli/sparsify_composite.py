"""`tilesparse sparsify --pattern 2:4+1:4` (TASD terms) and `--pattern int8-2:4+int4` (SDQ parts):
decompose every conv / linear but the first conv, fine-tune the terms (``sparsify.tasd``) or the
parts (``sparsify.sdq_train``) for ``--epochs`` when there is data, and write OUT/sparse.pt as a
composite checkpoint (``sparsify.composite``) that `tilesparse compile` compiles with its pattern.
The recipe machinery (methods, schedules, --resume, several processes) is the block / N:M path's;
its flags are refused here by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tilesparse.errors import ConfigError

__all__ = ["COMPOSITE_REFUSED", "sparsify_composite"]

# flags of the recipe path that mean nothing for a composite pattern (flag -> why)
COMPOSITE_REFUSED = {"recipe": "--recipe", "method": "--method", "sparsity": "--sparsity", "block": "--block",
                     "selection": "--selection", "score": "--score", "resume": "--resume", "override": "--override",
                     "amp": "--amp", "accumulate": "--accumulate", "nproc": "--nproc"}


def check_composite_flags(spec: str, given: dict[str, Any]) -> None:
    """Refuse, naming each, the recipe-path flags given with a composite pattern."""
    bad = [COMPOSITE_REFUSED[k] for k, v in given.items() if k in COMPOSITE_REFUSED and v not in (None, False)]
    if bad:
        raise ConfigError(bad[0], [f"--pattern {spec} fixes every part's structure and trains the parts with fixed "
                                   f"masks; drop {', '.join(bad)} (they apply to block, N:M and HSS patterns)"])


def sparsify_composite(comp: Any, net: Any, name: str | None, model_file: dict, loaders: tuple[Any, Any],
                       training: Any, out: Path, dev: Any) -> dict[str, Any]:
    """Decompose ``net`` to ``comp`` (TASDPattern or SDQPattern), fine-tune it on ``loaders`` (train,
    test; train None: no training) with ``training`` (a TrainingConfig), write ``out/sparse.pt``;
    returns what to print (layers decomposed, skipped, accuracy)."""
    from tilesparse.patterns.composite import TASDPattern
    from tilesparse.sparsify.composite import save_composite_checkpoint
    from tilesparse.sparsify.sdq_train import finetune_sdq, sdq_model
    from tilesparse.sparsify.tasd import finetune_terms, tasd_model

    train, test = loaders
    if isinstance(comp, TASDPattern):
        report = tasd_model(net, list(comp.terms), layer_types=("conv", "linear"))
        layers, skipped = list(report.layers), dict(report.skipped)
        tune = finetune_terms
    else:
        skipped = sdq_model(net, comp)
        from tilesparse.sparsify.sdq_train import sdq_parametrizations

        layers, tune = list(sdq_parametrizations(net)), finetune_sdq
    fit = None
    if train is not None and training.epochs > 0:
        fit = tune(net, train, training=training, test_loader=test, device=dev)
    history = [h.__dict__ for h in fit.history] if fit is not None else []
    accuracy = fit.final_accuracy if fit is not None else None
    out.mkdir(parents=True, exist_ok=True)
    save_composite_checkpoint(out / "sparse.pt", net.cpu(), model_name=name,
                              extra={"history": history, "final_accuracy": accuracy, **model_file})
    return {"pattern": comp.spec(), "layers": layers, "skipped": skipped, "final_accuracy": accuracy,
            "epochs": training.epochs if fit is not None else 0, "checkpoint": str(out / "sparse.pt")}
