"""Random convolution shapes shared by the op tests: odd sizes, stride, padding, dilation, groups,
batch 0 and the input layouts a user can hand in."""

import random

import torch

LAYOUTS = ("contiguous", "channels_last", "strided")


def layout(x, kind):
    """x with the same values, in one of the LAYOUTS."""
    if kind == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if kind == "strided":  # every other column of a wider tensor: no layout is contiguous
        wide = torch.zeros(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype, device=x.device)
        wide[..., ::2] = x
        return wide[..., ::2]
    return x.contiguous()


def random_conv_cases(count, seed, max_channels=6, max_size=9, max_batch=3):
    """`count` dicts of conv hyper-parameters whose output has at least one pixel."""
    rng = random.Random(seed)
    cases = []
    while len(cases) < count:
        groups = rng.choice((1, 1, 2, 3))
        kh, kw = rng.choice(((1, 1), (3, 3), (3, 2), (2, 3), (5, 5)))
        case = dict(
            batch=rng.choice((0,) + tuple(range(1, max_batch + 1))),
            in_channels=groups * rng.randint(1, max_channels // groups or 1),
            out_channels=groups * rng.randint(1, max_channels // groups or 1),
            groups=groups,
            kernel=(kh, kw),
            height=rng.randint(1, max_size),
            width=rng.randint(1, max_size),
            stride=(rng.randint(1, 2), rng.randint(1, 2)),
            padding=(rng.randint(0, 2), rng.randint(0, 2)),
            dilation=(rng.randint(1, 2), rng.randint(1, 2)),
            layout=rng.choice(LAYOUTS),
        )
        fits = all(
            n + 2 * p >= d * (k - 1) + 1
            for n, k, p, d in zip((case["height"], case["width"]), case["kernel"], case["padding"], case["dilation"])
        )
        if fits:
            cases.append(case)
    return cases


def case_id(case):
    return "b{batch}_c{in_channels}x{out_channels}_g{groups}_k{kernel[0]}{kernel[1]}_{height}x{width}_s{stride[0]}{stride[1]}_p{padding[0]}{padding[1]}_d{dilation[0]}{dilation[1]}_{layout}".format(**case)


def assert_grads_match(out, expected, inputs, atol, rtol):
    """out and expected (the reference's) give the same gradients to `inputs` for one random
    output gradient; an input that does not reach the output (batch 0) must get none or zeros."""
    grad = torch.randn_like(expected)
    got = torch.autograd.grad(out, inputs, grad, allow_unused=True)
    want = torch.autograd.grad(expected, inputs, grad, allow_unused=True)
    for g, w in zip(got, want):
        if w is None:
            assert g is None or bool((g == 0).all())
        else:
            torch.testing.assert_close(g, w, atol=atol, rtol=rtol)


def low_precision_tolerance(dtype, reduction):
    """(atol, rtol) for an op computed in `dtype` with float32 accumulation, against the float64
    reference on the same (already rounded) inputs of unit scale, reducing over `reduction` terms.

    The output and the intermediates a kernel stores in `dtype` (a blended kernel, attention
    probabilities) are rounded, each to eps/2 relative. Such errors of the reduction's terms add up
    like a random walk, as the output itself does: sqrt(reduction) unit terms, so eps * sqrt(reduction)
    absolute, eps relative. The flexops kernels stay below half of it on the tests' inputs; a sum
    accumulated in bfloat16 instead of float32 exceeds it twice over at 36 terms, six times at 200.
    """
    eps = torch.finfo(dtype).eps
    return eps * reduction**0.5, eps
