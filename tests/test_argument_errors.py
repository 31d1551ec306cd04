"""Malformed arguments shared by the ops: each gets one ArgumentError that names the argument and the
expected form, never a TypeError from deep inside, an integer overflow or a failed allocation."""

import numpy as np
import pytest
import torch

import flexops
from flexops.ops import ArgumentError, deform_conv2d, masked_conv2d, tunable_conv2d


def conv_calls():
    """Each convolution op on valid [1, 4, 8, 8] input, as a function of its keyword arguments."""
    x, weight = torch.randn(1, 4, 8, 8), torch.randn(4, 4, 3, 3)
    kernels, alpha = torch.randn(2, 4, 4, 3, 3), torch.rand(2)
    return {
        "deform_conv2d": lambda **kw: deform_conv2d(x, torch.zeros(1, 18, 8, 8), weight, **kw),
        "masked_conv2d": lambda **kw: masked_conv2d(x, weight, **kw),
        "tunable_conv2d": lambda **kw: tunable_conv2d(x, kernels, None, alpha, **kw),
    }


@pytest.mark.parametrize("op", sorted(conv_calls()))
@pytest.mark.parametrize(
    "change, message",
    [
        (dict(padding=1.5), r"padding must be an int or a pair of ints \(h, w\), got 1.5"),
        (dict(padding=None), r"padding must be an int or a pair of ints \(h, w\), got None"),
        (dict(padding="same"), r"padding must be an int or a pair of ints \(h, w\), got 'same'"),
        (dict(padding=torch.tensor(1)), r"padding must be an int or a pair of ints"),
        (dict(padding=(1, 1, 1)), r"padding must be an int or a pair of ints \(h, w\), got \(1, 1, 1\)"),
        (dict(padding=(1.0, 1)), r"padding must be an int or a pair of ints"),
        (dict(stride=True), r"stride must be an int or a pair of ints \(h, w\), got True"),
        (dict(dilation=(1, False)), r"dilation must be an int or a pair of ints"),
        (dict(dilation=-1), r"dilation must be >= 1, got \(-1, -1\)"),
        (dict(stride=0), r"stride must be >= 1, got \(0, 0\)"),
        (dict(padding=2**63), r"padding must be below 2\*\*63, got \(9223372036854775808, 9223372036854775808\)"),
        (dict(padding=2**62), r"padding \(4611686018427387904, 4611686018427387904\) and dilation \(1, 1\) are too "
                              r"large: input of spatial size \(8, 8\), padded, and the dilated kernel"),
        (dict(dilation=2**62), r"are too large"),
        (dict(padding=2**40), r"the output would be \[1, 4, 2199023255558, 2199023255558\], 1.93e\+25 elements"),
    ],
)
def test_bad_convolution_parameters(op, change, message):
    with pytest.raises(ArgumentError, match=message):
        conv_calls()[op](**change)


@pytest.mark.parametrize("op", sorted(conv_calls()))
def test_numpy_ints_are_ints(op):
    call = conv_calls()[op]
    expected = call(padding=1, stride=1)
    torch.testing.assert_close(call(padding=np.int64(1), stride=(np.int32(1), 1)), expected, rtol=0, atol=0)


def test_deform_conv2d_required_tensors():
    x, offset, weight = torch.randn(1, 4, 8, 8), torch.zeros(1, 18, 8, 8), torch.randn(4, 4, 3, 3)
    with pytest.raises(ArgumentError, match="offset must be a torch.Tensor, got NoneType"):
        deform_conv2d(x, None, weight, padding=1)
    with pytest.raises(ArgumentError, match="weight must be a torch.Tensor, got NoneType"):
        deform_conv2d(x, offset, None, padding=1)


@pytest.mark.parametrize("op", sorted(conv_calls()))
def test_empty_kernel(op):
    x = torch.randn(1, 4, 8, 8)
    calls = {
        "deform_conv2d": lambda: deform_conv2d(x, torch.zeros(1, 0, 8, 8), torch.randn(4, 4, 0, 3)),
        "masked_conv2d": lambda: masked_conv2d(x, torch.randn(4, 4, 0, 3)),
        "tunable_conv2d": lambda: tunable_conv2d(x, torch.randn(2, 4, 4, 3, 0), None, torch.rand(2)),
    }
    with pytest.raises(ArgumentError, match=r"the kernel must be at least 1x1, got \((0, 3|3, 0)\)"):
        calls[op]()


@pytest.mark.parametrize("groups", [True, 1.0, 0, "1"])
def test_tunable_groups_must_be_a_positive_int(groups):
    with pytest.raises(ArgumentError, match=f"groups must be a positive int, got {groups!r}"):
        conv_calls()["tunable_conv2d"](groups=groups)


def test_errors_are_caught_as_torchvision_and_flexops_errors():
    for caught in (ValueError, RuntimeError):
        with pytest.raises(caught):
            conv_calls()["masked_conv2d"](padding=1.5)
    assert flexops.ops.ArgumentError is ArgumentError
