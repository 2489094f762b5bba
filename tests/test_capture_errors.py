"""Capture rejects what the IR cannot express, naming the op, the fx node and the module path."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tilesparse.errors import ConfigError, TilesparseError, UnsupportedOpError
from tilesparse.ir.capture import capture


class Block(nn.Module):
    def __init__(self, act: nn.Module):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.act = act

    def forward(self, x):
        return self.act(self.conv(x))


class Wrapper(nn.Module):
    def __init__(self, act: nn.Module):
        super().__init__()
        self.body = nn.Sequential(Block(act))

    def forward(self, x):
        return self.body(x)


def test_unsupported_module_names_op_node_and_path():
    with pytest.raises(UnsupportedOpError) as e:
        capture(Wrapper(nn.GELU()), (1, 3, 8, 8), "gelunet")
    msg = str(e.value)
    assert "GELU" in msg and "body_0_act" in msg and "body.0.act" in msg and "gelunet" in msg


class Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fn = fn

    def forward(self, x):
        return self.fn(self.conv(x))


@pytest.mark.parametrize("fn,words", [
    (torch.tanh, ["tanh"]),  # sigmoid is a lookup table now (tests/test_lut.py)
    (lambda x: x * 2, ["mul"]),
    (lambda x: x + 1.0, ["constant"]),
    (lambda x: F.hardtanh(x, -1.0, 1.0), ["hardtanh(-1.0, 1.0)"]),
    (lambda x: x[:, :4], ["getitem"]),
    (lambda x: x.permute(0, 2, 3, 1), ["permute"]),
    (lambda x: F.max_pool2d(x, 2, return_indices=True)[0], ["max_pool2d_with_indices"]),
    (lambda x: x.view(8, -1), ["not a flatten"]),
])
def test_unsupported_functions(fn, words):
    with pytest.raises(UnsupportedOpError) as e:
        capture(Lambda(fn), (1, 3, 8, 8), "net")
    for w in words:
        assert w in str(e.value)
    assert isinstance(e.value, TilesparseError)


def test_untraceable_control_flow_is_a_clear_error():
    class DataDependent(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(UnsupportedOpError, match="torch.fx cannot trace"):
        capture(DataDependent(), (1, 3, 4, 4), "dd")


def test_tuple_output_rejected():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            y = self.conv(x)
            return y, y

    with pytest.raises(UnsupportedOpError, match="output must be a single tensor"):
        capture(Two(), (1, 3, 4, 4))


def test_input_shape_that_does_not_fit_names_the_shape():
    with pytest.raises(ConfigError, match=r"input shape \(1, 4, 8, 8\) does not fit"):
        capture(Lambda(F.relu), (1, 4, 8, 8), "net")
