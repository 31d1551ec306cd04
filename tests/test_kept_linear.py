"""flexops.nn.kept_linear.KeptLinear: nn.Linear (then GELU) on the same Parameters, its CPU inference
output from kept memory; equal to F.linear (then F.gelu) with and without autograd."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flexops.nn.kept_linear import KeptLinear


@pytest.mark.parametrize("gelu", [None, "none", "tanh"])
@pytest.mark.parametrize("bias", [True, False])
def test_kept_linear_equals_linear(gelu, bias):
    torch.manual_seed(0)
    linear = nn.Linear(24, 40, bias=bias).double()
    kept = KeptLinear(linear, gelu)
    assert kept.weight is linear.weight and list(kept.state_dict()) == list(linear.state_dict())
    x = torch.randn(2, 16, 16, 24, dtype=torch.float64)  # 4-D as a Swin block's token map

    def expected(x):
        out = F.linear(x, linear.weight, linear.bias)
        return out if gelu is None else F.gelu(out, approximate=gelu)

    with torch.no_grad():
        torch.testing.assert_close(kept(x), expected(x), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(kept(x.transpose(1, 2)), expected(x.transpose(1, 2)), rtol=1e-12, atol=1e-12)
    x.requires_grad_()
    kept(x).sum().backward()
    grad = x.grad.clone()
    x.grad = None
    expected(x).sum().backward()
    torch.testing.assert_close(grad, x.grad)
