"""Small hand-built IR graphs and array descriptions for the back-end tests."""

from __future__ import annotations

import numpy as np
import yaml

from tilesparse.ir.graph import Graph, Node, Op, TensorType

CONV = {"stride": (1, 1), "dilation": (1, 1), "groups": 1, "activation": "relu", "block": (8, 8)}


def conv_node(name, src, ci, co, h, w, k=3, stride=1, pad=None, rng=None, density=0.5, params=None):
    """A quantized conv node (int8 weight with a random block mask, int32 bias) and its params."""
    rng = rng or np.random.default_rng(0)
    pad = k // 2 if pad is None else pad
    ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    wgt = rng.integers(-127, 128, size=(co, ci, k, k)).astype(np.int8)
    mask = rng.random((-(-co // 8), -(-ci // 8))) < density
    mask[:, 0] = True  # no empty block row
    full = np.repeat(np.repeat(mask, 8, 0), 8, 1)[:co, :ci]
    wgt = (wgt * full[:, :, None, None]).astype(np.int8)
    params.update({f"{name}.weight": wgt, f"{name}.bias": rng.integers(-999, 999, co).astype(np.int32),
                   f"{name}.mask": mask})
    attrs = dict(CONV, kernel=(k, k), stride=(stride, stride), padding=(pad, pad), weight_exp=-7, shift=7)
    return Node(name, Op.CONV2D, (src,), TensorType((1, co, ho, wo), "int8", -4), attrs), (co, ho, wo)


def small_graph(ci=16, h=12, w=12, seed=0) -> Graph:
    """input -> conv3x3 -> conv1x1 (+ residual add) -> maxpool -> flatten -> linear-as-conv -> output."""
    rng = np.random.default_rng(seed)
    params: dict[str, np.ndarray] = {}
    nodes = [Node("x", Op.INPUT, (), TensorType((1, ci, h, w), "int8", -4))]
    n1, (_, h1, w1) = conv_node("c1", "x", ci, 24, h, w, 3, 1, rng=rng, params=params)
    n2, (c2, h2, w2) = conv_node("c2", "c1", 24, ci, h1, w1, 1, 1, rng=rng, params=params)
    nodes += [n1, n2]
    add = Node("add", Op.ADD, ("c2", "x"), TensorType((1, c2, h2, w2), "int8", -4), {"activation": "relu"})
    pool = Node("pool", Op.MAXPOOL, ("add",), TensorType((1, c2, h2 // 2, w2 // 2), "int8", -4),
                {"kernel": (2, 2), "stride": (2, 2), "padding": (0, 0), "dilation": (1, 1), "ceil_mode": False})
    flat_c = c2 * (h2 // 2) * (w2 // 2)
    flat = Node("flat", Op.FLATTEN, ("pool",), TensorType((1, flat_c, 1, 1), "int8", -4), {"start_dim": 1})
    fc, _ = conv_node("fc", "flat", flat_c, 10, 1, 1, 1, 1, pad=0, rng=rng, params=params)
    nodes += [add, pool, flat, fc, Node("out", Op.OUTPUT, ("fc",), fc.out)]
    return Graph(tuple(nodes), params, "small")


def tiny_hw_yaml(tmp_path, **core) -> str:
    """A YAML array description with shrunken core buffers (for cannot-fit errors)."""
    data = {"name": "tiny", "rows": 2, "cols": 2,
            "core": {"data_memory_bytes": 4096, "input_buffer_bytes": 64, "output_buffer_bytes": 256,
                     "weight_buffer_bytes": 256, **core}}
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(data))
    return str(p)
