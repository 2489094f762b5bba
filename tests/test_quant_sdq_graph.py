"""SDQ inside the graph quantizer: the integer reference computes an SDQ layer exactly (held equal to
a float64 PyTorch conv of the dequantized parts, requantized by hand), the graph stays close to the
float model, the sparse part obeys its pattern, other layers are untouched, and the compiler refuses
SDQ layers by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tilesparse.compiler.pipeline import compile_graph
from tilesparse.errors import ConfigError
from tilesparse.frontend import build_graph
from tilesparse.passes.verify import verify
from tilesparse.patterns import NM, Block
from tilesparse.quant import IntegerReference, QuantizationError, SDQConfig, quantize, sdq_layers

SDQ_SETTINGS = [SDQConfig("1:8", layers=("features_2",)), SDQConfig(Block(1, 8, 0.5), dense_bits=5, layers=("fc",))]


class _Net(nn.Module):
    """conv (3 channels: no 1:8 run fits) → grouped conv with outliers → pool → linear."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=2), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.features(x), 1))


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    net = _Net().eval()
    with torch.no_grad():  # one large weight in some runs of 8: the outliers SDQ keeps at high precision
        net.features[2].weight[:4, 0] *= 40
    g = build_graph(net, input_shape=(1, 3, 10, 10), quantized=False)
    rng = np.random.default_rng(0)
    calib = [rng.standard_normal((1, 3, 10, 10)).astype(np.float32) for _ in range(4)]
    return net, g, calib


def _by_hand(q, n, x_int: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The layer in float64 from the dequantized parts, input and bias: (real pre-activation sum,
    int8 output requantized half up). Every term is a dyadic number well inside 2**53: exact."""
    a, parts = n.attrs, n.attrs["sdq"]
    e_in, e_out = q.node(n.inputs[0]).out.scale_exp, n.out.scale_exp
    w = (q.param(n.name, "sdq_sparse") * 2.0 ** parts["sparse_exp"]
         + q.param(n.name, "sdq_dense") * 2.0 ** parts["dense_exp"])
    b = q.param(n.name, "bias") * 2.0 ** (e_in + a["weight_exp"])
    y = F.conv2d(torch.from_numpy(x_int * 2.0**e_in), torch.from_numpy(w), torch.from_numpy(b),
                 a["stride"], a["padding"], a["dilation"], a["groups"])
    act = F.relu(y) if a["activation"] == "relu" else y
    return y.numpy(), np.clip(np.floor(act.numpy() / 2.0**e_out + 0.5), -128, 127)


@pytest.mark.parametrize("per_channel", [False, True])
def test_reference_computes_sdq_layers_exactly(setup, per_channel):
    _, g, calib = setup
    q = quantize(g, calib, per_channel=per_channel, sdq=SDQ_SETTINGS)
    assert sdq_layers(q) == ["features_2", "fc"]
    exps = {k: (q.node(k).attrs["sdq"]["sparse_exp"], q.node(k).attrs["sdq"]["dense_exp"]) for k in sdq_layers(q)}
    assert exps["features_2"][0] > exps["features_2"][1] and exps["fc"][0] < exps["fc"][1]  # either part shifts
    ref = IntegerReference(q)
    for x in calib[:2]:
        out = ref.run(x, keep_accumulators=True)
        for name in sdq_layers(q):
            n = q.node(name)
            real, want = _by_hand(q, n, out[n.inputs[0]].astype(np.float64))
            e_acc = q.node(n.inputs[0]).out.scale_exp + n.attrs["weight_exp"]
            assert np.array_equal(out[f"{name}.acc"] * 2.0**e_acc, real)
            assert np.array_equal(out[name], want) and len(np.unique(want)) > 5


def test_sdq_graph_stays_close_to_the_float_model(setup):
    net, g, calib = setup
    ref = IntegerReference(quantize(g, calib, sdq=SDQ_SETTINGS))
    for x in calib:
        got = ref.dequantized_output(x).ravel()
        want = net(torch.from_numpy(x)).detach().double().numpy().ravel()
        assert got @ want / (np.linalg.norm(got) * np.linalg.norm(want)) > 0.99


def test_parts_follow_their_pattern_and_ranges(setup):
    _, g, calib = setup
    q = verify(quantize(g, calib, sdq=SDQ_SETTINGS), after="quantize with sdq")
    for name, cfg in (("features_2", SDQ_SETTINGS[0]), ("fc", SDQ_SETTINGS[1])):
        sparse, mask, dense = (q.param(name, p) for p in ("sdq_sparse", "sdq_mask", "sdq_dense"))
        shape, groups = tuple(g.param(name, "weight").shape), g.node(name).attrs["groups"]
        assert f"{name}.weight" not in q.params and sparse.shape == dense.shape == mask.shape == shape
        assert cfg.pattern.check(torch.from_numpy(mask), shape, groups) == []
        lo = -(2 ** (cfg.dense_bits - 1))
        assert not sparse[~mask].any() and dense.min() >= lo and dense.max() <= -lo - 1
        # the parts sum to the float weight within half a step of the dense part
        parts = q.node(name).attrs["sdq"]
        deq = sparse * 2.0 ** parts["sparse_exp"] + dense * 2.0 ** parts["dense_exp"]
        assert np.abs(deq - g.param(name, "weight")).max() <= 2.0 ** parts["dense_exp"] / 2
    assert q.node("fc").attrs["sdq"]["pattern"] == "1x8@0.5"


def test_other_layers_and_plain_graphs_unchanged(setup):
    _, g, calib = setup
    plain, again = quantize(g, calib), quantize(g, calib, sdq=None)
    sdq_g = quantize(g, calib, sdq=SDQ_SETTINGS)
    assert plain.nodes == again.nodes and plain.params.keys() == again.params.keys()
    assert all(np.array_equal(plain.params[k], again.params[k]) for k in plain.params)
    for n in plain:
        if n.name not in sdq_layers(sdq_g):  # the measured activation zeros follow the SDQ layers' values
            m = sdq_g.node(n.name)
            assert m.with_(attrs={**m.attrs, "zero_frac": None}) == n.with_(attrs={**n.attrs, "zero_frac": None})
    mine = [k for k in sdq_g.params if k.split(".")[0] not in sdq_layers(sdq_g)]
    assert mine == [k for k in plain.params if k.split(".")[0] not in sdq_layers(sdq_g)]
    assert all(np.array_equal(plain.params[k], sdq_g.params[k]) for k in mine)
    a, b = IntegerReference(plain).run(calib[0]), IntegerReference(sdq_g).run(calib[0])
    assert np.array_equal(a["features_0"], b["features_0"])  # before the first SDQ layer


def test_degenerate_layers(setup):
    _, g, calib = setup
    params = dict(g.params)
    params["fc.weight"] = np.zeros_like(params["fc.weight"])  # every weight pruned: the bias is all that is left
    zero = g.replace_nodes(g.nodes, params)
    q, plain = quantize(zero, calib, sdq=SDQ_SETTINGS), quantize(zero, calib)
    e = q.node("fc").attrs["sdq"]
    assert e["sparse_exp"] == e["dense_exp"] == q.node("fc").attrs["weight_exp"] == plain.node("fc").attrs["weight_exp"]
    assert np.array_equal(IntegerReference(q).run(calib[0])["fc"], IntegerReference(plain).run(calib[0])["fc"])
    params["fc.weight"], params["fc.bias"] = g.params["fc.weight"] * 1e-6, np.full(10, 1e4, np.float32)
    with pytest.raises(QuantizationError, match="sdq layer 'fc': bias"):
        quantize(g.replace_nodes(g.nodes, params), calib, sdq=SDQ_SETTINGS)


def test_compiler_refuses_sdq_layers_it_cannot_pack_by_name(setup):
    _, g, calib = setup  # fc's dense part is int5: the parts format holds int8 + int4 only
    with pytest.raises(ConfigError, match=r"layer 'fc'.*int8 \+ int5.*int8 \+ int4"):
        compile_graph(quantize(g, calib, sdq=SDQ_SETTINGS), "2x2")
    prog = compile_graph(quantize(g, calib, sdq=SDQ_SETTINGS[:1]), "2x2")  # int8 1:8 + int4 packs
    assert next(r for r in prog.layers if r.name == "features_2").geometry.weight_format == "parts"
    q = quantize(g, calib, sdq=SDQ_SETTINGS)  # any other step asking for its one int8 weight: named, not a KeyError
    with pytest.raises(ConfigError, match=r"'features_2' is an SDQ layer"):
        q.param("features_2", "weight")


def test_every_fitting_layer_with_a_glob(setup):
    net, g, calib = setup
    q = quantize(g, calib, sdq=SDQConfig(NM(1, 8)))  # features_0 (3 input channels) is skipped
    assert sdq_layers(q) == ["features_2", "fc"]
    built = build_graph(net, input_shape=(1, 3, 10, 10), calib_inputs=calib, sdq=SDQConfig(NM(1, 8)))
    assert built.nodes == q.nodes
    q = quantize(g, calib, sdq=SDQConfig("1:8", layers=("features.2",)))  # the module path works too
    assert sdq_layers(q) == ["features_2"]


@pytest.mark.parametrize(("cfg", "message"), [
    (dict(sparse="1:8", layers=("nothing*",)), "'nothing\\*' matches no conv"),
    (dict(sparse="1:8", layers=("features_0",)), "'features_0': pattern 1:8 does not fit"),
    (dict(sparse="1:8", layers=("features_4",)), "matches no conv"),
])
def test_bad_layer_choices_refused(setup, cfg, message):
    _, g, calib = setup
    with pytest.raises(ConfigError, match=message):
        quantize(g, calib, sdq=SDQConfig(**cfg))


def test_bad_settings_refused():
    with pytest.raises(ConfigError, match="sdq.sparse_bits"):
        SDQConfig("1:8", sparse_bits=12)
    with pytest.raises(ConfigError, match="free sparsity"):
        SDQConfig("8x8")
    with pytest.raises(ConfigError, match="sdq.layers"):
        SDQConfig("2:4", layers=())
