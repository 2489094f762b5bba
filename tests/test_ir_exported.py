"""``ir.exported.lift_exported``: the lifted module computes what the original PyTorch model
computes, and a weight the exported program computes is refused with a clear error."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tilesparse.errors import UnsupportedOpError
from tilesparse.ir.exported import lift_exported


def _exported(m: nn.Module, x: torch.Tensor) -> torch.fx.GraphModule:
    return torch.export.export(m.eval(), (x,)).module()


def test_lifted_modules_match_the_model_with_a_non_affine_batch_norm():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                      nn.Conv2d(8, 8, 3, stride=2, groups=2), nn.BatchNorm2d(8, affine=False),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    with torch.no_grad():
        for bn in (m[1], m[4]):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    x = torch.randn(1, 3, 16, 16)
    lifted = lift_exported(_exported(m, x))
    mods = dict(lifted.named_children())
    assert sorted(mods) == ["0", "1", "3", "4", "7"]  # named after the original modules
    assert isinstance(mods["4"], nn.BatchNorm2d) and not mods["4"].affine
    assert mods["0"].bias is None and mods["3"].groups == 2
    with torch.no_grad():
        torch.testing.assert_close(lifted(x), m.eval()(x))


class _ReshapedWeightConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 27))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.w.view(4, 3, 3, 3))  # the weight is a reshape, not a parameter


class _InputWeightConv(nn.Module):
    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, w)


def test_a_parameter_read_outside_a_module_is_refused():
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(UnsupportedOpError, match="reads parameter w outside a conv"):
        lift_exported(_exported(_ReshapedWeightConv(), x))


def test_a_weight_that_is_not_a_parameter_is_refused():
    gm = torch.export.export(_InputWeightConv(), (torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3, 3))).module()
    with pytest.raises(UnsupportedOpError, match="expected a parameter or buffer"):
        lift_exported(gm)
