"""deform_conv2d: the reference against torchvision, every backend against the reference, gradients,
opcheck, determinism, modules and errors."""

import random

import pytest
import torch
import torch.nn.functional as F

import flexops
from flexops import backends, reference
from flexops.ops import deform_conv2d

from shapes import case_id, layout, random_conv_cases

torchvision_ops = pytest.importorskip("torchvision.ops")

CASES = random_conv_cases(30, seed=3)
TRITON_CASES = random_conv_cases(8, seed=4, max_channels=4, max_size=6, max_batch=2)


def make_args(case, dtype, requires_grad=False):
    """Tensors for a case; offset groups, offset scale and mask presence are drawn from the case."""
    rng = random.Random(case_id(case))
    kh, kw = case["kernel"]
    cin = case["in_channels"]
    offset_groups = rng.choice([g for g in (1, 2, 3) if cin % g == 0])
    with_mask, with_bias = rng.random() < 0.7, rng.random() < 0.7
    scale = rng.choice((0.5, 2.0, 8.0))  # 8 samples far outside the image
    ho, wo = (
        (n + 2 * p - d * (k - 1) - 1) // s + 1
        for n, k, s, p, d in zip((case["height"], case["width"]), case["kernel"], case["stride"], case["padding"], case["dilation"])
    )
    b = case["batch"]
    x = layout(torch.randn(b, cin, case["height"], case["width"], dtype=dtype), case["layout"])
    offset = layout(scale * torch.randn(b, 2 * offset_groups * kh * kw, ho, wo, dtype=dtype), case["layout"])
    weight = torch.randn(case["out_channels"], cin // case["groups"], kh, kw, dtype=dtype)
    bias = torch.randn(case["out_channels"], dtype=dtype) if with_bias else None
    mask = torch.rand(b, offset_groups * kh * kw, ho, wo, dtype=dtype) if with_mask else None
    tensors = [x, offset, weight, bias, mask]
    if requires_grad:
        for t in tensors:
            if t is not None:
                t.requires_grad_(True)
    return tensors, (case["stride"], case["padding"], case["dilation"])


def run(fn, tensors, conv):
    x, offset, weight, bias, mask = tensors
    stride, padding, dilation = conv
    return fn(x, offset, weight, bias, stride=stride, padding=padding, dilation=dilation, mask=mask)


def assert_same_forward_and_grads(got_fn, want_fn, tensors, conv, atol, rtol):
    got, want = run(got_fn, tensors, conv), run(want_fn, tensors, conv)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=atol, rtol=rtol)
    inputs = [t for t in tensors if t is not None]
    grad = torch.randn_like(want)
    got_grads = torch.autograd.grad(got, inputs, grad, allow_unused=True)
    want_grads = torch.autograd.grad(want, inputs, grad, allow_unused=True)
    for g, w in zip(got_grads, want_grads):
        g = torch.zeros_like(w) if g is None and w is not None else g
        w = torch.zeros_like(g) if w is None and g is not None else w
        if g is not None:
            torch.testing.assert_close(g, w, atol=atol, rtol=rtol)


def with_backend(name):
    def fn(*args, **kwargs):
        with backends.use(name):
            return deform_conv2d(*args, **kwargs)

    return fn


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_reference_matches_torchvision(case):
    tensors, conv = make_args(case, torch.float64, requires_grad=True)
    assert_same_forward_and_grads(reference.deform_conv2d, torchvision_ops.deform_conv2d, tensors, conv, 1e-10, 1e-8)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_cpu_matches_reference(case):
    tensors, conv = make_args(case, torch.float64, requires_grad=True)
    assert_same_forward_and_grads(with_backend("cpu"), reference.deform_conv2d, tensors, conv, 1e-10, 1e-8)


@pytest.mark.parametrize("case", CASES[:8], ids=case_id)
def test_cpu_float32_matches_torchvision(case):
    tensors, conv = make_args(case, torch.float32, requires_grad=True)
    assert_same_forward_and_grads(with_backend("cpu"), torchvision_ops.deform_conv2d, tensors, conv, 1e-4, 1e-4)


@pytest.mark.parametrize("case", TRITON_CASES, ids=case_id)
def test_triton_matches_reference(case):
    tensors, conv = make_args(case, torch.float32, requires_grad=True)
    assert_same_forward_and_grads(with_backend("triton"), reference.deform_conv2d, tensors, conv, 1e-4, 1e-4)


def non_finite_cases():
    """(name, input, offset, mask) where torchvision's arithmetic order decides the result."""
    inf, nan = float("inf"), float("nan")
    one = torch.ones(1, 1, 1, 1)
    half_down = torch.tensor([0.5, 0.0]).reshape(1, 2, 1, 1)  # half on the pixel, half outside
    x = torch.arange(1.0, 13.0).reshape(1, 1, 3, 4)
    offset = torch.full((1, 18, 3, 4), 0.25)
    return {
        "inf mask, half outside": (one, half_down, torch.full((1, 1, 1, 1), inf)),
        "-inf mask, wholly outside": (one, torch.full((1, 2, 1, 1), 5.0), torch.full((1, 1, 1, 1), -inf)),
        "inf mask, zero pixel": (torch.zeros(1, 1, 1, 1), half_down, torch.full((1, 1, 1, 1), inf)),
        "inf pixel": (x.index_put((torch.tensor([0]), torch.tensor([0]), torch.tensor([1]), torch.tensor([2])),
                                  torch.tensor(inf)), offset, torch.rand(1, 9, 3, 4)),
        "nan pixel on a border": (x.index_put((torch.tensor([0]), torch.tensor([0]), torch.tensor([2]),
                                               torch.tensor([3])), torch.tensor(nan)), offset, None),
        "inf offset": (x, offset.index_fill(1, torch.tensor([4]), inf), torch.rand(1, 9, 3, 4)),
    }


@pytest.mark.parametrize("backend", ["cpu", "reference", "triton"])
@pytest.mark.parametrize("name", sorted(non_finite_cases()))
def test_non_finite_values_as_torchvision(name, backend):
    x, offset, mask = non_finite_cases()[name]
    kernel = offset.shape[1] // 2
    weight = torch.ones(1, 1, 3, 3) if kernel == 9 else torch.ones(1, 1, 1, 1)
    padding = 1 if kernel == 9 else 0
    want = torchvision_ops.deform_conv2d(x, offset, weight, padding=padding, mask=mask)
    got = with_backend(backend)(x, offset, weight, padding=padding, mask=mask)
    torch.testing.assert_close(got, want, equal_nan=True)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_zero_offset_and_unit_mask_is_conv2d(backend):
    x, weight, bias = torch.randn(2, 6, 9, 7), torch.randn(4, 3, 3, 2), torch.randn(4)
    out_size = (5, 5)
    offset, mask = torch.zeros(2, 2 * 3 * 6, *out_size), torch.ones(2, 3 * 6, *out_size)
    got = with_backend(backend)(x, offset, weight, bias, stride=(2, 1), padding=(1, 0), dilation=(1, 2), mask=mask)
    torch.testing.assert_close(got, F.conv2d(x, weight, bias, (2, 1), (1, 0), (1, 2), groups=2), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("with_mask", [True, False], ids=["dcn_v2", "dcn_v1"])
def test_gradcheck(with_mask):
    case = dict(batch=2, in_channels=4, out_channels=2, groups=2, kernel=(2, 3), height=4, width=5,
                stride=(1, 2), padding=(1, 1), dilation=(2, 1), layout="strided")
    (x, offset, weight, bias, mask), conv = make_args(case, torch.float64)
    mask = torch.rand(*mask.shape, dtype=torch.float64) if with_mask and mask is None else (mask if with_mask else None)
    tensors = [t.requires_grad_(True) for t in (x, offset, weight, torch.randn(2, dtype=torch.float64))]
    if mask is not None:
        tensors.append(mask.requires_grad_(True))

    def fn(x, offset, weight, bias, mask=None):
        return with_backend("cpu")(x, offset, weight, bias, *conv, mask=mask)

    assert torch.autograd.gradcheck(fn, tensors)


def test_opcheck():
    case = dict(batch=2, in_channels=4, out_channels=2, groups=1, kernel=(3, 3), height=5, width=5,
                stride=(1, 1), padding=(1, 1), dilation=(1, 1), layout="contiguous")
    (x, offset, weight, _, mask), conv = make_args(case, torch.float32)
    bias = torch.randn(2)
    mask = torch.rand(2, offset.shape[1] // 2, 5, 5) if mask is None else mask
    grad = torch.randn(2, 2, 5, 5)
    for suffix in ("", "_triton"):
        forward = getattr(torch.ops.flexops, "deform_conv2d" + suffix).default
        backward = getattr(torch.ops.flexops, "deform_conv2d_backward" + suffix).default
        for m in (mask, None):
            args = [t.clone().requires_grad_(True) for t in (x, offset, weight, bias)]
            torch.library.opcheck(forward, (*args, m if m is None else m.clone().requires_grad_(True), *conv))
            torch.library.opcheck(backward, (grad, x, offset, weight, m, *conv))


def test_cpu_results_do_not_depend_on_threads_or_batch():
    x, offset = torch.randn(3, 8, 20, 20), 3 * torch.randn(3, 18, 20, 20)
    weight, mask = torch.randn(8, 8, 3, 3), torch.rand(3, 9, 20, 20)
    args = (x, offset, weight, None, 1, 1, 1, mask)

    def forward_backward():
        leaves = [t.clone().requires_grad_(True) for t in (x, offset, weight, mask)]
        out = with_backend("cpu")(leaves[0], leaves[1], leaves[2], None, 1, 1, 1, leaves[3])
        out.backward(torch.ones_like(out))
        return [out] + [t.grad for t in leaves]

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = forward_backward()
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(single, forward_backward()):
        assert torch.equal(a, b)
    alone = with_backend("cpu")(x[1:2], offset[1:2], weight, None, 1, 1, 1, mask[1:2])
    assert torch.equal(alone, with_backend("cpu")(*args)[1:2])


def test_batch_zero():
    x = torch.randn(0, 4, 6, 6, requires_grad=True)
    offset = torch.randn(0, 18, 6, 6, requires_grad=True)
    weight = torch.randn(3, 4, 3, 3, requires_grad=True)
    out = deform_conv2d(x, offset, weight, padding=1)
    assert out.shape == (0, 3, 6, 6)
    out.sum().backward()
    assert weight.grad.shape == weight.shape and not weight.grad.any()


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(offset=torch.randn(2, 17, 6, 6)), "multiple of 18"),
        (dict(offset=torch.randn(2, 18, 5, 6)), r"offset must be \[B, 2\*og\*kh\*kw, Ho, Wo\]"),
        (dict(offset=torch.randn(1, 18, 6, 6)), r"offset must be"),
        (dict(offset=torch.randn(2, 90, 6, 6)), "offset groups \\(5\\) must divide input channels"),
        (dict(mask=torch.rand(2, 18, 6, 6)), r"mask must be \[B, og\*kh\*kw, Ho, Wo\]"),
        (dict(weight=torch.randn(4, 3, 3, 3)), "must divide input channels"),
        (dict(weight=torch.randn(3, 2, 3, 3)), "divisible by groups"),
        (dict(weight=torch.randn(4, 4, 3)), "weight must have 4 dimensions"),
        (dict(bias=torch.randn(3)), r"bias must be \[Cout\]"),
        (dict(mask=torch.rand(2, 9, 6, 6, dtype=torch.float64)), "mask has dtype"),
        # Shapes are checked before dtypes, as torchvision does.
        (dict(offset=torch.randn(2, 18, 5, 6), mask=torch.rand(2, 9, 6, 6, dtype=torch.float64)), "offset must be"),
        (dict(x=torch.randn(2, 4, 6, 6, dtype=torch.float64), weight=torch.randn(4, 3, 3, 3)), "must divide input"),
    ],
)
@pytest.mark.parametrize("caught", [ValueError, RuntimeError])  # RuntimeError: what torchvision raises
def test_bad_input(change, message, caught):
    args = dict(x=torch.randn(2, 4, 6, 6), offset=torch.randn(2, 18, 6, 6), weight=torch.randn(4, 4, 3, 3),
                bias=torch.randn(4), mask=torch.rand(2, 9, 6, 6))
    args.update(change)
    with pytest.raises(caught, match=message):
        deform_conv2d(args["x"], args["offset"], args["weight"], args["bias"], padding=1, mask=args["mask"])
    with pytest.raises(RuntimeError) as theirs:  # torchvision fails on the same input, and not on dtype first
        torchvision_ops.deform_conv2d(args["x"], args["offset"], args["weight"], args["bias"], padding=1,
                                      mask=args["mask"])
    assert "dtype" in message or "scalar type" not in str(theirs.value)


def test_deform_conv2d_module_matches_torchvision():
    ours = flexops.DeformConv2d(6, 4, (3, 2), stride=2, padding=1, groups=2)
    theirs = torchvision_ops.DeformConv2d(6, 4, (3, 2), stride=2, padding=1, groups=2)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 6, 9, 8)
    offset, mask = torch.randn(2, 12, 5, 5), torch.rand(2, 6, 5, 5)
    torch.testing.assert_close(ours(x, offset, mask), theirs(x, offset, mask), atol=1e-5, rtol=1e-5)


def test_fresh_modulated_layer_is_a_plain_conv():
    layer = flexops.ModulatedDeformConv2d(6, 8, 3, padding=1, offset_groups=2)
    x = torch.randn(2, 6, 10, 11)
    out = layer(x)
    torch.testing.assert_close(out, F.conv2d(x, layer.weight, layer.bias, padding=1), atol=1e-5, rtol=1e-5)
    out.square().sum().backward()
    assert layer.conv_offset.weight.grad.abs().sum() > 0  # the predictor learns from the first step


def test_fresh_sigmoid_mask_layer_is_half_a_conv_plus_bias():
    layer = flexops.ModulatedDeformConv2d(6, 8, 3, padding=1, offset_groups=2, mask_activation="sigmoid")
    x = torch.randn(2, 6, 10, 11)
    expected = 0.5 * F.conv2d(x, layer.weight, padding=1) + layer.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


def test_sigmoid_mask_layer_matches_torchvision_with_dcnv2_channel_split():
    layer = flexops.ModulatedDeformConv2d(4, 6, 3, padding=1, offset_groups=2, mask_activation="sigmoid")
    torch.nn.init.normal_(layer.conv_offset.weight, std=0.3)
    torch.nn.init.normal_(layer.conv_offset.bias, std=0.3)
    x = torch.randn(2, 4, 7, 9)
    o1, o2, m = layer.conv_offset(x).chunk(3, dim=1)  # DCNv2: offset = cat(o1, o2), mask = sigmoid(m)
    expected = torchvision_ops.deform_conv2d(x, torch.cat([o1, o2], 1), layer.weight, layer.bias, padding=1,
                                             mask=torch.sigmoid(m))
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


def test_unknown_mask_activation_is_refused():
    with pytest.raises(ValueError, match="mask_activation must be one of"):
        flexops.ModulatedDeformConv2d(4, 4, 3, mask_activation="tanh")

def test_flop_count():
    layer = flexops.ModulatedDeformConv2d(4, 8, 3, padding=1, bias=False)
    x = torch.randn(1, 4, 6, 6)
    predictor = 27 * 6 * 6 * 4 * 9
    conv = 8 * 6 * 6 * 4 * 9
    sampling = 4 * 9 * 36 * 5
    assert flexops.flops.count(layer, x) == predictor + conv + sampling


def test_messages_carry_torchvisions_phrases():
    """Code and tests written for torchvision match these phrases of its messages."""
    layer = flexops.DeformConv2d(6, 2, (3, 2), padding=(1, 0), groups=2)
    x, offset, mask = torch.randn(2, 6, 5, 4), torch.randn(2, 36, 5, 3), torch.rand(2, 18, 5, 3)
    assert layer(x, offset, mask).shape == (2, 2, 5, 3)  # 3 offset groups
    with pytest.raises(RuntimeError, match="the shape of the offset is not valid: offset.shape.1. must be "
                                           r"2 \* offset_groups \* kh \* kw, a nonzero multiple of 12 \(kernel 3x2\)"):
        layer(x, offset[:, :2])
    with pytest.raises(RuntimeError, match=r"mask.shape\[1\] is not valid: mask must be \[B, og\*kh\*kw, Ho, Wo\] = "
                                           r"\[2, 18, 5, 3\] \(og = 3 offset groups, from offset\); got \[2, 2, 5, 3\]"):
        layer(x, offset, mask[:, :2])
    with pytest.raises(RuntimeError, match=r"^mask must be \[B, og\*kh\*kw, Ho, Wo\]"):  # only the rows wrong
        layer(x, offset, mask[:, :, :4])


def test_module_is_one_leaf_for_torchvisions_feature_extractor():
    """torchvision's feature extractor treats its own ops' modules as leaves; flexops' layers are leaves
    under any torch.fx tracer, so it sees one node for each, as it does for torchvision.ops.DeformConv2d."""
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    class Net(torch.nn.Module):
        def __init__(self, dcn):
            super().__init__()
            self.dcn = dcn

        def forward(self, x, offset, mask):
            return self.dcn(x, offset, mask).relu()

    ours = Net(flexops.DeformConv2d(6, 4, (3, 2), stride=2, padding=1, groups=2))
    theirs = Net(torchvision_ops.DeformConv2d(6, 4, (3, 2), stride=2, padding=1, groups=2))
    assert get_graph_node_names(ours) == get_graph_node_names(theirs) == (["x", "offset", "mask", "dcn", "relu"],) * 2
    x, offset, mask = torch.randn(2, 6, 9, 8), torch.randn(2, 12, 5, 5), torch.rand(2, 6, 5, 5)
    features = create_feature_extractor(ours, ["dcn"])(x, offset, mask)
    torch.testing.assert_close(features["dcn"], ours.dcn(x, offset, mask), rtol=0, atol=0)


def test_modulated_layer_names_its_input_channels():
    layer = flexops.ModulatedDeformConv2d(64, 64, 3, padding=1)
    with pytest.raises(flexops.ops.ArgumentError,
                       match=r"x must be \[B, in_channels=64, H, W\] for this layer, got \[1, 3, 16, 16\]$"):
        layer(torch.randn(1, 3, 16, 16))
    with pytest.raises(flexops.ops.ArgumentError, match=r"x must be \[B, in_channels=6, H, W\] for this layer"):
        flexops.DeformConv2d(6, 4, 3)(torch.randn(1, 4, 8, 8), torch.randn(1, 18, 6, 6))
