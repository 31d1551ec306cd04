"""TunableConv2d, TunableLinear, TunableParameter: alpha maps, per-sample omega, FLOP counts."""

import pytest
import torch
import torch.nn.functional as F

import flexops
from flexops import TunableConv2d, TunableLinear, TunableParameter
from flexops.flops import count
from flexops.nn.tunable import Alphas, _tunable_linear


def test_conv_linear_mode_equals_blended_conv():
    layer = TunableConv2d(4, 6, 3, num_params=3, padding=1, mode="linear")
    x, omega = torch.randn(2, 4, 7, 7), torch.tensor([0.2, 0.5, 0.3])
    blended_w = torch.einsum("p,p...->...", omega, layer.weight)
    expected = F.conv2d(x, blended_w, omega @ layer.bias, padding=1)
    torch.testing.assert_close(layer(x, omega), expected, atol=1e-5, rtol=1e-5)


def test_conv_one_hot_omega_selects_a_kernel():
    layer = TunableConv2d(3, 5, (3, 2), num_params=4, stride=2, mode="linear")
    x = torch.randn(3, 3, 9, 8)
    for i in range(4):
        omega = F.one_hot(torch.tensor(i), 4).float()
        expected = F.conv2d(x, layer.weight[i], layer.bias[i], stride=2)
        torch.testing.assert_close(layer(x, omega), expected, atol=1e-5, rtol=1e-5)


def test_conv_mlp_mode_and_per_sample_omega():
    layer = TunableConv2d(4, 4, 3, num_params=2, padding=1, groups=2)
    x, omega = torch.randn(3, 4, 6, 6), torch.rand(3, 2)
    out = layer(x, omega)
    alpha = layer.mlp(omega)
    for b in range(3):
        torch.testing.assert_close(out[b : b + 1], layer(x[b : b + 1], omega[b]), atol=1e-5, rtol=1e-5)
        w = torch.einsum("p,p...->...", alpha[b], layer.weight)
        torch.testing.assert_close(out[b : b + 1], F.conv2d(x[b : b + 1], w, alpha[b] @ layer.bias, padding=1, groups=2),
                                   atol=1e-5, rtol=1e-5)
    out.sum().backward()
    assert layer.mlp.weight.grad is not None and layer.weight.grad is not None


def test_conv_initialisation_matches_conv2d_scale():
    layer = TunableConv2d(16, 16, 3, num_params=2)
    bound = 1 / (16 * 9) ** 0.5
    assert layer.weight.abs().max() <= bound and layer.bias.abs().max() <= bound
    assert not torch.equal(layer.weight[0], layer.weight[1])


def test_omega_errors():
    layer = TunableConv2d(2, 2, 3, num_params=2)
    with pytest.raises(ValueError, match="omega must be"):
        layer(torch.randn(1, 2, 5, 5), torch.randn(3))
    with pytest.raises(ValueError, match="mode must be"):
        TunableConv2d(2, 2, 3, num_params=2, mode="affine")
    with pytest.raises(ValueError, match="num_params"):
        TunableLinear(2, 2, num_params=0)


# x's shapes: any leading dimensions (the batch first for per-sample omega), empty ones, a single
# vector, and a transposed (non-contiguous) view.
LINEAR_INPUTS = {"tokens": (4, 7, 5), "image_rows": (4, 2, 3, 5), "one_token": (4, 1, 5), "no_tokens": (4, 0, 5),
                 "transposed": (7, 4, 5), "vector": (5,), "no_rows": (0, 5)}


@pytest.mark.parametrize("per_sample", [False, True], ids=["shared", "per_sample"])
@pytest.mark.parametrize("kind", LINEAR_INPUTS)
def test_linear(per_sample, kind):
    torch.manual_seed(0)
    shape = LINEAR_INPUTS[kind]
    if per_sample and len(shape) < 3:
        pytest.skip("per-sample omega needs a batch dimension before the features")
    layer = TunableLinear(5, 3, num_params=2, mode="linear").double()
    x = torch.randn(shape, dtype=torch.float64)
    if kind == "transposed":
        x = x.transpose(0, 1)
    batch = x.shape[0] if per_sample else 1
    omega = torch.rand(batch, 2, dtype=torch.float64) if per_sample else torch.rand(2, dtype=torch.float64)
    # Independently: each sample's blended matrix and bias, then a plain product.
    rows = omega.reshape(-1, 2)
    weights = torch.einsum("bp,poi->boi", rows, layer.weight)
    biases = rows @ layer.bias
    if per_sample:
        expected = torch.stack([F.linear(x[b], weights[b], biases[b]) for b in range(batch)])
    else:
        expected = F.linear(x, weights[0], biases[0])
    out = layer(x, omega)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-10)
    x.requires_grad_(True)
    omega.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, o, w, b: _linear_with(layer, x, o, w, b),
                                     (x, omega, layer.weight, layer.bias))
    with pytest.raises(ValueError, match="in_features"):
        layer(torch.randn(4, 6, dtype=torch.float64), omega)


def _linear_with(layer, x, omega, weight, bias):
    """The TunableLinear's forward with weight and bias given as inputs (for gradcheck)."""
    return _tunable_linear(x, weight, bias, layer.alpha(omega), layer.in_features, False)


def test_parameter():
    param = TunableParameter((3, 4), num_params=2, mode="linear", init=torch.nn.init.normal_)
    omega = torch.tensor([0.25, 0.75])
    torch.testing.assert_close(param(omega), 0.25 * param.weight[0] + 0.75 * param.weight[1])
    assert param(torch.rand(5, 2)).shape == (5, 3, 4)


def test_flop_count_of_tunable_conv():
    layer = TunableConv2d(8, 16, 3, num_params=3, padding=1, bias=False, mode="linear")
    x, omega = torch.randn(1, 8, 10, 10), torch.rand(3)
    conv_macs = 16 * 10 * 10 * 8 * 9
    blend_macs = 3 * 16 * 8 * 9
    assert count(layer, x, omega) == conv_macs + blend_macs
    with torch.utils.flop_counter.FlopCounterMode(display=False) as counter:
        layer(x, omega)
    assert counter.get_total_flops() == 2 * (conv_macs + blend_macs)


def test_public_import():
    assert flexops.TunableConv2d is TunableConv2d
    assert callable(flexops.ops.tunable_conv2d)


def test_layers_of_one_kernel_size_in_and_out_of_inference_mode():
    """CPU blends a shared omega's kernel into a buffer kept per kernel size: layers that share it,
    inference mode and autograd must not see each other's kernels."""
    layers = [flexops.TunableConv2d(3, 4, 3, 2, padding=1, mode="linear") for _ in range(2)]
    x, omega = torch.randn(1, 3, 6, 6), torch.tensor([0.3, 0.7])

    def expected(layer):
        kernel = torch.einsum("p,poihw->oihw", omega, layer.weight)
        return F.conv2d(x, kernel, omega @ layer.bias, padding=1)

    with torch.inference_mode():
        first = [layer(x, omega) for layer in layers]
    second = [layer(x, omega) for layer in layers]
    for layer, a, b in zip(layers, first, second):
        torch.testing.assert_close(a, expected(layer))
        torch.testing.assert_close(b, expected(layer))
    second[0].sum().backward()
    assert layers[0].weight.grad is not None


@pytest.mark.parametrize("per_sample", [False, True])
def test_alphas_computed_together_equal_each_layers_own(per_sample):
    """An Alphas (one batched product for all layers, mixed modes) gives every layer what its own
    forward gives it, and gradients reach the MLPs through it."""
    conv = TunableConv2d(3, 4, 3, num_params=2, padding=1, groups=1)
    linear = TunableLinear(4, 5, num_params=2)
    fixed = TunableConv2d(4, 4, 1, num_params=2, mode="linear")
    param = TunableParameter((4, 1, 1), num_params=2, init=torch.nn.init.normal_)
    x = torch.randn(3, 3, 5, 5)
    omega = torch.rand(3, 2) if per_sample else torch.rand(2)
    alphas = Alphas([conv, linear, fixed, param], omega)
    for layer in (conv, linear, param):
        torch.testing.assert_close(alphas.of(layer), layer.mlp(omega))
    assert alphas.of(fixed) is omega

    def net(o):
        y = fixed(conv(x, o), o) * param(o)
        return linear(y.permute(0, 2, 3, 1).reshape(3, 25, 4), o)

    expected, got = net(omega), net(alphas)
    torch.testing.assert_close(got, expected)
    got.sum().backward()
    grads = [layer.mlp.weight.grad.clone() for layer in (conv, linear, param)]
    for layer in (conv, linear, param):
        layer.mlp.weight.grad = None
    expected.sum().backward()
    for layer, grad in zip((conv, linear, param), grads):
        torch.testing.assert_close(grad, layer.mlp.weight.grad)


def test_layer_errors_speak_the_layers_language():
    layer = TunableConv2d(64, 64, 3, num_params=2, padding=1)
    with pytest.raises(ValueError, match=r"x must be \[B, in_channels=64, H, W\] for this layer, got \[1, 32, 8, 8\]"):
        layer(torch.randn(1, 32, 8, 8), torch.rand(2))
    with pytest.raises(RuntimeError, match="omega has 3 rows .* but x has 2 images"):
        layer(torch.randn(2, 64, 8, 8), torch.rand(3, 2))


@pytest.mark.parametrize("mode", ["mlp", "linear"])
def test_omega_of_another_dtype_is_taken_in_the_layers_dtype(mode):
    """omega is the user's setting: float64 or integer values mean what they say."""
    conv = TunableConv2d(4, 6, 3, num_params=2, padding=1, mode=mode)
    linear = TunableLinear(5, 3, num_params=2, mode=mode)
    parameter = TunableParameter((4, 2), num_params=2, mode=mode, init=torch.nn.init.normal_)
    x, tokens = torch.randn(2, 4, 6, 6), torch.randn(2, 7, 5)
    for omega in (torch.tensor([1.0, 0.0]), torch.tensor([[0.3, 0.7], [1.0, 0.0]])):
        for given in (omega.double(), omega.long() if omega.dim() == 1 else omega.half()):
            torch.testing.assert_close(conv(x, given), conv(x, omega.to(given.dtype).float()), rtol=0, atol=0)
            torch.testing.assert_close(linear(tokens, given), linear(tokens, omega.to(given.dtype).float()),
                                       rtol=0, atol=0)
            torch.testing.assert_close(parameter(given), parameter(omega.to(given.dtype).float()), rtol=0, atol=0)
