"""Property-based tests (hypothesis) of every op on the CPU backend against the float64 references
(flexops.reference), forward and gradients, with strategies that steer into each special CPU path:
tunable_conv2d's blended pointwise product, direct depthwise loop, matrix-vector products of one-pixel
images, per-sample convolutions split over the threads and the matrix products of pointwise kernels;
masked_conv2d's direct kernel and its oneDNN path, many tasks; window attention with active windows,
shifts and per-image biases; deformable convolution with masks, offset groups and NaN offsets. Every
case also runs twice, the second call on the kept blocks the first gave back (csrc/cpu/kept_memory.h),
and must give the same bits. Then concurrent calls from several Python threads against single-threaded
results, and the accuracy of long fp32 reductions.

Profiles: "ci" (default, a few seconds per test) and "long" (HYPOTHESIS_PROFILE=long, many more cases).
"""

import os
import subprocess
import sys
import textwrap
import threading

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import flexops
from flexops import reference

# "ci" does not shrink a failing case (the Triton interpreter makes shrinking take minutes): it
# reports the case as drawn.
settings.register_profile(
    "ci", max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow],
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
settings.register_profile("long", max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci")))


def tolerance(dtype):
    return dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-9)


def leaves(tensors, dtype):
    """Fresh leaf copies (None stays None) of the given dtype, requiring grad when floating."""
    copies = []
    for t in tensors:
        if t is None:
            copies.append(None)
            continue
        c = t.detach().to(dtype) if t.is_floating_point() else t.clone()
        if c.is_floating_point():
            c.requires_grad_(True)
        copies.append(c)
    return copies


def check_against_reference(op, ref, tensors, dtype, grad_seed=0, layout=torch.contiguous_format):
    """op on `dtype` copies of `tensors` against ref on float64 copies: output and every gradient;
    the op run twice gives the same bits."""
    ours = leaves(tensors, dtype)
    ours = [t.contiguous(memory_format=layout).detach().requires_grad_(True) if t is not None and t.dim() == 4
            and t.is_floating_point() and layout != torch.contiguous_format else t for t in ours]
    theirs = leaves(tensors, torch.float64)
    out = op(*ours)
    expected = ref(*theirs)
    assert out.shape == expected.shape
    torch.testing.assert_close(out.double(), expected, **tolerance(dtype))
    again = op(*ours)
    assert torch.equal(out, again) or (out.isnan() == again.isnan()).all() and torch.equal(
        out.nan_to_num(), again.nan_to_num()
    ), "a second call, on kept blocks, gave other bits"
    if out.numel() == 0:
        return
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=torch.float64)
    wants = [t for t in ours if t is not None and t.requires_grad]
    ref_wants = [t for t in theirs if t is not None and t.requires_grad]
    grads = torch.autograd.grad(out, wants, grad.to(dtype), allow_unused=True)
    ref_grads = torch.autograd.grad(expected, ref_wants, grad, allow_unused=True)
    for got, want in zip(grads, ref_grads):
        if want is None:
            continue
        scale = max(1.0, want.abs().max().item()) if want.numel() else 1.0
        tol = tolerance(dtype)
        torch.testing.assert_close(got.double(), want, rtol=tol["rtol"], atol=tol["atol"] * scale)


dtypes = st.sampled_from([torch.float32, torch.float64])


def randn(*size):
    return torch.randn(*size)


# --- tunable_conv2d ---

@st.composite
def tunable_cases(draw):
    path = draw(st.sampled_from(["general", "pointwise", "one_pixel", "blended_pointwise", "depthwise", "split"]))
    p = draw(st.integers(1, 4))
    batch = draw(st.integers(0, 3))
    per_sample = draw(st.booleans())
    stride, padding, dilation, groups, kernel = 1, 0, 1, 1, 1
    height, width = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    if path == "general":
        groups = draw(st.sampled_from([1, 2]))
        cin, cout = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
        kernel, stride = draw(st.integers(1, 3)), draw(st.integers(1, 2))
        padding, dilation = draw(st.integers(0, 2)), draw(st.integers(1, 2))
        height, width = height + dilation * (kernel - 1), width + dilation * (kernel - 1)
    elif path == "pointwise":
        cin, cout = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    elif path == "one_pixel":  # a squeeze-and-excitation's pooled vector: matrix-vector products
        cin, cout, height, width, per_sample = draw(st.integers(1, 16)), draw(st.integers(1, 16)), 1, 1, True
    elif path == "blended_pointwise":  # 2 to 256 pixels, per sample, float32
        cin, cout, per_sample, batch = draw(st.integers(1, 24)), draw(st.integers(1, 20)), True, batch + 1
    elif path == "depthwise":  # output rows of 96 or more, contiguous
        cin = cout = groups = draw(st.integers(1, 4))
        kernel, padding = draw(st.sampled_from([3, 5])), draw(st.integers(0, 2))
        height, width = draw(st.integers(kernel, kernel + 2)), 96 + draw(st.integers(0, 40))
    else:  # "split": per-sample kernels of >= 512 channel pairs, one convolution per sample and thread
        cin, cout, kernel, padding, per_sample = 16, 32, 3, 1, True
        batch, height, width = draw(st.sampled_from([2, 4])), 5, 5
    dtype = torch.float32 if path == "blended_pointwise" else draw(dtypes)
    layout = (torch.contiguous_format if path in ("depthwise", "blended_pointwise")
              else draw(st.sampled_from([torch.contiguous_format, torch.channels_last])))
    has_bias = draw(st.booleans())
    return dict(path=path, p=p, batch=batch, per_sample=per_sample, cin=cin, cout=cout, kernel=kernel,
                stride=stride, padding=padding, dilation=dilation, groups=groups, height=height, width=width,
                dtype=dtype, layout=layout, has_bias=has_bias)


@FUZZ
@given(tunable_cases())
def test_tunable_conv2d(case):
    c = case
    x = randn(c["batch"], c["cin"], c["height"], c["width"])
    weight = randn(c["p"], c["cout"], c["cin"] // c["groups"], c["kernel"], c["kernel"])
    bias = randn(c["p"], c["cout"]) if c["has_bias"] else None
    alpha = torch.rand(c["batch"], c["p"]) if c["per_sample"] else torch.rand(c["p"])
    args = (c["stride"], c["padding"], c["dilation"], c["groups"])
    check_against_reference(
        lambda x, w, b, a: flexops.ops.tunable_conv2d(x, w, b, a, *args),
        lambda x, w, b, a: reference.tunable_conv2d(x, w, b, a, *((v, v) for v in args[:3]), args[3]),
        [x, weight, bias, alpha], c["dtype"], layout=c["layout"],
    )


# --- masked_conv2d ---

@st.composite
def masked_cases(draw):
    tasks = draw(st.sampled_from([1, 1, 3, 5]))
    batch = draw(st.sampled_from([1, tasks])) if tasks > 1 else draw(st.integers(0, 3))
    cin, cout = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    kernel, stride, dilation = draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(st.integers(1, 2))
    padding = draw(st.integers(0, 2))
    height = draw(st.integers(1, 12)) + dilation * (kernel - 1)
    width = draw(st.integers(1, 20)) + dilation * (kernel - 1)
    in_rows, out_rows = draw(st.sampled_from([1, tasks])), draw(st.sampled_from([1, tasks]))
    return dict(tasks=tasks, batch=batch, cin=cin, cout=cout, kernel=kernel, stride=stride, dilation=dilation,
                padding=padding, height=height, width=width, in_rows=in_rows, out_rows=out_rows,
                density=draw(st.sampled_from([0.0, 0.5, 1.0])), has_bias=draw(st.booleans()), dtype=draw(dtypes),
                layout=draw(st.sampled_from([torch.contiguous_format, torch.channels_last])))


@FUZZ
@given(masked_cases())
def test_masked_conv2d(case):
    c = case
    x = randn(c["batch"], c["cin"], c["height"], c["width"])
    weight = randn(c["cout"], c["cin"], c["kernel"], c["kernel"])
    bias = randn(c["cout"]) if c["has_bias"] else None
    in_mask = torch.rand(c["in_rows"], c["cin"]) < c["density"]
    out_mask = torch.rand(c["out_rows"], c["cout"]) < max(c["density"], 0.3)
    geometry = dict(stride=c["stride"], padding=c["padding"], dilation=c["dilation"])
    pairs = {k: (v, v) for k, v in geometry.items()}
    check_against_reference(
        lambda x, w, b: flexops.ops.masked_conv2d(x, w, b, in_mask, out_mask, **geometry),
        lambda x, w, b: reference.masked_conv2d(x, w, b, in_mask, out_mask, **pairs),
        [x, weight, bias], c["dtype"], layout=c["layout"],
    )


# --- window_attention ---

@st.composite
def window_cases(draw):
    window = draw(st.sampled_from([2, 3, 4]))
    heads, head_dim = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    rows, cols, batch = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 2))
    return dict(window=window, heads=heads, head_dim=head_dim, rows=rows, cols=cols, batch=batch,
                shift=draw(st.integers(0, window - 1)), bias=draw(st.sampled_from([None, "shared", "per_image"])),
                active=draw(st.booleans()), mask_value=draw(st.sampled_from([None, -100.0])), dtype=draw(dtypes))


@FUZZ
@given(window_cases())
def test_window_attention(case):
    c = case
    tokens = c["window"] ** 2
    qkv = randn(c["batch"], c["rows"] * c["window"], c["cols"] * c["window"], 3 * c["heads"] * c["head_dim"])
    bias = {None: None, "shared": randn(c["heads"], tokens, tokens),
            "per_image": randn(c["batch"], c["heads"], tokens, tokens)}[c["bias"]]
    active = torch.rand(c["batch"], c["rows"], c["cols"]) < 0.6 if c["active"] else None
    args = (c["heads"], c["window"], c["shift"])
    check_against_reference(
        lambda q, b: flexops.ops.window_attention(q, *args, b, None, active, c["mask_value"]),
        lambda q, b: reference.window_attention(q, *args, b, None, active, c["mask_value"]),
        [qkv, bias], c["dtype"],
    )


# --- deform_conv2d ---

@st.composite
def deform_cases(draw):
    groups, offset_groups = draw(st.sampled_from([1, 2])), draw(st.sampled_from([1, 2]))
    cin = groups * offset_groups * draw(st.integers(1, 2))
    cout = groups * draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride, padding, dilation = draw(st.integers(1, 2)), draw(st.integers(0, 2)), draw(st.integers(1, 2))
    height = draw(st.integers(1, 7)) + dilation * (kh - 1)
    width = draw(st.integers(1, 7)) + dilation * (kw - 1)
    return dict(groups=groups, offset_groups=offset_groups, cin=cin, cout=cout, kh=kh, kw=kw, stride=stride,
                padding=padding, dilation=dilation, height=height, width=width, batch=draw(st.integers(1, 2)),
                has_mask=draw(st.booleans()), has_bias=draw(st.booleans()), spread=draw(st.sampled_from([0.5, 3.0])),
                dtype=draw(dtypes), layout=draw(st.sampled_from([torch.contiguous_format, torch.channels_last])))


@FUZZ
@given(deform_cases())
def test_deform_conv2d(case):
    c = case
    out_h = (c["height"] + 2 * c["padding"] - c["dilation"] * (c["kh"] - 1) - 1) // c["stride"] + 1
    out_w = (c["width"] + 2 * c["padding"] - c["dilation"] * (c["kw"] - 1) - 1) // c["stride"] + 1
    points = c["offset_groups"] * c["kh"] * c["kw"]
    x = randn(c["batch"], c["cin"], c["height"], c["width"])
    # Offsets rounded to 1/8 keep sampling points off the corners' kinks, where gradients jump.
    offset = (c["spread"] * randn(c["batch"], 2 * points, out_h, out_w) * 8).round() / 8 + 1 / 16
    weight = randn(c["cout"], c["cin"] // c["groups"], c["kh"], c["kw"])
    bias = randn(c["cout"]) if c["has_bias"] else None
    mask = torch.rand(c["batch"], points, out_h, out_w) if c["has_mask"] else None
    geometry = dict(stride=c["stride"], padding=c["padding"], dilation=c["dilation"])
    pairs = {k: (v, v) for k, v in geometry.items()}
    check_against_reference(
        lambda x, o, w, b, m: flexops.ops.deform_conv2d(x, o, w, b, mask=m, **geometry),
        lambda x, o, w, b, m: reference.deform_conv2d(x, o, w, b, mask=m, **pairs),
        [x, offset, weight, bias, mask], c["dtype"], layout=c["layout"],
    )


def _nan_patterns(deform_conv2d, x, offset, weight, mask, geometry):
    """Where the output and the offset gradient are NaN."""
    o = offset.clone().requires_grad_(True)
    out = deform_conv2d(x, o, weight, None, mask=mask, **geometry)
    (grad_offset,) = torch.autograd.grad(out.sum(), o)
    return out.isnan(), grad_offset.isnan()


@FUZZ
@given(deform_cases(), st.integers(0, 2**16))
def test_deform_conv2d_nan_offsets_give_nan_in_every_backend(case, seed):
    """A NaN offset is not hidden: every backend gives NaN where the reference does."""
    c = case
    out_h = (c["height"] + 2 * c["padding"] - c["dilation"] * (c["kh"] - 1) - 1) // c["stride"] + 1
    out_w = (c["width"] + 2 * c["padding"] - c["dilation"] * (c["kw"] - 1) - 1) // c["stride"] + 1
    points = c["offset_groups"] * c["kh"] * c["kw"]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(c["batch"], c["cin"], c["height"], c["width"], generator=g)
    offset = torch.randn(c["batch"], 2 * points, out_h, out_w, generator=g)
    offset[torch.rand(offset.shape, generator=g) < 0.1] = float("nan")
    weight = torch.randn(c["cout"], c["cin"] // c["groups"], c["kh"], c["kw"], generator=g)
    mask = torch.rand(c["batch"], points, out_h, out_w, generator=g) if c["has_mask"] else None
    geometry = dict(stride=c["stride"], padding=c["padding"], dilation=c["dilation"])
    expected = _nan_patterns(reference.deform_conv2d, x, offset, weight, mask, {k: (v, v) for k, v in geometry.items()})
    for backend in ("cpu", "triton"):
        with flexops.backends.use(backend):
            got = _nan_patterns(flexops.ops.deform_conv2d, x, offset, weight, mask, geometry)
        assert torch.equal(got[0], expected[0]), f"{backend}: NaN outputs differ from the reference's"
        assert torch.equal(got[1], expected[1]), f"{backend}: NaN offset gradients differ from the reference's"


# torchvision's CPU kernel reads out of bounds at a NaN coordinate (a NaN x can crash it); a NaN y on an
# image of even width happens to read inside, so its results can be compared, in a process of its own.
# (Where the other coordinate is outside, the sample is 0 in both, and flexops keeps its gradients 0
# too, where torchvision's offset gradient is NaN.)
_TORCHVISION_NAN = textwrap.dedent("""
    import torch, torchvision, flexops
    g = torch.Generator().manual_seed(0)
    x, weight = torch.randn(2, 4, 6, 6, generator=g), torch.randn(3, 4, 3, 3, generator=g)
    offset = torch.randn(2, 18, 6, 6, generator=g)
    offset[0, 0, 1, 1] = offset[1, 4, 3, 2] = offset[1, 8, 2, 2] = float("nan")  # their x: inside
    patterns = []
    for deform_conv2d in (torchvision.ops.deform_conv2d, flexops.ops.deform_conv2d):
        o = offset.clone().requires_grad_(True)
        out = deform_conv2d(x, o, weight, padding=1)
        (grad,) = torch.autograd.grad(out.sum(), o)
        patterns.append((out.isnan(), grad.isnan()))
    (out_tv, grad_tv), (out_ours, grad_ours) = patterns
    assert out_tv.any() and grad_tv.any()
    assert torch.equal(out_ours, out_tv) and torch.equal(grad_ours, grad_tv)
""")


def test_deform_conv2d_nan_offsets_as_torchvision(tmp_path):
    pytest.importorskip("torchvision")
    done = subprocess.run([sys.executable, "-c", _TORCHVISION_NAN], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


# --- concurrency ---

def _calls():
    """A mix of every op and path, each a function of no arguments returning its output."""
    g = torch.Generator().manual_seed(1)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    x, x_last = r(2, 8, 12, 12), r(2, 8, 12, 12).contiguous(memory_format=torch.channels_last)
    kernels, alpha, rows = r(3, 8, 8, 3, 3), torch.rand(3, generator=g), torch.rand(2, 3, generator=g)
    pointwise, depthwise = r(3, 16, 8, 1, 1), r(2, 4, 1, 3, 3)
    wide = r(2, 4, 5, 100)
    masks = torch.rand(3, 8, generator=g) < 0.5
    qkv, table = r(2, 8, 8, 3 * 8), r(2, 16, 16)
    offset, mask = r(2, 18, 12, 12), torch.rand(2, 9, 12, 12, generator=g)
    tc = flexops.ops.tunable_conv2d
    return [
        lambda: tc(x, kernels, None, alpha, padding=1),
        lambda: tc(x_last, kernels, None, rows, padding=1),
        lambda: tc(x, pointwise, None, rows),
        lambda: tc(x[:, :, :4, :4], pointwise, None, rows),  # blended pointwise
        lambda: tc(x[:, :, :1, :1], pointwise, None, rows),  # matrix-vector
        lambda: tc(wide, depthwise, None, rows[:, :2], padding=1, groups=4),
        lambda: flexops.ops.masked_conv2d(x[:1], kernels[0], None, masks, masks, padding=1),
        lambda: flexops.ops.window_attention(qkv, 2, 4, 2, table),
        lambda: flexops.ops.deform_conv2d(x, offset, kernels[0], None, padding=1, mask=mask),
    ]


def test_concurrent_calls_match_single_threaded():
    calls = _calls()
    expected = [call() for call in calls]
    mismatches, errors = [], []

    def worker(order):
        try:
            for _ in range(3):
                for i in order:
                    if not torch.equal(calls[i](), expected[i]):
                        mismatches.append(i)
        except Exception as error:  # reported below: a thread's exception does not fail the test itself
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(list(range(len(calls)))[shift:] + list(range(shift)),))
               for shift in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert not mismatches, f"calls {sorted(set(mismatches))} differ from their single-threaded results"


# --- long fp32 reductions ---

def relative_error(got, want):
    return ((got.double() - want).norm() / want.norm()).item()


@pytest.mark.parametrize("per_sample", [True, False])
def test_pointwise_gradients_on_a_megapixel_image_are_as_accurate_as_torch(per_sample):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 4, 1024, 1024, generator=g).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(2, 4, 4, 1, 1, generator=g), torch.randn(2, 4, generator=g)
    alpha = torch.rand(2, 2, generator=g) if per_sample else torch.rand(2, generator=g)
    grad = torch.rand(2, 4, 1024, 1024, generator=g).contiguous(memory_format=torch.channels_last)

    def gradients(dtype):
        inputs = [t.to(dtype).requires_grad_(True) for t in (weight, bias, alpha)]
        out = flexops.ops.tunable_conv2d(x.to(dtype), *inputs[:2], inputs[2])
        return torch.autograd.grad(out, inputs, grad.to(dtype))

    got, want = gradients(torch.float32), gradients(torch.float64)
    # PyTorch's own convolution on the same reduction, for the bar.
    w = weight[0].clone().requires_grad_(True)
    (torch_grad,) = torch.autograd.grad(F.conv2d(x, w), w, grad)
    w64 = weight[0].double().requires_grad_(True)
    (torch_want,) = torch.autograd.grad(F.conv2d(x.double(), w64), w64, grad.double())
    bar = max(2 * relative_error(torch_grad, torch_want), 1e-6)
    for name, ours, exact in zip(("weight", "bias", "alpha"), got, want):
        assert relative_error(ours, exact) <= bar, (name, relative_error(ours, exact), bar)
