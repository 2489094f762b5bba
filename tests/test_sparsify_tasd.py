"""TASD on a model: the forward weight is decompose's sum (called here independently), every term obeys
its pattern before and after fine-tuning, fine-tuning lowers the loss with zeros kept exactly zero,
squashing keeps the outputs, and bad requests are refused clearly."""

from __future__ import annotations

import copy

import pytest
import torch
from _sparsify_helpers import ToyNet
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from tilesparse.errors import ConfigError
from tilesparse.patterns import NM, parse_pattern
from tilesparse.patterns.decompose import DEFAULT_TERMS, decompose, search_terms
from tilesparse.sparsify.tasd import export_terms, finetune_terms, squash_terms, tasd_model, term_layers

BOTH = ("conv", "linear")


def _net(seed: int = 0, classes: int = 10) -> ToyNet:
    torch.manual_seed(seed)
    return ToyNet(classes)


def _task(n: int = 128, classes: int = 4, seed: int = 0) -> tuple[DataLoader, Tensor, Tensor]:
    """A learnable toy task: the label is the argmax of a fixed linear map of the channel means."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 6, 6, generator=g)
    y = (x.mean(dim=(2, 3)) @ torch.randn(3, classes, generator=g)).argmax(1)
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(seed))
    return loader, x, y


def _modules(model: nn.Module) -> dict[str, nn.Module]:
    return dict(model.named_modules())


def _assert_terms_obey(model: nn.Module) -> None:
    mods = _modules(model)
    for name, terms in export_terms(model).items():
        m = mods[name]
        for term in terms:
            assert parse_pattern(term.pattern).check(term.weight != 0, tuple(m.weight.shape), m.groups
                                                     if isinstance(m, nn.Conv2d) else 1) == [], (name, term.pattern)


@pytest.mark.parametrize("terms", [["2:4", "1:4"], [NM(1, 4), NM(1, 8)], "8x8@0.5/2:4+2:4"])
def test_forward_weight_is_the_independent_decomposition(terms):
    model = _net()
    dense = copy.deepcopy(model)
    report = tasd_model(model, terms, layer_types=BOTH)
    assert set(report.layers) == {"conv", "grouped", "fc"}  # stem: first conv; dw: depthwise, no term fits
    assert "first convolution" in report.skipped["stem"] and "per group <" in report.skipped["dw"]
    mods, ref = _modules(model), _modules(dense)
    for name, layer in report.layers.items():
        w = ref[name].weight.detach()
        d = decompose(w, [parse_pattern(t) for t in layer.terms], getattr(ref[name], "groups", 1))
        assert torch.equal(mods[name].weight, d.approximation)
        assert layer.error == pytest.approx(d.relative_error(w))
        assert layer.density == pytest.approx(sum(float(m.float().mean()) for m in d.masks))
        mods[name].weight = w  # re-assigning the dense weight projects onto the same masks: same terms
        assert torch.equal(mods[name].weight, d.approximation)
    _assert_terms_obey(model)
    assert torch.equal(mods["stem"].weight, ref["stem"].weight)


def test_density_picks_what_search_terms_picks():
    model = _net(1)
    dense = copy.deepcopy(model)
    report = tasd_model(model, density=0.6, max_terms=2)
    mods, ref = _modules(model), _modules(dense)
    for name, layer in report.layers.items():
        w, groups = ref[name].weight.detach(), ref[name].groups
        fitting = [p for p in DEFAULT_TERMS if p.eligible(tuple(w.shape), groups) is None]
        d = search_terms(w, 0.6, fitting, 2, groups)
        assert layer.terms == tuple(p.spec() for p in d.patterns)
        assert torch.equal(mods[name].weight, d.approximation)
        assert sum(1 - (p.nominal_sparsity() or 0) for p in d.patterns) <= 0.6 + 1e-12


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float(nn.functional.cross_entropy(model(x), y))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_finetune_lowers_the_loss_and_keeps_zeros_and_frozen_weights(optimizer):
    from tilesparse.sparsify import TrainingConfig

    model = _net(2, classes=4)
    loader, x, y = _task()
    tasd_model(model, ["2:4", "1:8"], layer_types=BOTH)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if "parametrizations" not in n}
    start = {n: m.parametrizations.weight.original.detach().clone() for n, (m, _) in term_layers(model).items()}
    before = _loss(model, x, y)
    cfg = TrainingConfig(epochs=4, lr=0.05 if optimizer == "sgd" else 0.01, optimizer=optimizer, weight_decay=1e-3)
    result = finetune_terms(model, loader, training=cfg, test_loader=[(x, y)])
    assert _loss(model, x, y) < before
    assert len(result.history) == 4 and result.final_accuracy is not None
    for name, (m, p) in term_layers(model).items():
        raw = m.parametrizations.weight.original
        assert not torch.equal(raw, start[name])  # the terms moved
        off = p.masks == 0
        assert bool((raw[off] == 0).all())  # stored values under a zero mask are exactly zero
        union = p.masks.sum(0) > 0
        assert bool((m.weight[~union] == 0).all())  # so is the forward weight off every term's mask
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
        assert p.requires_grad  # requires_grad restored after training
    _assert_terms_obey(model)


def test_train_others_moves_the_other_weights():
    model = _net(3, classes=4)
    loader, _, _ = _task()
    tasd_model(model, "2:4")
    stem = model.stem.weight.detach().clone()
    finetune_terms(model, loader, epochs=1, lr=0.05, train_others=True)
    assert not torch.equal(model.stem.weight, stem)


def test_squash_keeps_outputs_and_leaves_a_plain_model():
    model = _net(4, classes=4)
    loader, x, _ = _task()
    tasd_model(model, ["2:4", "1:4"], layer_types=BOTH)
    finetune_terms(model, loader, epochs=1, lr=0.05)
    terms = export_terms(model)
    want = {n: m.weight.detach().clone() for n, (m, _) in term_layers(model).items()}
    out = model(x).detach()
    plain = squash_terms(model)
    assert plain is model and term_layers(model) == {}
    assert torch.allclose(plain(x), out, atol=1e-6)
    assert not any("parametrizations" in k for k in plain.state_dict())
    mods = _modules(plain)
    for name, w in want.items():
        assert torch.equal(mods[name].weight, w)
        assert torch.allclose(sum(t.weight for t in terms[name]), w)


def test_bad_requests_are_refused_clearly():
    with pytest.raises(ConfigError, match="at least one term"):
        tasd_model(_net(), [])
    with pytest.raises(ConfigError, match=r"term 1 \(8x8\) has a free sparsity"):
        tasd_model(_net(), ["8x8"])
    with pytest.raises(ConfigError, match="term 2: .*cannot read"):
        tasd_model(_net(), ["2:4", "two:four"])
    with pytest.raises(ConfigError, match="exactly one of terms"):
        tasd_model(_net(), ["2:4"], density=0.5)
    with pytest.raises(ConfigError, match="exactly one of terms"):
        tasd_model(_net())
    for bad in (0, -1.0, True, float("nan")):
        with pytest.raises(ConfigError, match="density"):
            tasd_model(_net(), density=bad)
    with pytest.raises(ConfigError, match="exclude"):
        tasd_model(_net(), "2:4", exclude=("nope*",))


def test_nothing_eligible_names_every_layer_and_changes_nothing():
    only_first = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(ConfigError, match="no layer takes the terms") as e:
        tasd_model(only_first, "2:4")
    assert "first convolution" in str(e.value) and "layer_types" in str(e.value)
    model = _net()
    with pytest.raises(ConfigError, match="(?s)no layer takes the terms.*fits density 0.01"):
        tasd_model(model, density=0.01)
    assert term_layers(model) == {}
    with pytest.raises(ConfigError, match="term 1:32: 16 input channels per group < M = 32"):
        tasd_model(model, ["1:32"])
    assert term_layers(model) == {}


def test_twice_and_no_terms_are_refused():
    model = _net()
    tasd_model(model, "2:4")
    with pytest.raises(ConfigError, match="conv: weight is already parametrized"):
        tasd_model(model, "1:4")
    plain = _net()
    for call in (lambda: finetune_terms(plain, [], epochs=1), lambda: export_terms(plain),
                 lambda: squash_terms(plain)):
        with pytest.raises(ConfigError, match="no TASD terms"):
            call()


def test_bad_finetune_settings_are_config_errors():
    model = _net()
    tasd_model(model, "2:4")
    loader, _, _ = _task()
    with pytest.raises(ConfigError, match="finetune_terms.*lr"):
        finetune_terms(model, loader, epochs=1, lr=-1.0)
