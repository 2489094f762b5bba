"""Checkpoints trained to TASD (2:4+1:4) or SDQ (int8-2:4+int4) compile with the pattern they carry:
a digits CNN trained a few steps to each, saved, compiled from the file and simulated bit-exact; the
compiled graph's weights are computed again here from the checkpoint's own tensors (terms, parts,
BatchNorm statistics); a disagreeing --pattern and a damaged entry are refused naming file and field."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
import torch
from sim_helpers import check_bit_exact

from tilesparse.build import build_graph_from
from tilesparse.compiler.pipeline import compile_graph
from tilesparse.data.digits import digits_loaders
from tilesparse.errors import CheckpointError, ConfigError
from tilesparse.models.zoo import get_model
from tilesparse.patterns import parse_pattern
from tilesparse.quant.rounding import pow2_exponent, quantize_real
from tilesparse.sparsify import TrainingConfig
from tilesparse.sparsify.checkpoint import read_checkpoint, save_checkpoint
from tilesparse.sparsify.composite import save_composite_checkpoint
from tilesparse.sparsify.sdq_train import export_sdq, finetune_sdq, sdq_model
from tilesparse.sparsify.tasd import finetune_terms, tasd_model

SHAPE = (1, 1, 8, 8)


class _Few:
    """The first ``n`` batches of a loader (a few training steps)."""

    def __init__(self, loader, n: int):
        self.loader, self.n = loader, n

    def __iter__(self):
        return itertools.islice(iter(self.loader), self.n)

    def __len__(self) -> int:
        return self.n


def _train_cfg() -> TrainingConfig:
    return TrainingConfig(epochs=1, lr=0.02, batch_size=32, seed=0)


def _digits():
    torch.manual_seed(0)
    model = get_model("digits_cnn")
    train, _ = digits_loaders(batch_size=32, seed=0)
    return model, _Few(train, 6)


def _folded(ck: dict, conv: str, bn: str) -> np.ndarray:
    """conv weight x gamma / sqrt(var + eps) from the checkpoint's tensors (what the graph folds)."""
    st = ck["model_state"]
    s = st[f"{bn}.weight"].double() / torch.sqrt(st[f"{bn}.running_var"].double() + 1e-5)
    return (st[f"{conv}.weight"].double() * s.reshape(-1, 1, 1, 1)).numpy()


@pytest.fixture(scope="module")
def tasd_ckpt(tmp_path_factory):
    model, few = _digits()
    tasd_model(model, "2:4+1:4", layer_types=("conv",))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "original" in n}
    finetune_terms(model, few, training=_train_cfg())
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if "original" in n)  # trained
    return save_composite_checkpoint(tmp_path_factory.mktemp("tasd") / "sparse.pt", model, model_name="digits_cnn")


@pytest.fixture(scope="module")
def sdq_ckpt(tmp_path_factory):
    model, few = _digits()
    sdq_model(model, "int8-2:4+int4")
    start = export_sdq(model)
    finetune_sdq(model, few, training=_train_cfg())
    after = export_sdq(model)
    assert any(not np.array_equal(start[n].dense, after[n].dense) for n in after)  # trained
    return save_composite_checkpoint(tmp_path_factory.mktemp("sdq") / "sparse.pt", model, model_name="digits_cnn")


def test_a_tasd_checkpoint_compiles_its_trained_terms_squashed(tasd_ckpt):
    ck = read_checkpoint(tasd_ckpt)
    layers = ck["composite"]["layers"]
    assert ck["composite"]["pattern"] == "2:4+1:4" and set(layers) == {"features.3", "features.7", "features.10"}
    built = build_graph_from(str(tasd_ckpt))
    assert built.pattern == "2:4+1:4" and built.selection == "checkpoint-weights"
    prog = compile_graph(built.graph, "4x4")
    check_bit_exact(built.graph, prog, module=built.module)
    nodes = {n.source: n.name for n in built.graph if n.source in layers}
    for conv, bn in (("features.3", "features.4"), ("features.7", "features.8"), ("features.10", "features.11")):
        terms = layers[conv]["values"]
        for spec, t in zip(layers[conv]["terms"], terms, strict=True):  # each trained term obeys its pattern
            assert parse_pattern(spec).check(t != 0, tuple(t.shape[0:]), 1) == []
        assert torch.equal(terms.sum(0), ck["model_state"][f"{conv}.weight"])
        st = ck["model_state"]
        s = st[f"{bn}.weight"].double() / torch.sqrt(st[f"{bn}.running_var"].double() + 1e-5)
        want_real = (terms.sum(0).double() * s.reshape(-1, 1, 1, 1)).numpy()  # independent: terms x BN scale
        got = built.graph.params[f"{nodes[conv]}.weight"]
        e = pow2_exponent(float(np.abs(want_real).max()))
        assert built.graph.node(nodes[conv]).attrs["weight_exp"] == e
        assert (got == quantize_real(want_real, e)).all()
        assert not got[(terms != 0).sum(0).numpy() == 0].any()  # zero wherever no term keeps the weight


def test_an_sdq_checkpoint_compiles_its_trained_parts(sdq_ckpt):
    ck = read_checkpoint(sdq_ckpt)
    layers = ck["composite"]["layers"]
    assert ck["composite"]["pattern"] == "int8-2:4+int4" and set(layers) == {"features.3", "features.7",
                                                                            "features.10", "fc"}
    built = build_graph_from(str(sdq_ckpt))
    assert built.pattern == "int8-2:4+int4"
    prog = compile_graph(built.graph, "4x4")
    assert {r.geometry.weight_format for r in prog.layers if r.kind == "conv"} == {"block", "parts"}
    check_bit_exact(built.graph, prog, module=built.module)
    nodes = {n.source: n for n in built.graph if n.source in layers}
    for name, rec in layers.items():  # the compiled parts are the checkpoint's codes, not re-derived
        node = nodes[name]
        g = built.graph.params
        assert (g[f"{node.name}.sdq_sparse"].reshape(rec["sparse"].shape) == rec["sparse"].numpy()).all(), name
        assert (g[f"{node.name}.sdq_dense"].reshape(rec["dense"].shape) == rec["dense"].numpy()).all(), name
        sdq = node.attrs["sdq"]
        assert (sdq["sparse_exp"], sdq["dense_exp"]) == (rec["sparse_exp"], rec["dense_exp"])
        assert ((rec["sparse"] != 0) <= rec["mask"]).all()
        assert ((rec["mask"].reshape(rec["mask"].shape[0], -1, 4, *rec["mask"].shape[2:])).sum(2) <= 2).all()
    # the parts sum to the checkpoint's weight with the BatchNorm folded, within float rounding
    deq = layers["features.3"]["sparse"].double() * 2.0 ** layers["features.3"]["sparse_exp"] + \
        layers["features.3"]["dense"].double() * 2.0 ** layers["features.3"]["dense_exp"]
    assert np.allclose(_folded(ck, "features.3", "features.4"), deq.numpy(), rtol=0, atol=1e-6)


def test_the_cli_compiles_and_simulates_a_composite_checkpoint(sdq_ckpt, tmp_path, run_cli):
    run = run_cli
    code, cap = run("compile", str(sdq_ckpt), "-a", "4x2", "--pattern", "int8-2:4+int4", "-o", "p.tsp")
    assert code in (0, None), cap.err
    code, cap = run("simulate", "p.tsp")
    assert code in (0, None), cap.out + cap.err
    assert "bit-exact" in cap.out
    code, cap = run("compile", str(sdq_ckpt), "-a", "4x2", "--pattern", "2:4+1:4", "-o", "q.tsp")
    assert code not in (0, None)
    assert "field composite.pattern is int8-2:4+int4" in cap.err and "sparse.pt" in cap.err
    # the cost model prices it as its pattern's terms: an int8 2:4 row and an int4 row per layer
    code, cap = run("map", str(sdq_ckpt), "-a", "4x4", "--budget", "60", "--no-progress",
                    "--json", "m.json")
    assert code in (0, None), cap.err
    import json

    names = [r["layer"] for r in json.loads((tmp_path / "m.json").read_text())["layers"]]
    assert names[0] == "features_0" and {"features_3/int8-2:4", "features_3/int4", "fc/int4"} <= set(names)


def test_a_disagreeing_pattern_is_refused_naming_file_and_field(tasd_ckpt, sdq_ckpt):
    for ckpt, asked, carried in ((tasd_ckpt, "int8-2:4+int4", "2:4+1:4"), (sdq_ckpt, "2:4", "int8-2:4+int4"),
                                 (tasd_ckpt, "2:4+2:8", "2:4+1:4")):
        with pytest.raises(ConfigError, match=re.escape(f"sparse.pt: field composite.pattern is {carried}, "
                                                        f"--pattern {asked} disagrees")):
            build_graph_from(str(ckpt), pattern=asked)
    assert build_graph_from(str(tasd_ckpt), pattern="2:4+1:4").pattern == "2:4+1:4"  # the same: accepted


def test_damaged_terms_and_parts_are_refused_naming_the_field(tasd_ckpt, sdq_ckpt, tmp_path):
    ck = read_checkpoint(tasd_ckpt)
    model = get_model("digits_cnn")
    model.load_state_dict(ck["model_state"])
    comp = ck["composite"]
    comp["layers"]["features.3"]["values"][0] *= 2  # the terms no longer sum to the weight
    save_checkpoint(tmp_path / "t.pt", model, model_name="digits_cnn", composite=comp)
    with pytest.raises(CheckpointError, match=r"t.pt: field composite.layers.features.3.values: the terms do not"):
        build_graph_from(str(tmp_path / "t.pt"))
    ck = read_checkpoint(sdq_ckpt)
    model.load_state_dict(ck["model_state"])
    comp = ck["composite"]
    comp["layers"]["fc"]["dense"][0, 0] = 9  # outside int4
    comp["layers"]["features.7"]["mask"][:] = True  # breaks 2:4
    save_checkpoint(tmp_path / "s.pt", model, model_name="digits_cnn", composite=comp)
    with pytest.raises(CheckpointError, match=r"(?s)layers.features.7.mask: breaks 2:4.*layers.fc.dense: codes"):
        build_graph_from(str(tmp_path / "s.pt"))
    ck = read_checkpoint(sdq_ckpt)
    state = dict(ck["model_state"])
    state["features.8.running_var"] = state["features.8.running_var"] * 4  # another BatchNorm: parts do not sum
    model.load_state_dict(state)
    save_checkpoint(tmp_path / "b.pt", model, model_name="digits_cnn", composite=ck["composite"])
    with pytest.raises(ConfigError, match=r"trained parts of features.7 do not sum to the graph's weight"):
        build_graph_from(str(tmp_path / "b.pt"))


def test_saving_refuses_a_model_without_one_composite_pattern(tmp_path):
    plain = get_model("digits_cnn")
    with pytest.raises(ConfigError, match="neither TASD terms nor SDQ parts"):
        save_composite_checkpoint(tmp_path / "x.pt", plain, model_name="digits_cnn")
    both = get_model("digits_cnn")
    tasd_model(both, "2:4+1:4", exclude=("features.10",))
    sdq_model(both, "int8-2:4+int4", layer_types=("linear",))
    with pytest.raises(ConfigError, match="both TASD terms and SDQ parts"):
        save_composite_checkpoint(tmp_path / "x.pt", both, model_name="digits_cnn")
    mixed = get_model("digits_cnn")
    tasd_model(mixed, "2:4+1:4", exclude=("features.10",))
    tasd_model(mixed, "2:4", exclude=("features.3", "features.7"))
    with pytest.raises(ConfigError, match="different term lists"):
        save_composite_checkpoint(tmp_path / "x.pt", mixed, model_name="digits_cnn")
    assert not (tmp_path / "x.pt").exists()


def test_sparsify_trains_a_composite_pattern_and_its_checkpoint_compiles(tmp_path, run_cli):
    run = run_cli
    code, cap = run("sparsify", "digits_cnn", "--pattern", "2:4+1:4", "--epochs", "1", "--seed", "1", "-o", "t",
                    "--json", "t.json")
    assert code in (0, None), cap.err
    import json

    rep = json.loads((tmp_path / "t.json").read_text())
    assert rep["pattern"] == "2:4+1:4" and rep["epochs"] == 1 and rep["final_accuracy"] is not None
    assert read_checkpoint(tmp_path / "t" / "sparse.pt")["composite"]["pattern"] == "2:4+1:4"
    built = build_graph_from(str(tmp_path / "t" / "sparse.pt"))
    assert built.pattern == "2:4+1:4"
    check_bit_exact(built.graph, compile_graph(built.graph, "4x2"), module=built.module)
    code, cap = run("sparsify", "digits_cnn", "--pattern", "int8-2:4+int4", "--method", "incremental", "--sparsity",
                    "0.5", "-o", "u")
    assert code == 2 and "--method" in cap.err and "--sparsity" in cap.err, cap.err
    assert not (tmp_path / "u").exists()
