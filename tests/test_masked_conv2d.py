"""masked_conv2d: every backend against the reference over random shapes, densities and task counts;
gradients, opcheck, compile, the module, FLOP counting and errors."""

import math
import random
import zlib

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import flexops
from flexops import backends, reference
from flexops.ops import masked_conv2d

from shapes import assert_grads_match, case_id, layout, low_precision_tolerance, random_conv_cases

DENSITIES = ("none", "one", "random")  # no channel, a single channel, 12.5-100% of the channels


def with_tasks(cases, seed, task_counts):
    """Each case with a number of tasks M, its batch (M, or 1 shared by the tasks; any when M = 1),
    a density kind per mask, whether masks are float 0/1, and whether there is a bias."""
    rng = random.Random(seed)
    result = []
    for case in cases:
        tasks = rng.choice(task_counts)
        batch = case["batch"] if tasks == 1 else rng.choice((1, tasks))
        result.append(dict(case, groups=1, batch=batch, tasks=tasks, in_density=rng.choice(DENSITIES),
                           out_density=rng.choice(DENSITIES), float_masks=rng.random() < 0.3,
                           bias=rng.random() < 0.7))
    return result


def task_case_id(case):
    return f"{case_id(case)}_m{case['tasks']}_{case['in_density']}-{case['out_density']}"


CPU_CASES = with_tasks(random_conv_cases(40, seed=11, max_channels=8), seed=12, task_counts=(1, 5, 27))
# The Triton interpreter costs about 1 ms per program: small images, few channels, few tasks.
TRITON_CASES = with_tasks(random_conv_cases(10, seed=13, max_channels=4, max_size=6, max_batch=2), seed=14,
                          task_counts=(1, 1, 5, 27))


def make_mask(generator, tasks, channels, density, as_float):
    """[tasks, channels] (or [channels] for one task) with the given kind of density per row."""
    mask = torch.zeros(tasks, channels, dtype=torch.bool)
    for row in mask:
        if density == "one":
            count = 1
        elif density == "random":
            count = int(torch.randint(max(1, math.ceil(channels / 8)), channels + 1, (), generator=generator))
        else:
            count = 0
        row[torch.randperm(channels, generator=generator)[:count]] = True
    mask = mask.float() if as_float else mask
    return mask[0] if tasks == 1 else mask


def make_args(case, dtype, requires_grad=False):
    generator = torch.Generator().manual_seed(zlib.crc32(task_case_id(case).encode()))
    kh, kw = case["kernel"]
    x = torch.randn(case["batch"], case["in_channels"], case["height"], case["width"], dtype=dtype)
    weight = torch.randn(case["out_channels"], case["in_channels"], kh, kw, dtype=dtype)
    bias = torch.randn(case["out_channels"], dtype=dtype) if case["bias"] else None
    x = layout(x, case["layout"])
    for t in (x, weight, bias):
        if t is not None and requires_grad:
            t.requires_grad_(True)
    in_mask = make_mask(generator, case["tasks"], case["in_channels"], case["in_density"], case["float_masks"])
    out_mask = make_mask(generator, case["tasks"], case["out_channels"], case["out_density"], case["float_masks"])
    return (x, weight, bias, in_mask, out_mask), (case["stride"], case["padding"], case["dilation"])


def check_against_reference(backend, case, dtype, atol, rtol):
    (x, weight, bias, in_mask, out_mask), conv = make_args(case, dtype, requires_grad=True)
    with backends.use(backend):
        out = masked_conv2d(x, weight, bias, in_mask, out_mask, *conv)
    expected = reference.masked_conv2d(x, weight, bias, in_mask, out_mask, *conv)
    tasks = case["tasks"] if case["tasks"] > 1 else case["batch"]
    assert out.shape == expected.shape == (tasks, case["out_channels"], *expected.shape[2:])
    torch.testing.assert_close(out, expected, atol=atol, rtol=rtol)
    off = (out_mask.reshape(-1, case["out_channels"]) == 0).expand(out.shape[0], -1)
    assert bool((out[off] == 0).all()), "inactive output channels must be exactly zero"

    inputs = [t for t in (x, weight, bias) if t is not None]
    assert_grads_match(out, expected, inputs, atol, rtol)


@pytest.mark.parametrize("case", CPU_CASES, ids=task_case_id)
def test_cpu_matches_reference(case):
    check_against_reference("cpu", case, torch.float64, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("case", CPU_CASES[:10], ids=task_case_id)
def test_cpu_float32_matches_reference(case):
    check_against_reference("cpu", case, torch.float32, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", CPU_CASES[:20], ids=task_case_id)
def test_cpu_low_precision_matches_reference(case, dtype):
    """Random shapes and layouts in bfloat16 and float16 (the direct kernel where the output is
    contiguous, float32 kernels behind a widening boundary where it is channels-last), against the
    float64 reference on the same rounded values."""
    (x, weight, bias, in_mask, out_mask), conv = make_args(case, dtype)
    out = masked_conv2d(x, weight, bias, in_mask, out_mask, *conv)
    expected = reference.masked_conv2d(*(t if t is None else t.double() for t in (x, weight, bias)), in_mask,
                                       out_mask, *conv)
    assert out.dtype == dtype and out.shape == expected.shape
    atol, rtol = low_precision_tolerance(dtype, case["in_channels"] * case["kernel"][0] * case["kernel"][1])
    torch.testing.assert_close(out.double(), expected, atol=atol, rtol=rtol)


@pytest.mark.parametrize("case", TRITON_CASES, ids=task_case_id)
def test_triton_matches_reference(case):
    check_against_reference("triton", case, torch.float32, atol=1e-4, rtol=1e-4)


# The direct CPU kernel computes blocks of up to 6 active outputs x 4 vectors of output columns over
# bands of 4 output rows; the random cases above are too small to reach past the first block. These
# cross every block boundary with a partial block, and have rows with every channel on, no input
# channel on and no output channel on. The last needs more scratch than a thread keeps.
DIRECT_CASES = [
    # batch, tasks, in, out, height, width, kernel, stride, padding, dilation, strided input
    (1, 27, 16, 13, 9, 150, (3, 3), (1, 1), (1, 1), (1, 1), False),
    (5, 5, 20, 17, 11, 67, (3, 3), (2, 2), (1, 1), (1, 1), True),
    (1, 4, 7, 19, 10, 70, (5, 3), (1, 2), (2, 0), (2, 1), False),
    (2, 1, 9, 8, 13, 33, (1, 1), (1, 1), (0, 0), (1, 1), True),
    (1, 4, 12, 12, 8, 129, (2, 3), (3, 1), (0, 2), (1, 3), False),
    (1, 2, 64, 3, 3, 4100, (3, 3), (1, 1), (1, 1), (1, 1), False),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", DIRECT_CASES, ids=lambda c: "b{}_m{}_c{}x{}_{}x{}".format(*c[:6]))
def test_cpu_blocks_and_bands(case, dtype):
    """bfloat16 and float16 too: the direct kernel widens them as it gathers and packs, accumulates in
    float32 and rounds each output once, so it equals the float32 kernel on the same values, rounded."""
    batch, tasks, cin, cout, height, width, kernel, stride, padding, dilation, strided = case
    generator = torch.Generator().manual_seed(cin * cout)
    x = torch.randn(batch, cin, height, 2 * width if strided else width, generator=generator).to(dtype)
    x = x[..., ::2] if strided else x
    weight = torch.randn(cout, cin, *kernel, generator=generator).to(dtype)
    bias = torch.randn(cout, generator=generator).to(dtype)
    in_mask = torch.rand(tasks, cin, generator=generator) < 0.4
    out_mask = torch.rand(tasks, cout, generator=generator) < 0.4
    if tasks > 3:
        in_mask[0], out_mask[0] = True, True
        in_mask[1] = False
        out_mask[2] = False
    out = masked_conv2d(x, weight, bias, in_mask, out_mask, stride, padding, dilation)
    assert out.dtype == dtype
    if dtype in (torch.bfloat16, torch.float16):
        widened = masked_conv2d(x.float(), weight.float(), bias.float(), in_mask, out_mask, stride, padding, dilation)
        torch.testing.assert_close(out, widened.to(dtype), atol=0, rtol=0)
        x, weight, bias, dtype = x.double(), weight.double(), bias.double(), torch.float64
        atol, rtol = low_precision_tolerance(out.dtype, cin * kernel[0] * kernel[1])
    else:
        atol = rtol = 1e-4 if dtype == torch.float32 else 1e-10
    expected = reference.masked_conv2d(x, weight, bias, in_mask, out_mask, stride, padding, dilation)
    torch.testing.assert_close(out.to(dtype), expected, atol=atol, rtol=rtol)
    assert bool((out[~out_mask.expand(out.shape[0], -1)] == 0).all())


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_inactive_input_channels_count_as_zero(backend):
    x, weight, bias = torch.randn(1, 4, 5, 5), torch.randn(3, 4, 3, 3), torch.randn(3)
    in_mask = torch.tensor([[0, 1, 1, 0], [0, 1, 0, 0]], dtype=torch.bool)
    poisoned = x.clone()
    poisoned[:, 0] = float("nan")  # channels 0 and 3 are off in every task
    poisoned[:, 3] = float("inf")
    with backends.use(backend):
        out = masked_conv2d(poisoned, weight, bias, in_mask, None, padding=1)
    torch.testing.assert_close(out, reference.masked_conv2d(x, weight, bias, in_mask, None, (1, 1), (1, 1), (1, 1)),
                               atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_one_mask_shared_by_the_tasks_of_the_other(backend):
    x, weight, bias = torch.randn(1, 5, 6, 6), torch.randn(4, 5, 3, 3), torch.randn(4)
    for in_mask, out_mask in ((torch.rand(5) < 0.6, torch.rand(3, 4) < 0.6), (torch.rand(3, 5) < 0.6, None)):
        with backends.use(backend):
            out = masked_conv2d(x, weight, bias, in_mask, out_mask, padding=1)
        assert out.shape == (3, 4, 6, 6)
        expected = reference.masked_conv2d(x, weight, bias, in_mask, out_mask, (1, 1), (1, 1), (1, 1))
        torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_output_layout_follows_input(backend):
    x = torch.randn(1, 4, 8, 8).contiguous(memory_format=torch.channels_last)
    masks = torch.rand(3, 4) < 0.5, torch.rand(3, 4) < 0.5
    with backends.use(backend):
        out = masked_conv2d(x, torch.randn(4, 4, 3, 3), None, *masks, padding=1)
    assert out.shape == (3, 4, 8, 8)
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_batch_zero():
    x = torch.randn(0, 4, 6, 6, requires_grad=True)
    weight = torch.randn(5, 4, 3, 3, requires_grad=True)
    out = masked_conv2d(x, weight, None, torch.tensor([1, 0, 1, 1]), None, padding=1)
    assert out.shape == (0, 5, 6, 6)
    out.sum().backward()
    assert weight.grad.abs().sum() == 0


@pytest.mark.parametrize("batch", [1, 3], ids=["shared_input", "per_task_input"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
def test_gradcheck(batch, with_bias):
    x = torch.randn(batch, 4, 5, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 4, 3, 2, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True) if with_bias else None
    in_mask = torch.tensor([[1, 0, 1, 1], [0, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.float64)
    out_mask = torch.tensor([[1, 1, 0], [0, 1, 1], [0, 0, 0]], dtype=torch.bool)
    tensors = [t for t in (x, weight, bias) if t is not None]

    def fn(x, weight, bias=None):
        return masked_conv2d(x, weight, bias, in_mask, out_mask, (2, 1), (1, 0), (1, 2))

    with backends.use("cpu"):
        assert torch.autograd.gradcheck(fn, tensors)


def test_opcheck():
    x, weight, bias = torch.randn(1, 4, 5, 5), torch.randn(3, 4, 3, 3), torch.randn(3)
    in_mask = torch.tensor([[1, 0, 1, 1], [0, 0, 0, 0], [0, 1, 0, 0]], dtype=torch.bool)
    out_mask = torch.tensor([[1, 0, 1]], dtype=torch.bool)
    conv = ((1, 2), (1, 1), (1, 1))
    for name in ("masked_conv2d", "masked_conv2d_triton"):
        for b in (bias, None):
            args = [t if t is None else t.clone().requires_grad_(True) for t in (x, weight, b)]
            torch.library.opcheck(getattr(torch.ops.flexops, name).default, (*args, in_mask, out_mask, *conv))
    grad = torch.randn(3, 3, 5, 3)
    for name in ("masked_conv2d_backward", "masked_conv2d_backward_triton"):
        for b in (bias, None):
            args = (grad, x, weight, b, in_mask, out_mask, *conv)
            torch.library.opcheck(getattr(torch.ops.flexops, name).default, args)


def test_triton_shared_input_sums_the_tasks_gradients():
    # One image read by three tasks with overlapping input channels, stride 2: its gradient is the
    # sum of the tasks' transposed convolutions, and zero in the channel that no task reads.
    x = torch.randn(1, 4, 7, 6, requires_grad=True)
    weight, bias = torch.randn(5, 4, 3, 3, requires_grad=True), torch.randn(5, requires_grad=True)
    in_mask = torch.tensor([[1, 1, 0, 1], [1, 0, 0, 1], [0, 1, 0, 1]], dtype=torch.bool)
    out_mask = torch.tensor([[1, 0, 1, 1, 0], [0, 1, 1, 0, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)
    conv = ((2, 2), (1, 1), (1, 1))
    with backends.use("triton"):
        out = masked_conv2d(x, weight, bias, in_mask, out_mask, *conv)
    expected = reference.masked_conv2d(x, weight, bias, in_mask, out_mask, *conv)
    assert out.shape == (3, 5, 4, 3)
    grad = torch.randn_like(expected)
    got = torch.autograd.grad(out, (x, weight, bias), grad)
    want = torch.autograd.grad(expected, (x, weight, bias), grad)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)
    assert bool((got[0][:, 2] == 0).all())


def test_compile_fullgraph():
    torch._dynamo.reset()
    layer = flexops.MaskedConv2d(4, 6, 3, padding=1)
    x, in_mask, out_mask = torch.randn(1, 4, 8, 8), torch.rand(5, 4) < 0.5, torch.rand(5, 6) < 0.5
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, in_mask, out_mask), layer(x, in_mask, out_mask))
    compiled(x, in_mask, out_mask).sum().backward()
    assert layer.weight.grad is not None and layer.bias.grad is not None


def test_module():
    layer = flexops.MaskedConv2d(4, 6, 3, stride=2, padding=1, dilation=1)
    dense = torch.nn.Conv2d(4, 6, 3, stride=2, padding=1)
    dense.load_state_dict(layer.state_dict())
    x = torch.randn(2, 4, 9, 9)
    torch.testing.assert_close(layer(x), dense(x))
    in_mask, out_mask = torch.rand(2, 4) < 0.5, torch.rand(2, 6) < 0.5
    expected = reference.masked_conv2d(x, layer.weight, layer.bias, in_mask, out_mask, (2, 2), (1, 1), (1, 1))
    torch.testing.assert_close(layer(x, in_mask, out_mask), expected)
    assert "4, 6, kernel_size=(3, 3), stride=(2, 2)" in repr(layer)


def test_flop_count_counts_active_channels_per_task():
    layer = flexops.MaskedConv2d(8, 4, 3, padding=1)
    x = torch.randn(1, 8, 6, 5)
    in_mask = torch.zeros(3, 8, dtype=torch.bool)
    in_mask[0, :2] = in_mask[1, :8] = in_mask[2, :1] = True
    out_mask = torch.zeros(3, 4, dtype=torch.bool)
    out_mask[0, :1] = out_mask[1, :4] = True  # task 2 has no active output
    macs = (2 * 1 + 8 * 4 + 1 * 0) * 9 * 6 * 5
    assert flexops.flops.count(layer, x, in_mask, out_mask) == macs
    with FlopCounterMode(display=False) as counter:
        layer(x, in_mask, out_mask)
    assert counter.get_total_flops() == 2 * macs
    # One mask row for a batch: every sample pays for it.
    assert flexops.flops.count(layer, torch.randn(2, 8, 6, 5), in_mask[0], out_mask[0]) == 2 * 2 * 1 * 9 * 6 * 5


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(in_mask=torch.ones(5, dtype=torch.bool)), r"in_mask must be \[4\] or \[M, 4\]"),
        (dict(out_mask=torch.ones(3, 7)), r"out_mask must be \[6\] or \[M, 6\]"),
        (dict(in_mask=torch.ones(2, 3, 4)), r"in_mask must be \[4\] or \[M, 4\]"),
        (dict(in_mask=torch.ones(3, 4), out_mask=torch.ones(5, 6)), "same number of task rows"),
        (dict(x=torch.randn(2, 4, 8, 8), in_mask=torch.ones(3, 4)), "input batch must be 1"),
        (dict(weight=torch.randn(6, 5, 3, 3)), r"weight must be \[Cout, Cin, kh, kw\] = \[6, 4, kh, kw\]"),
        (dict(bias=torch.randn(5)), r"bias must be \[Cout\] = \[6\]"),
        (dict(x=torch.randn(4, 8, 8)), "input must have 4 dimensions"),
        (dict(in_mask=torch.ones(4, device="meta")), "in_mask is on meta"),
        (dict(x=torch.randn(1, 4, 2, 2)), "smaller than the dilated kernel"),
    ],
)
def test_bad_input(change, message):
    args = dict(x=torch.randn(1, 4, 8, 8), weight=torch.randn(6, 4, 3, 3), bias=torch.randn(6),
                in_mask=torch.ones(3, 4), out_mask=None)
    args.update(change)
    with pytest.raises(ValueError, match=message):
        masked_conv2d(args["x"], args["weight"], args["bias"], args["in_mask"], args["out_mask"])


def test_forced_backend_that_cannot_run():
    x, weight = torch.randn(1, 2, 4, 4), torch.randn(2, 2, 3, 3)
    with backends.use("cuda"), pytest.raises(backends.BackendUnavailable, match="forced backend 'cuda'"):
        masked_conv2d(x, weight)
    with backends.use("triton"), pytest.raises(backends.BackendUnavailable, match="dtype torch.float64"):
        masked_conv2d(x.double(), weight.double())


def test_dense_masks_are_a_plain_convolution():
    x, weight, bias = torch.randn(2, 3, 7, 7), torch.randn(5, 3, 3, 3), torch.randn(5)
    torch.testing.assert_close(masked_conv2d(x, weight, bias, padding=1), F.conv2d(x, weight, bias, padding=1))
