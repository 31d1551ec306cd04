"""flexops.nn.dense: Linear and Conv2d are torch.nn's layers, except that a half-type CPU forward
where oneDNN does not run that type computes in float32 and rounds once."""

import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import flexops.nn.dense as dense
from flexops.nn.dense import Conv2d, Linear
from flexops.nn.kept_linear import KeptLinear


def pairs():
    """(flexops layer, torch.nn layer with the same parameters, input)."""
    torch.manual_seed(0)
    linear, conv = Linear(24, 40), Conv2d(6, 10, 3, padding=1, stride=2)
    yield linear, nn.Linear(24, 40), torch.randn(3, 5, 24)
    yield conv, nn.Conv2d(6, 10, 3, padding=1, stride=2), torch.randn(2, 6, 9, 11)


@pytest.fixture(params=[False, True], ids=["native", "emulated"])
def emulated(request, monkeypatch):
    """Runs a test as on a CPU with native half types, and as on one without (this one may be either)."""
    monkeypatch.setattr(dense, "NATIVE_ON_CPU", {torch.bfloat16: not request.param, torch.float16: not request.param})
    return request.param


@pytest.mark.parametrize("choice, native", [("native", "True True"), ("float32", "False False"), ("fast", None)])
def test_setting_forces_the_choice(choice, native):
    """FLEXOPS_CPU_HALF_PRODUCTS, read at import in a new process, forces the layers' choice as it
    does the CPU kernels'; another value is an error that names it."""
    code = "import torch, flexops.nn.dense as d; print(d.NATIVE_ON_CPU[torch.bfloat16], d.NATIVE_ON_CPU[torch.float16])"
    done = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, timeout=120,
                          env={**os.environ, "FLEXOPS_CPU_HALF_PRODUCTS": choice})
    if native is None:
        assert done.returncode != 0
        assert "FLEXOPS_CPU_HALF_PRODUCTS must be native, float32 or auto, not 'fast'" in done.stderr
    else:
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == native


def test_same_parameters_and_float32_results(emulated):
    for layer, plain, x in pairs():
        plain.load_state_dict(layer.state_dict())
        assert list(layer.state_dict()) == list(plain.state_dict())
        torch.testing.assert_close(layer(x), plain(x), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_type(dtype, emulated):
    """Cast whole: on a CPU without the type, float32 math on the rounded values rounded once (the
    forward and the input gradient); with it, PyTorch's own layer."""
    for layer, plain, x in pairs():
        plain.load_state_dict(layer.state_dict())
        layer, plain, x = layer.to(dtype), plain.to(dtype), x.to(dtype).requires_grad_()
        out = layer(x)
        assert out.dtype == dtype
        if emulated:
            widened = x.detach().float().requires_grad_()
            expected = plain.float()(widened)
            torch.testing.assert_close(out, expected.to(dtype), rtol=0, atol=0)
            out.float().sum().backward()
            expected.sum().backward()
            torch.testing.assert_close(x.grad, widened.grad.to(dtype), rtol=0, atol=0)
            assert layer.weight.grad.dtype == dtype
        else:
            torch.testing.assert_close(out, plain(x), rtol=0, atol=0)


def test_autocast(emulated):
    """Under CPU autocast (float32 parameters), the output is in the autocast dtype and gradients
    reach the float32 parameters."""
    for layer, plain, x in pairs():
        plain.load_state_dict(layer.state_dict())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, expected = layer(x), plain(x)
        assert out.dtype == torch.bfloat16
        if emulated:
            torch.testing.assert_close(out, plain(x).to(torch.bfloat16), rtol=0, atol=0)
        else:
            torch.testing.assert_close(out, expected, rtol=0, atol=0)
        out.float().sum().backward()
        assert layer.weight.grad.dtype == torch.float32 and layer.weight.grad.abs().sum() > 0


def test_kept_linear_in_an_emulated_half_type(emulated):
    """KeptLinear (flexops.accelerate's) computes a half-type inference as Linear does."""
    torch.manual_seed(0)
    linear = Linear(24, 40).to(torch.bfloat16)
    kept, x = KeptLinear(linear, "none"), torch.randn(2, 8, 24, dtype=torch.bfloat16)
    with torch.no_grad():
        torch.testing.assert_close(kept(x), nn.functional.gelu(linear(x)), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("conv", [dict(kernel_size=3, padding=1), dict(kernel_size=3, stride=2, padding=1),
                                  dict(kernel_size=5, padding=4, dilation=2), dict(kernel_size=(1, 3), padding=(0, 1)),
                                  dict(kernel_size=4, stride=3), dict(kernel_size=3, padding=2, groups=3)],
                         ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_inference_in_slices(conv, dtype, channels_last, monkeypatch):
    """An inference on a CPU without the half type widens bands of output rows (one or two rows at a
    time here) and rows of a Linear's input: the float32 layer's result on the rounded values, each
    rounded once (a band's float32 sums may take another order than the whole image's: one unit in
    the last place), in the input's memory format."""
    monkeypatch.setattr(dense, "NATIVE_ON_CPU", {torch.bfloat16: False, torch.float16: False})
    torch.manual_seed(0)
    layer = Conv2d(6, 9, **conv)
    x = torch.randn(2, 6, 13, 11)
    monkeypatch.setattr(dense, "SLICE_BYTES", 4 * 2 * (6 * 11 * layer.stride[0] + 9 * 11) * 2)  # two rows a band
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    half = Conv2d(6, 9, **conv).to(dtype)
    half.load_state_dict(layer.state_dict())
    with torch.no_grad():
        out = half(x.to(dtype))
        expected = nn.functional.conv2d(x.to(dtype).float(), half.weight.float(), half.bias.float(), layer.stride,
                                        layer.padding, layer.dilation, layer.groups)
    assert out.dtype == dtype and out.shape == expected.shape
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(out.float(), expected.to(dtype).float(), rtol=eps, atol=eps * 1e-3)
    linear = Linear(11, 7).to(dtype)
    monkeypatch.setattr(dense, "SLICE_BYTES", 4 * 3 * (11 + 7))  # three rows a slice
    with torch.no_grad():
        out = linear(x.to(dtype))
        expected = nn.functional.linear(x.to(dtype).float(), linear.weight.float(), linear.bias.float())
    assert out.dtype == dtype and out.shape == expected.shape
    torch.testing.assert_close(out.float(), expected.to(dtype).float(), rtol=eps, atol=eps * 1e-3)
