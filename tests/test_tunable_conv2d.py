"""tunable_conv2d: every backend against the reference, gradients, opcheck, compile, errors."""

import itertools
import random

import pytest
import torch

import flexops
from flexops import backends, reference
from flexops.ops import tunable_conv2d

from shapes import assert_grads_match, case_id, layout, low_precision_tolerance, random_conv_cases

CPU_CASES = random_conv_cases(40, seed=1)
# Depthwise kernels (one input channel per output channel) on contiguous images with output rows of
# 96 or more run as a direct loop on CPU, whatever the kernel size, stride, padding and dilation:
# these images are 200 or more wide (narrower ones reach oneDNN, as CPU_CASES test).
DEPTHWISE_CASES = [dict(case, in_channels=channels, out_channels=channels, groups=channels, width=200 + case["width"],
                        layout="contiguous")
                   for case, channels in zip(random_conv_cases(16, seed=3), itertools.cycle((1, 4, 7)))]
# Per-sample pointwise kernels on contiguous fp32 images of 2 to 256 pixels run on CPU as a product
# that blends the kernels as it packs them (cpu/blended_pointwise.cpp): output channels past its
# 60-row panels and not a multiple of its 6-row tiles, input channels past its 512-deep panels,
# pixels not a multiple of its 16-pixel tiles.
BLENDED_POINTWISE_CASES = [
    dict(batch=batch, in_channels=in_channels, out_channels=out_channels, groups=1, kernel=(1, 1), height=height,
         width=width, stride=(1, 1), padding=(0, 0), dilation=(1, 1), layout="contiguous")
    for batch, in_channels, out_channels, (height, width) in zip(
        (1, 3, 2, 1, 2, 3, 1, 2), (1, 7, 64, 515, 1100, 33, 512, 9), (5, 61, 130, 7, 66, 1, 64, 12),
        ((1, 2), (3, 5), (8, 8), (16, 16), (4, 17), (15, 17), (2, 9), (16, 1)))]
# The Triton interpreter costs about 1 ms per program: small images, few channels.
TRITON_CASES = random_conv_cases(10, seed=2, max_channels=4, max_size=6, max_batch=2)


def make_args(case, dtype, shared, with_bias, p, requires_grad=False):
    kh, kw = case["kernel"]
    x = torch.randn(case["batch"], case["in_channels"], case["height"], case["width"], dtype=dtype)
    weight = torch.randn(p, case["out_channels"], case["in_channels"] // case["groups"], kh, kw, dtype=dtype)
    bias = torch.randn(p, case["out_channels"], dtype=dtype) if with_bias else None
    alpha = torch.randn(p, dtype=dtype) if shared else torch.randn(case["batch"], p, dtype=dtype)
    x = layout(x, case["layout"])
    tensors = [x, weight, bias, alpha]
    if requires_grad:
        for t in tensors:
            if t is not None:
                t.requires_grad_(True)
    conv = (case["stride"], case["padding"], case["dilation"], case["groups"])
    return tensors, conv


def variant(case):
    """Per-case p, alpha kind and bias, drawn from the case so each case is reproducible."""
    rng = random.Random(case_id(case))
    return rng.randint(1, 6), rng.random() < 0.5, rng.random() < 0.7


def check_against_reference(backend, case, dtype, atol, rtol, per_sample=False):
    p, shared, with_bias = variant(case)
    shared = shared and not per_sample
    (x, weight, bias, alpha), conv = make_args(case, dtype, shared, with_bias, p, requires_grad=True)
    with backends.use(backend):
        out = tunable_conv2d(x, weight, bias, alpha, *conv)
    expected = reference.tunable_conv2d(x, weight, bias, alpha, *conv)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, atol=atol, rtol=rtol)

    inputs = [t for t in (x, weight, bias, alpha) if t is not None]
    assert_grads_match(out, expected, inputs, atol, rtol)


@pytest.mark.parametrize("case", CPU_CASES, ids=case_id)
def test_cpu_matches_reference(case):
    check_against_reference("cpu", case, torch.float64, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("case", DEPTHWISE_CASES, ids=case_id)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_cpu_depthwise_matches_reference(case, dtype):
    tolerance = {torch.float64: (1e-10, 1e-8), torch.float32: (1e-4, 1e-4)}[dtype]
    check_against_reference("cpu", case, dtype, *tolerance)


@pytest.mark.parametrize("case", CPU_CASES[:10], ids=case_id)
def test_cpu_float32_matches_reference(case):
    check_against_reference("cpu", case, torch.float32, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("case", BLENDED_POINTWISE_CASES, ids=case_id)
def test_cpu_blended_pointwise_matches_reference(case):
    check_against_reference("cpu", case, torch.float32, atol=1e-4, rtol=1e-4, per_sample=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per_sample"])
@pytest.mark.parametrize("case", CPU_CASES[:12] + DEPTHWISE_CASES[:4] + BLENDED_POINTWISE_CASES, ids=case_id)
def test_cpu_low_precision_matches_reference(case, shared, dtype, monkeypatch):
    """bfloat16 and float16 on CPU without half-type products (as on a CPU whose oneDNN lacks them):
    with one alpha the p kernels are blended from the half type into float32, and contiguous
    pointwise and direct depthwise convolutions widen their images tile by tile (515 -> 7 channels at
    16x16: two tiles of pixels); per sample every argument is widened at the boundary. Either way the
    output equals the float32 op's on the same rounded values, rounded once, and lies within the
    dtype's tolerance of the float64 reference."""
    monkeypatch.setenv("FLEXOPS_CPU_HALF_PRODUCTS", "float32")
    p, _, with_bias = variant(case)
    (x, weight, bias, alpha), conv = make_args(case, torch.float32, shared, with_bias, p)
    rounded = [t if t is None else t.to(dtype) for t in (x, weight, bias, alpha)]
    out = tunable_conv2d(*rounded, *conv)
    widened = tunable_conv2d(*(t if t is None else t.float() for t in rounded), *conv)
    assert out.dtype == dtype
    torch.testing.assert_close(out, widened.to(dtype), atol=0, rtol=0)
    expected = reference.tunable_conv2d(*(t if t is None else t.double() for t in rounded), *conv)
    kh, kw = case["kernel"]
    atol, rtol = low_precision_tolerance(dtype, p * case["in_channels"] // case["groups"] * kh * kw)
    torch.testing.assert_close(out.double(), expected, atol=atol, rtol=rtol)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per_sample"])
@pytest.mark.parametrize("case", CPU_CASES[:12] + DEPTHWISE_CASES[:4] + BLENDED_POINTWISE_CASES, ids=case_id)
def test_cpu_half_type_products_match_reference(case, shared, dtype, monkeypatch):
    """Where oneDNN multiplies in the half type (forced here, so on any CPU): the kernels and biases
    are blended in float32 and rounded to it once, and the convolutions run in it with float32
    accumulation (one alpha's direct depthwise loop, which makes no products to hand over, keeps its
    float32 kernel). The output lies within the dtype's tolerance of the float64 reference on those
    kernels, and of the reference on the p kernels."""
    monkeypatch.setenv("FLEXOPS_CPU_HALF_PRODUCTS", "native")
    p, _, with_bias = variant(case)
    (x, weight, bias, alpha), conv = make_args(case, torch.float32, shared, with_bias, p)
    x, weight, bias, alpha = (t if t is None else t.to(dtype) for t in (x, weight, bias, alpha))
    out = tunable_conv2d(x, weight, bias, alpha, *conv)
    assert out.dtype == dtype
    kernel_dtype = torch.float32 if shared and case in DEPTHWISE_CASES else dtype
    # Each sample's kernels blended and rounded as the op does; the reference then picks sample b's
    # with alpha = row b of the identity.
    rows = alpha.float().reshape(-1, p)
    blend = lambda params: (rows @ params.float().flatten(1)).to(kernel_dtype).double().view(len(rows), *params.shape[1:])  # noqa: E731
    pick = torch.eye(len(rows), dtype=torch.float64)
    expected = reference.tunable_conv2d(*(t if t is None else t.double() for t in (x, weight, bias, alpha)), *conv)
    kh, kw = case["kernel"]
    reduction = case["in_channels"] // case["groups"] * kh * kw
    if len(rows):  # (the reference takes no empty set of kernels)
        on_rounded = reference.tunable_conv2d(x.double(), blend(weight), None if bias is None else blend(bias),
                                              pick[0] if shared else pick, *conv)
        atol, rtol = low_precision_tolerance(dtype, reduction)
        torch.testing.assert_close(out.double(), on_rounded, atol=atol, rtol=rtol)
    # Rounding a blended kernel or bias errs relative to its own scale, up to sum |alpha_i| times the
    # unit-scale weights': so much wider the tolerance (a blended bias of 8 rounded to float16 errs by
    # 0.004, where an output that cancels to near zero allows 0.0026 at unit scale).
    scale = max(1.0, float(rows.abs().sum(1).max())) if len(rows) else 1.0
    atol, rtol = low_precision_tolerance(dtype, p * reduction)
    torch.testing.assert_close(out.double(), expected, atol=scale * atol, rtol=rtol)


@pytest.mark.parametrize("case", TRITON_CASES, ids=case_id)
def test_triton_matches_reference(case):
    check_against_reference("triton", case, torch.float32, atol=1e-4, rtol=1e-4)


def test_output_layout_follows_input():
    x = torch.randn(2, 4, 8, 8).contiguous(memory_format=torch.channels_last)
    weight, alpha = torch.randn(2, 4, 4, 3, 3), torch.randn(2, 2)
    for backend in ("cpu", "triton"):
        with backends.use(backend):
            out = tunable_conv2d(x, weight, None, alpha, padding=1)
        assert out.is_contiguous(memory_format=torch.channels_last), backend


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per_sample"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
def test_gradcheck(shared, with_bias):
    case = dict(batch=2, in_channels=4, out_channels=4, groups=2, kernel=(3, 2), height=5, width=4,
                stride=(2, 1), padding=(1, 0), dilation=(1, 2), layout="strided")
    tensors, conv = make_args(case, torch.float64, shared, with_bias, 3, requires_grad=True)
    with backends.use("cpu"):
        assert torch.autograd.gradcheck(lambda *t: tunable_conv2d(*t, *conv), tensors)


# 1x1 kernels without stride, padding or groups run as matrix products (one batched product per
# sample, a product per image for a shared kernel on CPU; matrix-vector products for images of one
# pixel), per-sample depthwise kernels as one grouped convolution, and a few outputs from many inputs
# (an image's tail) or some 500 channel pairs or more as one convolution per sample (on CPU one
# sample per thread when the threads divide the batch, as 4 on 2 or 4 threads): the random cases
# rarely draw them. kind: (in_channels, out_channels, kernel, groups, image size)
SPECIAL = {"pointwise": (5, 5, (1, 1), 1, (4, 6)), "one_pixel": (6, 5, (1, 1), 1, (1, 1)),
           "depthwise": (600, 600, (3, 3), 600, (4, 6)), "narrow_tail": (16, 3, (3, 3), 1, (4, 6)),
           "dense": (24, 24, (3, 3), 1, (4, 6))}


@pytest.mark.parametrize("kind", SPECIAL)
@pytest.mark.parametrize("layout_kind", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per_sample"])
def test_special_kernels(kind, layout_kind, with_bias, shared):
    in_channels, out_channels, kernel, groups, (height, width) = SPECIAL[kind]
    pointwise = kernel == (1, 1)
    case = dict(batch=4, in_channels=in_channels, out_channels=out_channels, groups=groups, kernel=kernel,
                height=height, width=width, stride=(1, 1), padding=(0, 0) if pointwise else (1, 1), dilation=(2, 1),
                layout=layout_kind)
    (x, weight, bias, alpha), conv = make_args(case, torch.float64, shared, with_bias, 3, requires_grad=True)
    with backends.use("cpu"):
        out = tunable_conv2d(x, weight, bias, alpha, *conv)
        with torch.inference_mode():
            inferred = tunable_conv2d(x, weight, bias, alpha, *conv)
    expected = reference.tunable_conv2d(x, weight, bias, alpha, *conv)
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(inferred, expected.detach(), atol=1e-10, rtol=1e-8)
    assert out.is_contiguous(memory_format=torch.channels_last if layout_kind == "channels_last" else torch.contiguous_format)
    inputs = [t for t in (x, weight, bias, alpha) if t is not None]
    assert_grads_match(out, expected, inputs, 1e-10, 1e-8)
    if pointwise:
        with backends.use("cpu"):
            assert torch.autograd.gradcheck(lambda *t: tunable_conv2d(*t, *conv), (x, weight, bias, alpha))


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per_sample"])
def test_opcheck(shared):
    case = dict(batch=2, in_channels=4, out_channels=2, groups=2, kernel=(3, 3), height=5, width=5,
                stride=(1, 2), padding=(1, 1), dilation=(1, 1), layout="contiguous")
    (x, weight, bias, alpha), conv = make_args(case, torch.float32, shared, True, 2, requires_grad=True)
    torch.library.opcheck(torch.ops.flexops.tunable_conv2d.default, (x, weight, bias, alpha, *conv))
    torch.library.opcheck(torch.ops.flexops.tunable_conv2d_triton.default, (x, weight, bias, alpha, *conv))
    grad = torch.randn(2, 2, 5, 3)
    args = (grad, x.detach(), weight.detach(), bias.detach(), alpha.detach(), *conv)
    torch.library.opcheck(torch.ops.flexops.tunable_conv2d_backward.default, args)
    torch.library.opcheck(torch.ops.flexops.tunable_conv2d_backward.default, (*args[:3], None, *args[4:]))


def test_compile_fullgraph():
    torch._dynamo.reset()

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = flexops.TunableConv2d(3, 8, 3, num_params=2, padding=1)
            self.b = flexops.TunableConv2d(8, 3, 3, num_params=2, padding=1, mode="linear")

        def forward(self, x, omega):
            return self.b(torch.relu(self.a(x, omega)), omega)

    net = Net()
    x, omega = torch.randn(2, 3, 8, 8), torch.tensor([0.3, 0.7])
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, omega), net(x, omega))
    compiled(x, omega).sum().backward()
    assert net.a.weight.grad is not None and net.a.mlp.weight.grad is not None


@pytest.mark.parametrize("kernel", [3, 1], ids=["3x3", "pointwise"])
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per_sample"])
@pytest.mark.parametrize("layout_kind", ["contiguous", "channels_last"])
def test_batch_zero(kernel, shared, layout_kind):
    x = layout(torch.randn(0, 4, 6, 6), layout_kind).requires_grad_(True)
    weight = torch.randn(3, 5, 4, kernel, kernel, requires_grad=True)
    bias = torch.randn(3, 5, requires_grad=True)
    alpha = torch.randn(3 if shared else (0, 3), requires_grad=True)
    out = tunable_conv2d(x, weight, bias, alpha, padding=kernel // 2)
    assert out.shape == (0, 5, 6, 6)
    out.sum().backward()
    assert weight.grad.abs().sum() == 0 and bias.grad.abs().sum() == 0 and x.grad.shape == x.shape


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(x=torch.randn(2, 5, 8, 8)), "weight must be"),
        (dict(alpha=torch.randn(4)), "alpha must be"),
        (dict(alpha=torch.randn(3, 3)), "alpha must be"),
        (dict(bias=torch.randn(3, 5)), "bias must be"),
        (dict(weight=torch.randn(3, 6, 4, 3)), "weight must have 5 dimensions"),
        (dict(x=torch.randn(4, 8, 8)), "input must have 4 dimensions"),
        (dict(alpha=torch.randn(3, dtype=torch.float64)), "alpha has dtype"),
        (dict(x=torch.randn(2, 4, 8, 8, device="meta")), "is on"),
        (dict(groups=3), "groups=3 must divide"),
        (dict(padding=-1), "padding must be >= 0"),
        (dict(x=torch.randn(2, 4, 2, 2)), "smaller than the dilated kernel"),
    ],
)
def test_bad_input(change, message):
    args = dict(x=torch.randn(2, 4, 8, 8), weight=torch.randn(3, 6, 4, 3, 3), bias=torch.randn(3, 6),
                alpha=torch.randn(3), groups=1, padding=0)
    args.update(change)
    with pytest.raises(ValueError, match=message):
        tunable_conv2d(args["x"], args["weight"], args["bias"], args["alpha"], padding=args["padding"],
                       groups=args["groups"])


def test_forced_backend_that_cannot_run():
    x, weight, alpha = torch.randn(1, 2, 4, 4), torch.randn(2, 2, 2, 3, 3), torch.randn(2)
    with backends.use("cuda"), pytest.raises(backends.BackendUnavailable, match="forced backend 'cuda'"):
        tunable_conv2d(x, weight, None, alpha)
    with backends.use("triton"), pytest.raises(backends.BackendUnavailable, match="dtype torch.float64"):
        tunable_conv2d(x.double(), weight.double(), None, alpha.double())
