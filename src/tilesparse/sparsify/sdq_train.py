"""SDQ on a whole model, trained: every eligible Conv2d / Linear weight becomes an int8 part under a
fixed structured-sparse mask plus a dense int4 part (``quant.sdq``), fine-tuned through fake
quantization with a straight-through gradient.

    parts = sdq_model(model, "int8-2:4+int4")      # masks by magnitude, fixed from here on
    finetune_sdq(model, train_loader, epochs=1, lr=0.01)
    parts = export_sdq(model)                      # layer -> quant.sdq.SDQ (integer codes, exponents)
    squash_sdq(model)                              # plain weights: the parts' dequantized sum

The parts are those of the weight the compiler quantizes: a conv followed by a BatchNorm is split
after the BatchNorm's scale gamma / sqrt(running_var + eps) is folded into it (as
``passes.fold_batchnorm`` folds it), and the plain weight left by ``squash_sdq`` is the parts' sum
divided by that scale again. ``sparsify.composite.save_composite_checkpoint`` writes the parts into
a checkpoint that ``tilesparse compile`` compiles as they are (docs/sparsify.md, "Composite
checkpoints").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from tilesparse.errors import ConfigError
from tilesparse.patterns.composite import SDQPattern, parse_composite
from tilesparse.patterns.family import prune_mask
from tilesparse.quant.rounding import pow2_exponent
from tilesparse.quant.sdq import SDQ, sdq
from tilesparse.sparsify.recipe import Recipe, TrainingConfig
from tilesparse.sparsify.sparsifier import find_layers
from tilesparse.sparsify.tasd import parametrized_layers
from tilesparse.sparsify.trainer import FitResult, Trainer
from tilesparse.utils.config import validate_model

__all__ = ["SDQParametrization", "sdq_model", "sdq_parametrizations", "finetune_sdq", "export_sdq", "squash_sdq"]


def _fake_quant(x: Tensor, bits: int) -> Tensor:
    """x rounded to ``bits``-bit integers at its power-of-two exponent (``quant.rounding``: half up,
    clamped), with the identity's gradient (straight-through)."""
    hi = 2 ** (bits - 1) - 1
    e = pow2_exponent(float(x.detach().abs().max()), hi)
    step = 2.0 ** e
    q = torch.clamp(torch.floor(x.detach() / step + 0.5), -hi - 1, hi) * step
    return x + (q - x).detach()


class SDQParametrization(nn.Module):
    """``weight -> (sparse part + dense part) / scale``: the weight times its BatchNorm scale (1
    without one), split into a fake-quantized part under the fixed ``mask`` and a fake-quantized
    dense remainder, then unscaled."""

    mask: Tensor

    def __init__(self, pattern: SDQPattern, mask: Tensor, groups: int, bn: nn.BatchNorm2d | None):
        super().__init__()
        self.pattern, self.groups = pattern, groups
        self.register_buffer("mask", mask.bool())
        self._bn = (bn,)  # a tuple, so the BatchNorm is not a submodule (its tensors stay where they are)

    def scale(self, w: Tensor) -> Tensor:
        """The folded BatchNorm's per-output-channel scale, weight-broadcastable (detached)."""
        bn = self._bn[0]
        if bn is None:
            return torch.ones((), dtype=w.dtype, device=w.device)
        assert bn.running_var is not None and bn.weight is not None
        s = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()
        return s.reshape(-1, *([1] * (w.dim() - 1))).to(w.dtype)

    def forward(self, w: Tensor) -> Tensor:
        s = self.scale(w)
        wf = w * s
        sparse = _fake_quant(wf * self.mask, self.pattern.sparse_bits)
        dense = _fake_quant(wf - sparse, self.pattern.dense_bits)
        return (sparse + dense) / s

    def parts(self, w: Tensor) -> SDQ:
        """The integer parts of the raw weight ``w`` (``quant.sdq`` with this mask, in float64)."""
        wf = (w.detach().double() * self.scale(w.detach().double())).cpu()
        return sdq(wf, self.pattern.sparse, self.pattern.sparse_bits, self.pattern.dense_bits, self.groups,
                   mask=self.mask.cpu())


def _bn_after(model: nn.Module) -> dict[str, nn.BatchNorm2d]:
    """Conv module path -> the BatchNorm2d that reads its output alone (what the graph folds)."""
    import torch.fx

    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception:  # not traceable: no pair is known, and the compiler's check names the layer
        return {}
    mods = dict(model.named_modules())
    out = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(mods.get(node.target), nn.BatchNorm2d):
            continue
        src = node.args[0]
        if getattr(src, "op", None) == "call_module" and isinstance(mods.get(src.target), nn.Conv2d) \
                and len(src.users) == 1:
            out[str(src.target)] = cast(nn.BatchNorm2d, mods[node.target])
    return out


def sdq_model(model: nn.Module, pattern: str | SDQPattern, *, layer_types: tuple[str, ...] = ("conv", "linear"),
              include_first_conv: bool = False, exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """Attach an ``SDQParametrization`` to every eligible weight (in place), its mask the pattern's
    by magnitude of the BatchNorm-scaled weight; returns the skipped layers with the reason. Layers
    are chosen as the sparsifier chooses them; a layer the sparse pattern does not fit is skipped."""
    pat = parse_composite(pattern, "sdq_model") if isinstance(pattern, str) else pattern
    if not isinstance(pat, SDQPattern):
        raise ConfigError("sdq_model", [f"expected an SDQ pattern such as int8-2:4+int4, got {pattern!r}"])
    recipe = Recipe.from_dict({"pattern": pat.sparse.spec(), "layer_types": list(layer_types),
                               "include_first_conv": include_first_conv, "exclude": list(exclude),
                               "include_narrow": True}, "sdq_model")
    chosen, skipped = find_layers(model, recipe)
    twice = [f"{n}: weight is already parametrized (squash it first)" for n, m in chosen.items()
             if parametrize.is_parametrized(m, "weight")]
    if twice:
        raise ConfigError("sdq_model", twice)
    bns = _bn_after(model)
    for name, m in chosen.items():
        w = cast(Tensor, m.weight).detach()
        groups = getattr(m, "groups", 1)
        why = pat.sparse.eligible(tuple(w.shape), groups)
        if why is not None:
            skipped[name] = why
            continue
        p = SDQParametrization(pat, torch.zeros_like(w, dtype=torch.bool), groups, bns.get(name))
        p.mask.copy_(prune_mask(pat.sparse, w * p.scale(w), groups).expand(w.shape))
        parametrize.register_parametrization(m, "weight", p)
    if not sdq_parametrizations(model):
        raise ConfigError("sdq_model", ["no layer takes the parts"] + [f"{n}: {r}" for n, r in skipped.items()])
    return skipped


def sdq_parametrizations(model: nn.Module) -> dict[str, tuple[nn.Module, SDQParametrization]]:
    """The model's SDQ layers: name -> (module, its parametrization)."""
    return parametrized_layers(model, SDQParametrization)


def _require(model: nn.Module, where: str) -> dict[str, tuple[nn.Module, SDQParametrization]]:
    layers = sdq_parametrizations(model)
    if not layers:
        raise ConfigError(where, ["the model has no SDQ parts; call sdq_model(model, 'int8-2:4+int4') first"])
    return layers


def _raw(m: nn.Module) -> Tensor:
    return cast(parametrize.ParametrizationList, cast(nn.ModuleDict, m.parametrizations)["weight"]).original


def finetune_sdq(model: nn.Module, train_loader: Iterable, epochs: int = 1, lr: float = 0.01, *,
                 test_loader: Iterable | None = None, training: TrainingConfig | None = None,
                 device: torch.device | str = "cpu",
                 loss_fn: Callable[[Tensor, Tensor], Tensor] = nn.functional.cross_entropy,
                 progress: bool = False) -> FitResult:
    """Train the whole model through the parts' fake quantization (masks fixed) with the ``Trainer``."""
    _require(model, "finetune_sdq")
    cfg = training if training is not None else validate_model(TrainingConfig, {"epochs": epochs, "lr": lr},
                                                                "finetune_sdq")
    return Trainer(model, None, None, train_loader, test_loader, cfg, device=device, loss_fn=loss_fn,
                   progress=progress).fit()


@torch.no_grad()
def export_sdq(model: nn.Module) -> dict[str, SDQ]:
    """Each SDQ layer's integer parts (of the BatchNorm-scaled weight, with its fixed mask)."""
    return {name: p.parts(_raw(m)) for name, (m, p) in _require(model, "export_sdq").items()}


@torch.no_grad()
def squash_sdq(model: nn.Module, parts: dict[str, SDQ] | None = None) -> dict[str, SDQ]:
    """Replace each SDQ weight by its parts' dequantized sum divided by the BatchNorm scale and remove
    the parametrizations (in place); returns the parts (``export_sdq``'s unless given)."""
    layers = _require(model, "squash_sdq")
    parts = export_sdq(model) if parts is None else parts
    for name, (m, p) in layers.items():
        w = _raw(m)
        plain = torch.from_numpy(parts[name].dequantized()) / p.scale(w.double()).cpu()
        parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
        cast(Tensor, m.weight).copy_(plain.to(w.dtype))
    return parts


def parts_record(d: SDQ) -> dict[str, Any]:
    """A checkpoint's record of one layer's parts (tensors and plain values)."""
    return {"sparse": torch.from_numpy(d.sparse.astype(np.int8)), "sparse_exp": int(d.sparse_exp),
            "dense": torch.from_numpy(d.dense.astype(np.int8)), "dense_exp": int(d.dense_exp),
            "mask": torch.from_numpy(d.mask.copy())}
