"""window_attention: the reference against an independent SwinIR-style implementation, every backend
against the reference over random shapes and active masks; gradients, opcheck, compile, the module
(SwinIR checkpoints load), the early-exit helpers, FLOP counting and errors."""

import random
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import flexops
from flexops import backends, reference
from flexops.models.swinir_reference import partition, reverse, shift_mask
from flexops.nn.window_attention import relative_position_index, window_tokens
from flexops.ops import window_attention

from shapes import assert_grads_match

# ---------------------------------------------------------------------------------------------------
# SwinIR's path, written out the way its network code does it (roll, partition copy, additive -100
# mask, softmax, reverse copy, roll back), independently of flexops.reference; the window partition
# and the shift mask are those of the official-style SwinIR the zoo's SwinIR is tested against.


def swin_attention(qkv, heads, ws, shift, bias, scale):
    b, h, w, c3 = qkv.shape
    c = c3 // 3
    x = torch.roll(qkv, (-shift, -shift), (1, 2)) if shift else qkv
    windows = partition(x, ws)  # [B*nW, N, 3C]
    bn, n, _ = windows.shape
    q, k, v = windows.reshape(bn, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    attn = (q * scale) @ k.transpose(-2, -1)
    if bias is not None:  # [heads, N, N] for every window, or [B, heads, N, N] for the windows of each image
        attn = attn + (bias.unsqueeze(0) if bias.dim() == 3 else bias.repeat_interleave((h // ws) * (w // ws), 0))
    if shift:
        mask = shift_mask(h, w, ws, shift).to(qkv)
        attn = attn.view(b, mask.shape[0], heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
        attn = attn.view(bn, heads, n, n)
    out = (attn.softmax(-1) @ v).transpose(1, 2).reshape(bn, n, c)
    out = reverse(out, ws, h, w)
    return torch.roll(out, (shift, shift), (1, 2)) if shift else out


class SwinIRWindowAttention(torch.nn.Module):
    """SwinIR's layer as its checkpoints store it (the index is a persistent buffer), on windows
    [B * windows, N, C] with an additive mask."""

    def __init__(self, dim, ws, heads):
        super().__init__()
        self.ws, self.heads, self.scale = ws, heads, (dim // heads) ** -0.5
        self.relative_position_bias_table = torch.nn.Parameter(torch.randn((2 * ws - 1) ** 2, heads))
        self.register_buffer("relative_position_index", relative_position_index(ws))
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.proj = torch.nn.Linear(dim, dim)

    def forward(self, x, shift):
        b, h, w, _ = x.shape
        n = self.ws**2
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
        return self.proj(swin_attention(self.qkv(x), self.heads, self.ws, shift, bias.permute(2, 0, 1), self.scale))


# ---------------------------------------------------------------------------------------------------


def random_cases(count, seed, max_windows=3, max_batch=2, head_dims=(30, 30, 4, 7)):
    rng = random.Random(seed)
    cases = []
    for _ in range(count):
        ws = rng.choice((7, 8, 4, 3))
        cases.append(dict(
            batch=rng.choice((0,) + tuple(range(1, max_batch + 1))),
            ws=ws,
            shift=rng.choice((0, ws // 2, ws // 2, 1)),
            rows=rng.randint(1, max_windows),
            cols=rng.randint(1, max_windows),
            heads=rng.randint(1, 6),
            head_dim=rng.choice(head_dims),
            bias=rng.random() < 0.7,
            active=rng.choice(("none", "random", "random", "off")),
            layout=rng.choice(("contiguous", "sliced", "transposed")),
        ))
    return cases


def per_image_bias_cases(count, seed, **kwargs):
    """Random cases whose bias is [B, heads, N, N], one per image, on batches of 1 to 3."""
    return [dict(case, bias="per_image") for case in random_cases(count, seed, max_batch=3, **kwargs)]


def case_id(case):
    bias = {False: "", True: "_bias", "per_image": "_bias_per_image"}[case["bias"]]
    return "b{batch}_ws{ws}_s{shift}_{rows}x{cols}_h{heads}x{head_dim}_{active}_{layout}".format(**case) + bias


def make_inputs(case, dtype):
    b, ws, heads, hd = case["batch"], case["ws"], case["heads"], case["head_dim"]
    h, w, c3 = case["rows"] * ws, case["cols"] * ws, 3 * heads * hd
    # Logits of a few units, as in a trained network, so that -100 in SwinIR's mask vanishes.
    qkv = torch.randn(b, h, w, c3, dtype=dtype)
    if case["layout"] == "sliced":  # part of a wider map: the token stride is not 3C
        qkv = torch.randn(b, h, w, c3 + 5, dtype=dtype)[..., 2:2 + c3]
    elif case["layout"] == "transposed":  # H and W swapped in memory
        qkv = qkv.transpose(1, 2).contiguous().transpose(1, 2)
    bias = None
    if case["bias"]:
        bias = torch.randn(*([b] if case["bias"] == "per_image" else []), heads, ws * ws, ws * ws, dtype=dtype)
    active = None
    if case["active"] == "random":
        active = torch.rand(b, case["rows"], case["cols"]) < 0.6
    elif case["active"] == "off":
        active = torch.zeros(b, case["rows"], case["cols"], dtype=torch.bool)
    return qkv, bias, active


def check_against_reference(backend, case, dtype, atol, rtol):
    qkv, bias, active = make_inputs(case, dtype)
    leaves = [qkv.requires_grad_()] + ([bias.requires_grad_()] if bias is not None else [])
    args = (case["heads"], case["ws"], case["shift"], bias, None, active)
    with backends.use(backend):
        out = window_attention(qkv, *args)
    expected = reference.window_attention(qkv, *args[:4], case["head_dim"] ** -0.5, active)
    torch.testing.assert_close(out, expected, atol=atol, rtol=rtol)
    assert out.is_contiguous()
    if active is not None:
        off = ~window_tokens(active, case["ws"], case["shift"])
        assert bool((out[off] == 0).all())
    assert_grads_match(out, expected, leaves, atol, rtol)


SWIN_CASES = random_cases(12, seed=1) + per_image_bias_cases(4, seed=4)
CPU_CASES = random_cases(40, seed=2) + per_image_bias_cases(16, seed=5)
# The Triton interpreter costs about 1 ms per program (one per window and head): few, small windows.
TRITON_CASES = random_cases(8, seed=3, max_windows=2, max_batch=1, head_dims=(30, 4)) + per_image_bias_cases(
    3, seed=6, max_windows=1, head_dims=(30, 4)
)


@pytest.mark.parametrize("case", SWIN_CASES, ids=case_id)
def test_reference_matches_swinir(case):
    qkv, bias, _ = make_inputs(case, torch.float64)
    scale = case["head_dim"] ** -0.5
    expected = swin_attention(qkv, case["heads"], case["ws"], case["shift"], bias, scale)
    out = reference.window_attention(qkv, case["heads"], case["ws"], case["shift"], bias, scale)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("case", CPU_CASES, ids=case_id)
def test_cpu_matches_reference(case):
    check_against_reference("cpu", case, torch.float64, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("case", CPU_CASES[:12] + CPU_CASES[-4:], ids=case_id)
def test_cpu_float32_matches_reference(case):
    check_against_reference("cpu", case, torch.float32, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", CPU_CASES[:12] + CPU_CASES[-4:], ids=case_id)
def test_cpu_low_precision_forward_is_float32_rounded_once(case, dtype):
    """bfloat16 and float16 on CPU: the forward widens each window as it copies it and rounds the
    output as it scatters it, so it equals the float32 op on the same rounded values, rounded once
    (every layout, shift, active mask and bias kind among the cases)."""
    qkv, bias, active = make_inputs(case, torch.float32)
    qkv, bias = qkv.to(dtype), None if bias is None else bias.to(dtype)
    args = (case["heads"], case["ws"], case["shift"])
    with backends.use("cpu"):
        out = window_attention(qkv, *args, bias, None, active)
        widened = window_attention(qkv.float(), *args, None if bias is None else bias.float(), None, active)
    assert out.dtype == dtype and out.is_contiguous()
    torch.testing.assert_close(out, widened.to(dtype), atol=0, rtol=0)


@pytest.mark.parametrize("case", TRITON_CASES, ids=case_id)
def test_triton_matches_reference(case):
    check_against_reference("triton", case, torch.float32, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("shift", [0, 2])
def test_gradcheck(shift):
    qkv = torch.randn(2, 8, 4, 3 * 2 * 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(2, 16, 16, dtype=torch.float64, requires_grad=True)
    active = torch.tensor([[[True], [True]], [[False], [True]]])

    def fn(qkv, bias):
        return window_attention(qkv, 2, 4, shift, bias, 0.7, active)

    with backends.use("cpu"):
        assert torch.autograd.gradcheck(fn, (qkv, bias))
        assert torch.autograd.gradcheck(lambda qkv: window_attention(qkv, 2, 4, shift), (qkv,))


def large_logit_inputs(dtype):
    """Shift case with logits of about +-100, which trained SwinIR weights can reach: there -100 and
    exact exclusion give different probabilities."""
    generator = torch.Generator().manual_seed(5)
    qkv = 10 * torch.randn(2, 8, 12, 3 * 2 * 8, generator=generator, dtype=dtype)
    bias = 5 * torch.randn(2, 16, 16, generator=generator, dtype=dtype)
    return qkv, bias


@pytest.mark.parametrize(
    "backend, dtype, tol",
    [("reference", torch.float64, 1e-12), ("cpu", torch.float64, 1e-10), ("cpu", torch.float32, 1e-4),
     ("triton", torch.float32, 1e-4)],
)
def test_mask_value_gives_swinir_at_large_logits(backend, dtype, tol):
    qkv, bias = large_logit_inputs(dtype)
    scale = 8**-0.5
    swinir = swin_attention(qkv.double(), 2, 4, 2, bias.double(), scale).to(dtype)
    leaves = [qkv.requires_grad_(), bias.requires_grad_()]
    with backends.use(backend):
        out = window_attention(qkv, 2, 4, 2, bias, scale, mask_value=-100.0)
        exact = window_attention(qkv, 2, 4, 2, bias, scale)
    torch.testing.assert_close(out, swinir, atol=tol, rtol=tol)
    # The default, exact exclusion, is a different function at these logits.
    assert (exact - swinir).abs().max() > 0.1
    expected = reference.window_attention(qkv.double(), 2, 4, 2, bias.double(), scale, None, -100.0)
    assert_grads_match(out, expected.to(dtype), leaves, 100 * tol, 100 * tol)


def test_gradcheck_per_image_bias():
    # One head, two windows per image: each image's bias gets only its own windows' gradient.
    qkv = torch.randn(2, 4, 8, 3 * 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(2, 1, 16, 16, dtype=torch.float64, requires_grad=True)
    active = torch.tensor([[[True, True]], [[False, True]]])
    with backends.use("cpu"):
        assert torch.autograd.gradcheck(lambda q, b: window_attention(q, 1, 4, 2, b, 0.7, active), (qkv, bias))


def test_mask_value_gradcheck():
    # Small: the bias gradient under mask_value is checked against the reference at large logits above.
    qkv = torch.randn(1, 4, 8, 3 * 2, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(1, 16, 16, dtype=torch.float64)
    with backends.use("cpu"):
        assert torch.autograd.gradcheck(lambda q: window_attention(q, 1, 4, 2, bias, 0.7, mask_value=-3.0), (qkv,))


def test_module_mask_value():
    layer = flexops.WindowAttention(16, 4, 2, mask_value=-100.0)
    x = 3 * torch.randn(1, 8, 8, 16)
    qkv, bias = layer.qkv(x), layer.relative_position_bias()
    expected = layer.proj(swin_attention(qkv, 2, 4, 2, bias, layer.scale))
    torch.testing.assert_close(layer(x, 2), expected, atol=1e-5, rtol=1e-5)
    assert "mask_value=-100.0" in repr(layer)


@pytest.mark.parametrize("per_image", [False, True], ids=["shared_bias", "per_image_bias"])
def test_cpu_is_deterministic_across_thread_counts(per_image):
    qkv = torch.randn(3, 16, 24, 3 * 2 * 30, requires_grad=True)
    bias = torch.randn(*([3] if per_image else []), 2, 64, 64, requires_grad=True)
    grad = torch.randn(3, 16, 24, 60)
    results = []
    threads = torch.get_num_threads()
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            out = window_attention(qkv, 2, 8, 4, bias)
            results.append((out, *torch.autograd.grad(out, (qkv, bias), grad)))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_opcheck():
    qkv, bias = torch.randn(2, 8, 16, 3 * 2 * 5), torch.randn(2, 16, 16)
    active = torch.tensor([[[True, False, True, True], [False, True, True, True]]] * 2)
    for name in ("window_attention", "window_attention_triton"):
        for b, a in ((bias, active), (None, None)):
            args = (qkv.clone().requires_grad_(), 2, 4, 2, b if b is None else b.clone().requires_grad_(), 0.5, a)
            torch.library.opcheck(getattr(torch.ops.flexops, name).default, args)
            if b is not None:
                torch.library.opcheck(getattr(torch.ops.flexops, name).default, (*args, -100.0))
    grad = torch.randn(2, 8, 16, 10)
    for name in ("window_attention_backward", "window_attention_backward_triton"):
        torch.library.opcheck(getattr(torch.ops.flexops, name).default, (grad, qkv, 2, 4, 2, bias, 0.5, active))
        torch.library.opcheck(getattr(torch.ops.flexops, name).default, (grad, qkv, 2, 4, 2, bias, 0.5, active, -100.0))


def test_opcheck_per_image_bias():
    qkv, bias = torch.randn(2, 4, 8, 3 * 2 * 5), torch.randn(2, 2, 16, 16)
    active = torch.tensor([[[True, False]], [[True, True]]])
    for name in ("window_attention", "window_attention_triton"):
        args = (qkv.clone().requires_grad_(), 2, 4, 2, bias.clone().requires_grad_(), 0.5, active)
        torch.library.opcheck(getattr(torch.ops.flexops, name).default, args)
    grad = torch.randn(2, 4, 8, 10)
    torch.library.opcheck(torch.ops.flexops.window_attention_backward.default, (grad, qkv, 2, 4, 2, bias, 0.5, active))


def test_compile_fullgraph():
    torch._dynamo.reset()
    layer = flexops.WindowAttention(12, 4, 3)
    x, active = torch.randn(1, 8, 8, 12), torch.tensor([[[True, False], [True, True]]])
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, 2, active), layer(x, 2, active))
    compiled(x, 2, active).sum().backward()
    assert layer.relative_position_bias_table.grad is not None and layer.qkv.weight.grad is not None


def test_module_per_image_bias_table():
    layer = flexops.WindowAttention(12, 4, 3).double()
    x, tables = torch.randn(3, 8, 8, 12, dtype=torch.float64), torch.randn(3, 49, 3, dtype=torch.float64)
    out = layer(x, 2, bias_table=tables)
    for i in range(3):
        torch.testing.assert_close(out[i:i + 1], layer(x[i:i + 1], 2, bias_table=tables[i]), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(layer(x, 2, bias_table=layer.relative_position_bias_table), layer(x, 2))
    with pytest.raises(ValueError, match=r"bias table must be \[\(2 ws - 1\)\^2, heads\] = \[49, 3\]"):
        layer(x, 2, bias_table=torch.randn(3, 48, 3, dtype=torch.float64))


@pytest.mark.parametrize("shift", [0, 4])
def test_module_loads_swinir_checkpoints(shift):
    swin = SwinIRWindowAttention(24, 8, 3)
    layer = flexops.WindowAttention(24, (8, 8), 3)
    layer.load_state_dict(swin.state_dict())  # strict: SwinIR's keys, index buffer included
    assert "relative_position_index" not in layer.state_dict()
    x = torch.randn(2, 16, 24, 24)
    torch.testing.assert_close(layer(x, shift), swin(x, shift), atol=1e-5, rtol=1e-5)
    bad = dict(swin.state_dict(), relative_position_index=torch.zeros(64, 64, dtype=torch.long))
    with pytest.raises(ValueError, match="relative_position_index"):
        layer.load_state_dict(bad)


def test_module_zeroes_skipped_tokens():
    layer = flexops.WindowAttention(12, 4, 2)
    x = torch.randn(1, 8, 12, 12)
    active = torch.tensor([[[True, False, True], [False, False, True]]])
    out = layer(x, 2, active)
    tokens = window_tokens(active, 4, 2)
    assert bool((out[~tokens] == 0).all())
    torch.testing.assert_close(out[tokens], layer(x, 2)[tokens])
    assert "dim=12, window_size=4, num_heads=2" in repr(layer)


def test_active_windows():
    running = torch.zeros(2, 8, 12, dtype=torch.bool)
    running[0, 0, 0] = True  # with shift 2 this token sits in the last window of the rolled grid
    running[1, 5, 6] = True
    assert active_windows_list(running, 4, 0) == [[(0, 0)], [(1, 1)]]
    assert active_windows_list(running, 4, 2) == [[(1, 2)], [(0, 1)]]
    # Per region: a 2 x 3 grid of 4 x 4 regions on an 8 x 12 map.
    regions = torch.tensor([[[False, True, False], [False, False, False]]])
    assert torch.equal(flexops.active_windows(regions, 4, 0, size=(8, 12)), regions)
    # Every active window holds a running token, and every running token is in an active window.
    running = torch.rand(3, 16, 8) < 0.05
    for shift in (0, 2):
        active = flexops.active_windows(running, 4, shift)
        assert bool((window_tokens(active, 4, shift) >= running).all())
        assert bool((window_tokens(flexops.active_windows(window_tokens(active, 4, shift), 4, shift), 4, shift)
                     == window_tokens(active, 4, shift)).all())


def active_windows_list(running, ws, shift):
    active = flexops.active_windows(running, ws, shift)
    return [[tuple(i.tolist()) for i in a.nonzero()] for a in active]


class ShiftedWindowAttention(flexops.WindowAttention):
    """Shift 2 fixed: fvcore traces python numbers among the inputs into tensors."""

    def forward(self, x, active=None):
        return super().forward(x, 2, active)


def test_flop_count_counts_active_windows():
    layer = ShiftedWindowAttention(12, 4, 3)
    x = torch.randn(2, 8, 12, 12)
    active = torch.zeros(2, 2, 3, dtype=torch.bool)
    active[0, 0, :2] = active[1, 1, 2] = True
    attention = 3 * 2 * 16 * 16 * 12  # 3 active windows, q k^T and P v
    linears = 2 * 8 * 12 * (12 * 36 + 12 * 12)
    assert flexops.flops.count(layer, x, active) == attention + linears
    assert flexops.flops.count(layer, x) == 12 * 2 * 16 * 16 * 12 + linears
    qkv = torch.randn(2, 8, 12, 36)
    with FlopCounterMode(display=False) as counter:
        window_attention(qkv, 3, 4, 2, active=active)
    assert counter.get_total_flops() == 2 * attention
    with FlopCounterMode(display=False) as counter:  # a bias per image adds no multiply-adds
        window_attention(qkv, 3, 4, 2, torch.randn(2, 3, 16, 16), active=active)
    assert counter.get_total_flops() == 2 * attention


def qkv_args(**change):
    args = dict(qkv=torch.randn(1, 8, 16, 36), num_heads=3, window_size=4, shift_size=2,
                rel_pos_bias=torch.randn(3, 16, 16), scale=None, active=None)
    args.update(change)
    return args


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(qkv=torch.randn(1, 10, 16, 36)), "H and W must be multiples of window_size = 4"),
        (dict(qkv=torch.randn(1, 8, 16, 35)), "3 \\* C with C a multiple of num_heads = 3"),
        (dict(qkv=torch.randn(8, 16, 36)), "qkv must have 4 dimensions"),
        (dict(qkv=torch.ones(1, 8, 16, 36, dtype=torch.long)), "qkv must be a floating-point tensor"),
        (dict(shift_size=4), r"shift_size must be an int in \[0, window_size = 4\)"),
        (dict(shift_size=-1), r"shift_size must be an int in \[0, window_size = 4\)"),
        (dict(window_size=0), "window_size must be a positive int"),
        (dict(num_heads=2.0), "num_heads must be a positive int"),
        (dict(rel_pos_bias=torch.randn(3, 9, 9)), r"rel_pos_bias must be \[num_heads, N, N\] = \[3, 16, 16\]"),
        (dict(rel_pos_bias=torch.randn(2, 3, 16, 16)),
         r"or, one per image, \[B, num_heads, N, N\] = \[1, 3, 16, 16\] \(N = window_size\^2\); got \[2, 3, 16, 16\]"),
        (dict(rel_pos_bias=torch.randn(1, 1, 3, 16, 16)), r"rel_pos_bias must be \[num_heads, N, N\]"),
        (dict(rel_pos_bias=torch.randn(3, 16, 16).double()), "rel_pos_bias has dtype torch.float64"),
        (dict(active=torch.ones(1, 2, 3, dtype=torch.bool)), r"active must be \[B, H/ws, W/ws\] = \[1, 2, 4\]"),
        (dict(active=torch.ones(1, 2, 4, device="meta")), "active is on meta"),
        (dict(scale="big"), "scale must be a real number"),
        (dict(scale=float("nan")), "scale must be a real number, finite, or None"),
        (dict(scale=float("inf")), "scale must be a real number, finite, or None"),
        (dict(qkv=torch.randn(1, 8, 16, 0), rel_pos_bias=None), "3 \\* C with C a multiple of num_heads = 3, C > 0"),
        (dict(shift_size=True), r"shift_size must be an int in \[0, window_size = 4\)"),
        (dict(num_heads=True), "num_heads must be a positive int"),
        (dict(mask_value=float("nan")), r"mask_value must be None or a real number below \+inf"),
        (dict(mask_value=float("inf")), r"mask_value must be None or a real number below \+inf"),
        (dict(mask_value="-100"), r"mask_value must be None or a real number below \+inf"),
    ],
)
def test_bad_input(change, message):
    with pytest.raises(ValueError, match=message):
        window_attention(**qkv_args(**change))


def test_forced_backend_that_cannot_run():
    with backends.use("cuda"), pytest.raises(backends.BackendUnavailable, match="no CUDA C\\+\\+ kernel"):
        window_attention(**qkv_args())
    with backends.use("triton"), pytest.raises(backends.BackendUnavailable, match="dtype torch.float64"):
        window_attention(**qkv_args(qkv=torch.randn(1, 8, 16, 36).double(), rel_pos_bias=None))


def test_zero_shift_and_full_window_is_plain_attention():
    qkv = torch.randn(2, 4, 4, 3 * 8)
    q, k, v = qkv.reshape(2, 16, 3, 2, 4).permute(2, 0, 3, 1, 4)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, 4, 4, 8)
    torch.testing.assert_close(window_attention(qkv, 2, 4), expected, atol=1e-5, rtol=1e-5)


def test_window_too_large_for_memory_is_refused_with_the_size(monkeypatch):
    op = sys.modules["flexops.ops.window_attention"]  # the module, not the function flexops.ops exports
    monkeypatch.setattr(op, "_MACHINE_BYTES", 16 * 2**30)  # a 16 GiB machine with two threads, whatever this is
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    with pytest.raises(flexops.ops.ArgumentError, match=(
        r"window_size = 256 is too large: with N = 65536 tokens a window's N x N float32 attention matrix takes "
        r"17.2 GB, and this call would hold 1 of them for each of 1 thread at once: 17.2 GB, more than half of "
        r"this machine's 17.2 GB; use a smaller window_size"
    )):
        window_attention(torch.randn(1, 256, 256, 3), 1, 256)  # one window, one head: one thread
    # Windows of 4096 tokens: a 67 MB matrix per (window, head), four with gradients.
    monkeypatch.setattr(op, "_MACHINE_BYTES", 2**29)
    assert window_attention(torch.randn(1, 64, 64, 6), 2, 64).shape == (1, 64, 64, 2)
    with pytest.raises(flexops.ops.ArgumentError, match=r"would hold 4 of them \(with gradients\) for each of 2 "):
        window_attention(torch.randn(1, 64, 128, 6, requires_grad=True), 2, 64)
    with backends.use("reference"), pytest.raises(
        flexops.ops.ArgumentError, match=r"would hold 2 of them for each of the reference backend's 8 \(window, head\)"
    ):
        window_attention(torch.randn(1, 128, 128, 6), 2, 64)


def test_module_refuses_channels_first_input():
    attention = flexops.WindowAttention(12, window_size=4, num_heads=2)
    with pytest.raises(flexops.ops.ArgumentError, match=(
        r"x must be a token map \[B, H, W, C = dim = 12\], channels last; got \[1, 12, 8, 8\] "
        r"\(a channels-first image: pass x.permute\(0, 2, 3, 1\)\)"
    )):
        attention(torch.randn(1, 12, 8, 8))
    with pytest.raises(flexops.ops.ArgumentError, match=r"C = dim = 12\], channels last; got \[1, 8, 8, 6\]$"):
        attention(torch.randn(1, 8, 8, 6))
