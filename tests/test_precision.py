"""bfloat16 and float16 in the op layer: every op and backend against the float64 reference with a
tolerance from the dtype's epsilon and the reduction length, forward and gradients; opcheck in
bfloat16; autocast of the Python ops, of the raw torch.ops.flexops ops and of every flexops.nn
layer; the layers cast whole."""

import collections

import pytest
import torch

import flexops
from flexops import backends, ops

from shapes import low_precision_tolerance

# (op, raw): the Python op on the float tensors, and the schema's arguments for them (the raw
# torch.ops.flexops.<name> call); inputs: the float tensors; reduction: the products summed into
# one value of the output or a gradient, at most.
Case = collections.namedtuple("Case", "op raw inputs reduction")


def tunable_case():
    alpha = torch.tensor([[0.3, 0.7], [1.2, -0.4]])
    return Case(
        lambda x, w, b, a: ops.tunable_conv2d(x, w, b, a, padding=1),
        lambda x, w, b, a: (x, w, b, a, [1, 1], [1, 1], [1, 1], 1),
        (torch.randn(2, 4, 5, 6), torch.randn(2, 3, 4, 3, 3), torch.randn(2, 3), alpha),
        # alpha's gradient: its sample's Cout * Ho * Wo outputs, each of Cin * kh * kw products
        3 * 5 * 6 * 4 * 9,
    )


def masked_case():
    in_mask = torch.tensor([[1, 0, 1, 1], [1, 1, 1, 1]], dtype=torch.bool)
    out_mask = torch.tensor([[1, 1, 0], [0, 1, 1]], dtype=torch.bool)
    return Case(
        lambda x, w, b: ops.masked_conv2d(x, w, b, in_mask, out_mask, padding=1),
        lambda x, w, b: (x, w, b, in_mask, out_mask, [1, 1], [1, 1], [1, 1]),
        (torch.randn(1, 4, 5, 6), torch.randn(3, 4, 3, 3), torch.randn(3)),
        2 * 5 * 6,  # the weight gradient: the two tasks' pixels
    )


def attention_case():
    active = torch.tensor([[[True, False]], [[True, True]]])
    return Case(
        lambda qkv, bias: ops.window_attention(qkv, 2, 4, 2, bias, 0.5, active),
        lambda qkv, bias: (qkv, 2, 4, 2, bias, 0.5, active),
        (torch.randn(2, 4, 8, 3 * 2 * 4), torch.randn(2, 16, 16)),
        # the bias gradient: 3 active windows, each of 16 tokens' head_dim = 4 products
        3 * 16 * 4,
    )


def deform_case():
    return Case(
        lambda x, offset, w, b, mask: ops.deform_conv2d(x, offset, w, b, padding=1, mask=mask),
        lambda x, offset, w, b, mask: (x, offset, w, b, mask, [1, 1], [1, 1], [1, 1]),
        (torch.randn(1, 4, 4, 4), 2 * torch.randn(1, 2 * 2 * 9, 4, 4), torch.randn(4, 2, 3, 3), torch.randn(4),
         torch.rand(1, 2 * 9, 4, 4)),
        4 * 4,  # the weight gradient: the image's pixels
    )


CASES = {"tunable_conv2d": tunable_case, "masked_conv2d": masked_case, "window_attention": attention_case,
         "deform_conv2d": deform_case}
# What each backend runs in low precision on CPU tensors (Triton under TRITON_INTERPRET=1).
BACKEND_DTYPES = [("cpu", torch.bfloat16), ("cpu", torch.float16), ("triton", torch.bfloat16), ("triton", torch.float16)]


def values_and_grads(op, inputs):
    out = op(*inputs)
    grads = torch.autograd.grad(out, inputs, torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out))
    return (out, *grads)


def leaves(tensors, dtype):
    return [t.detach().to(dtype).requires_grad_() for t in tensors]


@pytest.mark.parametrize("backend, dtype", BACKEND_DTYPES, ids=lambda v: str(v).removeprefix("torch."))
@pytest.mark.parametrize("name", CASES)
def test_low_precision_matches_float64_reference(name, backend, dtype):
    case = CASES[name]()
    rounded = leaves(case.inputs, dtype)
    with backends.use(backend):
        got = values_and_grads(case.op, rounded)
    with backends.use("reference"):
        want = values_and_grads(case.op, leaves(rounded, torch.float64))
    atol, rtol = low_precision_tolerance(dtype, case.reduction)
    for g, w in zip(got, want):
        assert g.dtype == dtype
        torch.testing.assert_close(g.double(), w, atol=atol, rtol=rtol)


# The ops whose forward hands its products to oneDNN in the half type where the CPU multiplies in it
# (cpu::half_type_products): tunable_conv2d (one alpha for the batch, or one per sample), deform_conv2d.
HALF_TYPE_PRODUCTS = {  # (case, the products summed into one output)
    "tunable_conv2d": (lambda: tunable_case()._replace(
        inputs=(torch.randn(1, 16, 5, 5).contiguous(memory_format=torch.channels_last), torch.randn(2, 4, 16, 3, 3),
                torch.randn(2, 4), torch.tensor([0.3, 0.7])),
        reduction=4 * 5 * 5 * 16 * 9), 2 * 16 * 9),  # alpha's gradient: every output's 16 * 3 * 3 products
    "tunable_conv2d per sample": (tunable_case, 2 * 4 * 9),
    "deform_conv2d": (deform_case, 2 * 9),
}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("name", HALF_TYPE_PRODUCTS)
def test_cpu_half_type_products(name, dtype, monkeypatch):
    """FLEXOPS_CPU_HALF_PRODUCTS=native (what a CPU whose oneDNN multiplies in the half type gets on
    its own) runs the forward's products in the half type: another result than the widened path's,
    within the dtype's tolerance of the float64 reference, gradients included (the backward widens)."""
    make_case, forward_reduction = HALF_TYPE_PRODUCTS[name]
    case = make_case()
    rounded = leaves(case.inputs, dtype)
    monkeypatch.setenv("FLEXOPS_CPU_HALF_PRODUCTS", "float32")
    widened = case.op(*rounded)
    monkeypatch.setenv("FLEXOPS_CPU_HALF_PRODUCTS", "native")
    got = values_and_grads(case.op, rounded)
    with backends.use("reference"):
        want = values_and_grads(case.op, leaves(rounded, torch.float64))
    assert not torch.equal(got[0], widened)
    for g, w, reduction in zip(got, want, [forward_reduction] + [case.reduction] * len(case.inputs)):
        assert g.dtype == dtype
        atol, rtol = low_precision_tolerance(dtype, reduction)
        torch.testing.assert_close(g.double(), w, atol=atol, rtol=rtol)


def test_cpu_half_type_products_setting_is_checked(monkeypatch):
    monkeypatch.setenv("FLEXOPS_CPU_HALF_PRODUCTS", "fast")
    case = deform_case()
    with pytest.raises(RuntimeError, match="FLEXOPS_CPU_HALF_PRODUCTS must be native, float32 or auto, not 'fast'"):
        case.op(*leaves(case.inputs, torch.bfloat16))


@pytest.mark.parametrize("name", CASES)
def test_opcheck_bfloat16(name):
    """The compiled op; its Triton twin has the same fake kernel and autograd (flexops.ops._register)
    and its bfloat16 numerics are tested above, so opcheck's five runs of it under the interpreter
    would add half a minute for nothing new."""
    case = CASES[name]()
    args = case.raw(*leaves(case.inputs, torch.bfloat16))
    torch.library.opcheck(getattr(torch.ops.flexops, name).default, args)


# Autocast in bfloat16 on the CPU kernels; in float16 (CUDA autocast's usual dtype) on the Triton kernels.
@pytest.mark.parametrize("backend, dtype", [("cpu", torch.bfloat16), ("triton", torch.float16)],
                         ids=["cpu-bfloat16", "triton-float16"])
@pytest.mark.parametrize("name", CASES)
def test_autocast_casts_every_float_argument(name, backend, dtype):
    """Under autocast, fp32 arguments give what the op gives on their casts to the region's dtype,
    in that dtype, and fp32 gradients: through the Python op and through the raw op alike."""
    case = CASES[name]()
    raw = getattr(torch.ops.flexops, name + ("_triton" if backend == "triton" else ""))
    with backends.use(backend):
        want = values_and_grads(case.op, leaves(case.inputs, dtype))
        for op in (case.op, lambda *tensors: raw(*case.raw(*tensors))):
            fp32 = leaves(case.inputs, torch.float32)
            with torch.autocast("cpu", dtype):
                out = op(*fp32)
            got = values_and_grads(lambda *_: out, fp32)
            assert out.dtype == dtype and all(g.dtype == torch.float32 for g in got[1:])
            for g, w in zip(got, want):
                torch.testing.assert_close(g, w.to(g.dtype), atol=0, rtol=0)


def test_autocast_leaves_float64_alone():
    """As torch's autocast does: float64 tensors are not cast, so a float64 call runs in float64."""
    case = tunable_case()
    inputs = [t.double() for t in case.inputs]
    with torch.autocast("cpu", torch.bfloat16):
        assert case.op(*inputs).dtype == torch.float64


# Every flexops.nn layer, tiny: (layer, its call on the layer, an input [2, 4, 6, 6] and the dtype of
# the other float arguments).
OFFSET, MASK = torch.randn(2, 18, 6, 6), torch.rand(2, 9, 6, 6)
LAYERS = {
    "TunableConv2d": (lambda: flexops.TunableConv2d(4, 3, 3, num_params=2, padding=1),
                      lambda layer, x, dtype: layer(x, torch.tensor([0.4, 0.6]))),
    "TunableLinear": (lambda: flexops.TunableLinear(4, 3, num_params=2),
                      lambda layer, x, dtype: layer(x.permute(0, 2, 3, 1), torch.tensor([[0.4, 0.6], [0.1, 0.9]]))),
    "TunableParameter": (lambda: flexops.TunableParameter((4, 3), num_params=2),
                         lambda layer, x, dtype: x.mean((2, 3)) @ layer(torch.tensor([0.4, 0.6])).to(dtype)),
    "MaskedConv2d": (lambda: flexops.MaskedConv2d(4, 3, 3, padding=1),
                     lambda layer, x, dtype: layer(x[:1], torch.tensor([[1, 1, 0, 1], [1, 1, 1, 1]]), torch.tensor([1, 0, 1]))),
    "DeformConv2d": (lambda: flexops.DeformConv2d(4, 3, 3, padding=1),
                     lambda layer, x, dtype: layer(x, OFFSET.to(dtype), MASK.to(dtype))),
    "ModulatedDeformConv2d": (lambda: flexops.ModulatedDeformConv2d(4, 3, 3, padding=1, mask_activation="sigmoid"),
                              lambda layer, x, dtype: layer(x)),
    "WindowAttention": (lambda: flexops.WindowAttention(4, 3, 2),
                        lambda layer, x, dtype: layer(x.permute(0, 2, 3, 1), 1, torch.tensor([[[True, False], [True, True]]] * 2))),
}


def test_every_layer_is_tested():
    assert set(LAYERS) == {name for name in flexops.nn.__all__ if name[0].isupper()}


@pytest.mark.parametrize("name", LAYERS)
def test_layer_under_autocast_and_cast_whole(name):
    """fp32 parameters under CPU autocast: a bfloat16 output and fp32 gradients; the layer cast to
    bfloat16: the same output within bfloat16's tolerance, and bfloat16 gradients."""
    make, call = LAYERS[name]
    layer, x = make(), torch.randn(2, 4, 6, 6)
    with torch.autocast("cpu", torch.bfloat16):
        out = call(layer, x, torch.float32)
    assert out.dtype == torch.bfloat16
    out.float().square().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in layer.parameters())
    layer.to(torch.bfloat16)
    cast = call(layer, x.bfloat16(), torch.bfloat16)
    assert cast.dtype == torch.bfloat16
    atol, rtol = low_precision_tolerance(torch.bfloat16, 4 * 9)
    torch.testing.assert_close(cast.float(), out.detach().float(), atol=atol, rtol=rtol)
    layer.zero_grad(set_to_none=True)
    cast.float().square().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.bfloat16 for p in layer.parameters())
