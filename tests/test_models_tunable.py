"""Tunable networks (the zoo's tunable.md): counts by hand, outputs against independent functional
implementations written here from the spec (official names), per-sample and shared omega, bake,
the parametric multi-loss and its sampling, errors, training (CLI, resume) and the control the paper
claims on a tiny ResNet."""

import math

import pytest
import torch
import torch.nn.functional as F

from flexops.models import create, data, list_models
from flexops.models.swinir import SwinIR
from flexops.models.tunable import (EXPERIMENTS, Discriminator, ParametricMultiLoss, RelativisticAdversary, TunableEDSR,
                                    TunableNAFNet, TunablePairs, TunableStyleNet, TunableSwinIR, sample_omega, train)
from flexops.models.tunable import loss as losses
from flexops.models.tunable.train import loss_function
from flexops.models.tunable.__main__ import main
from flexops.models.tunable.core import TUNABLE
from flexops.models import train as training

# --------------------------------------------------------------------------------------------- #
# Counts, by hand from the spec's layer lists
# --------------------------------------------------------------------------------------------- #


def conv(cin, cout, k, bias=True, groups=1):
    return cout * cin // groups * k * k + (cout if bias else 0)


def edsr_counts(scale):
    """(tunable elements per kernel set, tunable layers, untunable) of the ResNet."""
    convs = [conv(3, 64, 3)] + [conv(64, 64, 3)] * 32 + [conv(64, 256, 3)] * {1: 0, 4: 2}[scale] + [conv(64, 3, 3)]
    return sum(convs), len(convs), 0


def nafnet_counts(width=32, enc=(2, 2, 4, 8), middle=12, dec=(2, 2, 2, 2)):
    def block(c):  # conv1, conv2 (depth-wise), conv3, sca, conv4, conv5, beta, gamma; two LayerNorms
        tunable = [conv(c, 2 * c, 1), conv(2 * c, 2 * c, 3, groups=2 * c), conv(c, c, 1), conv(c, c, 1),
                   conv(c, 2 * c, 1), conv(c, c, 1), c, c]
        return sum(tunable), len(tunable), 4 * c

    total = [conv(3, width, 3) + conv(width, 3, 3), 2, 0]
    c = width
    for n in enc:
        for _ in range(n):
            total = [a + b for a, b in zip(total, block(c))]
        total = [total[0] + conv(c, 2 * c, 2), total[1] + 1, total[2]]
        c *= 2
    for _ in range(middle):
        total = [a + b for a, b in zip(total, block(c))]
    for n in dec:
        total = [total[0] + conv(c, 2 * c, 1, bias=False), total[1] + 1, total[2]]
        c //= 2
        for _ in range(n):
            total = [a + b for a, b in zip(total, block(c))]
    return tuple(total)


def style_counts():
    convs = [conv(3, 64, 9), conv(64, 128, 3), conv(128, 128, 3), conv(128, 256, 3), conv(256, 256, 3)]
    convs += [conv(256, 256, 3)] * 12 + [conv(256, 128, 3), conv(128, 128, 3), conv(128, 64, 3), conv(64, 64, 3)]
    norms = 2 * (64 + 128 + 128 + 256 + 256 + 12 * 256 + 128 + 128 + 64 + 64)
    return sum(convs) + conv(64, 3, 9), len(convs) + 1, norms


def swinir_counts(embed=180, depths=6, blocks=6, heads=6, window=8, hidden=360):
    """Colour denoising SwinIR-M: conv_first, per block qkv, proj, bias table, fc1, fc2 (and two
    LayerNorms), per RSTB its conv, conv_after_body, conv_last; patch_embed.norm and the final norm."""
    linear = lambda cin, cout: cout * cin + cout  # noqa: E731
    block = [linear(embed, 3 * embed), linear(embed, embed), (2 * window - 1) ** 2 * heads, linear(embed, hidden),
             linear(hidden, embed)]
    tunable = [conv(3, embed, 3)] + (block * blocks + [conv(embed, embed, 3)]) * depths
    tunable += [conv(embed, embed, 3), conv(embed, 3, 3)]
    return sum(tunable), len(tunable), (2 * depths * blocks + 2) * 2 * embed


def params(p, counts):
    tunable, layers, untunable = counts
    return p * tunable + (p * p + p) * layers + untunable


@pytest.mark.parametrize("cls, kwargs, counts, expected", [
    (TunableEDSR, {}, edsr_counts(1), {1: 1_185_219, 2: 2_370_642, 3: 3_556_065}),
    (TunableEDSR, {"scale": 4}, edsr_counts(4), {1: 1_480_643, 2: 2_961_502, 3: 4_442_361}),
    (TunableNAFNet, {}, nafnet_counts(), {1: 29_159_715, 2: 58_281_794, 3: 87_403_873}),
    (TunableStyleNet, {}, style_counts(), {1: 8_780_739, 2: 17_553_034, 3: 26_325_329}),
    (TunableSwinIR, {}, swinir_counts(), {1: 11_504_163, 2: 22_982_820, 3: 34_461_477}),
], ids=["resnet", "resnet_x4", "nafnet", "stylenet", "swinir"])
def test_full_size_parameter_counts(cls, kwargs, counts, expected):
    layers = {TunableEDSR: 34 + 2 * ("scale" in kwargs), TunableNAFNet: 298, TunableStyleNet: 22,
              TunableSwinIR: 189}[cls]
    assert counts[1] == layers
    with torch.device("meta"):
        for p, count in expected.items():
            net = cls(num_params=p, mode="linear" if p == 1 else "mlp", **kwargs)
            assert len(net.tunable_layers) == layers
            assert params(p, counts) - (p * p + p) * layers * (p == 1) == count
            assert sum(t.numel() for t in net.parameters()) == count
        # The plain twins are the published networks (NAFNet: official SIDD-width32's 29,159,715).
        assert sum(t.numel() for t in net.plain().parameters()) == expected[1]


def test_which_tensors_are_tunable():
    with torch.device("meta"):
        net = TunableNAFNet(num_params=3, width=4, enc_blk_nums=(1,), middle_blk_num=1, dec_blk_nums=(1,))
        style = TunableStyleNet(num_params=3, num_channels=4, num_blocks=(1, 1, 1))
        swinir = TunableSwinIR(num_params=3)
    shapes = {name: tuple(t.shape) for name, t in net.named_parameters()}
    assert shapes["encoders.0.0.beta.weight"] == (3, 4, 1, 1) and shapes["middle_blks.0.gamma.weight"] == (3, 8, 1, 1)
    assert shapes["encoders.0.0.norm1.weight"] == (4,) and shapes["encoders.0.0.sca.1.weight"] == (3, 4, 4, 1, 1)
    assert shapes["ups.0.0.weight"] == (3, 16, 8, 1, 1) and "ups.0.0.bias" not in shapes
    assert shapes["encoders.0.0.conv2.weight"] == (3, 8, 1, 3, 3)  # depth-wise
    assert all(shapes[f"{name}.mlp.weight"] == (3, 3) for name, m in net.named_modules() if m in net.tunable_layers)
    assert all(t.shape == (4 * 2 ** i,) for i, t in enumerate(
        [style.encoder[0].norm.weight, style.encoder[1].norm.weight]))
    shapes = {name: tuple(t.shape) for name, t in swinir.named_parameters()}
    block = "layers.5.residual_group.blocks.5"
    assert shapes[f"{block}.attn.relative_position_bias_table.weight"] == (3, 225, 6)
    assert shapes[f"{block}.attn.qkv.weight"] == (3, 540, 180) and shapes[f"{block}.attn.qkv.bias"] == (3, 540)
    assert shapes[f"{block}.mlp.fc1.weight"] == (3, 360, 180) and shapes[f"{block}.attn.proj.mlp.weight"] == (3, 3)
    assert shapes["conv_first.weight"] == (3, 180, 3, 3, 3) and shapes["layers.0.conv.weight"] == (3, 180, 180, 3, 3)
    norms = [n for n in shapes if "norm" in n]
    assert len(norms) == 2 * (2 * 36 + 2) and all(shapes[n] == (180,) for n in norms)
    assert sum(1 for n in shapes if n.endswith("mlp.weight")) == 189


def test_registry():
    assert {"tunable_edsr", "tunable_nafnet", "tunable_stylenet", "tunable_swinir"} <= set(list_models())
    assert isinstance(create("tunable_edsr", n_resblocks=1, n_feats=4), TunableEDSR)


# --------------------------------------------------------------------------------------------- #
# Outputs against independent implementations (plain tensors by the official names)
# --------------------------------------------------------------------------------------------- #


def reference_edsr(s, x, n_resblocks, scale):
    mean = torch.tensor([0.4488, 0.4371, 0.4040]).to(x.dtype).view(1, 3, 1, 1)  # a float32 buffer
    c = lambda name, t: F.conv2d(t, s[f"{name}.weight"], s[f"{name}.bias"], padding=1)  # noqa: E731
    head = F.relu(c("head", x - mean))
    y = head
    for i in range(n_resblocks):
        y = y + 0.1 * c(f"body.{i}.conv2", F.relu(c(f"body.{i}.conv1", y)))
    y = y + head
    for i in range({1: 0, 4: 2}[scale]):
        y = F.pixel_shuffle(c(f"upsample.{i}", y), 2)
    return c("tail", y) + mean


def reference_nafnet(s, x, enc, middle, dec):
    """Official NAFNet_arch.py, functionally, on its state_dict names."""

    def ln(name, t):
        mu = t.mean(1, keepdim=True)
        var = (t - mu).pow(2).mean(1, keepdim=True)
        normalised = (t - mu) / (var + 1e-6).sqrt()
        return s[f"{name}.weight"].view(1, -1, 1, 1) * normalised + s[f"{name}.bias"].view(1, -1, 1, 1)

    def c(name, t, **kw):
        return F.conv2d(t, s[f"{name}.weight"], s.get(f"{name}.bias"), **kw)

    def block(n, inp):
        t = c(f"{n}.conv1", ln(f"{n}.norm1", inp))
        t = c(f"{n}.conv2", t, padding=1, groups=t.shape[1])
        a, b = t.chunk(2, 1)
        t = a * b
        t = t * c(f"{n}.sca.1", F.adaptive_avg_pool2d(t, 1))
        y = inp + c(f"{n}.conv3", t) * s[f"{n}.beta"]
        a, b = c(f"{n}.conv4", ln(f"{n}.norm2", y)).chunk(2, 1)
        return y + c(f"{n}.conv5", a * b) * s[f"{n}.gamma"]

    h, w = x.shape[-2:]
    m = 2 ** len(enc)
    inp = F.pad(x, (0, (m - w % m) % m, 0, (m - h % m) % m))
    t = c("intro", inp, padding=1)
    skips = []
    for i, n in enumerate(enc):
        for j in range(n):
            t = block(f"encoders.{i}.{j}", t)
        skips.append(t)
        t = c(f"downs.{i}", t, stride=2)
    for j in range(middle):
        t = block(f"middle_blks.{j}", t)
    for i, n in enumerate(dec):
        t = F.pixel_shuffle(c(f"ups.{i}.0", t), 2) + skips[-1 - i]
        for j in range(n):
            t = block(f"decoders.{i}.{j}", t)
    return (c("ending", t, padding=1) + inp)[:, :, :h, :w]


def reference_style(s, x, blocks):
    mean = torch.tensor([0.485, 0.456, 0.406]).to(x.dtype).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).to(x.dtype).view(1, 3, 1, 1)

    def cb(name, t, stride=1):
        k = s[f"{name}.conv.weight"].shape[-1]
        t = F.conv2d(t, s[f"{name}.conv.weight"], s[f"{name}.conv.bias"], stride=stride, padding=k // 2)
        return F.relu(F.instance_norm(t, weight=s[f"{name}.norm.weight"], bias=s[f"{name}.norm.bias"]))

    h, w = x.shape[-2:]
    t = F.pad((x - mean) / std, (0, -w % 4, 0, -h % 4), mode="reflect")
    t = cb("encoder.0", t)
    t = cb("encoder.1", t, 2)
    t = cb("encoder.2", t, 2)
    for i in range(blocks):
        r = F.conv2d(cb(f"body.{i}.block", t), s[f"body.{i}.conv.weight"], s[f"body.{i}.conv.bias"], padding=1)
        t = F.relu(t + F.instance_norm(r, weight=s[f"body.{i}.norm.weight"], bias=s[f"body.{i}.norm.bias"]))
    for i in range(2):
        t = cb(f"decoder.{i}.0", F.interpolate(t, scale_factor=2, mode="nearest"))
    t = F.conv2d(t, s["tail.weight"], s["tail.bias"], padding=4)
    return (t * std + mean)[:, :, :h, :w]


def randomised(net):
    """The network in float64 with every tensor random (zero-initialised beta/gamma would hide paths)."""
    net = net.double()
    with torch.no_grad():
        for t in net.parameters():
            t.normal_(0, 0.3)
    return net


NETS = {
    "resnet": (lambda: TunableEDSR(n_resblocks=2, n_feats=8), lambda s, x: reference_edsr(s, x, 2, 1), (2, 3, 12, 10)),
    "resnet_x4": (lambda: TunableEDSR(3, n_resblocks=1, n_feats=4, scale=4), lambda s, x: reference_edsr(s, x, 1, 4),
                  (2, 3, 6, 5)),
    "nafnet": (lambda: TunableNAFNet(width=4, enc_blk_nums=(1, 2), middle_blk_num=1, dec_blk_nums=(1, 1)),
               lambda s, x: reference_nafnet(s, x, (1, 2), 1, (1, 1)), (2, 3, 13, 10)),
    "stylenet": (lambda: TunableStyleNet(num_channels=4, num_blocks=(1, 2, 1)), lambda s, x: reference_style(s, x, 2),
                 (2, 3, 14, 10)),
}


@pytest.mark.parametrize("name", NETS)
def test_bake_equals_the_network_and_an_independent_implementation(name):
    make, reference, shape = NETS[name]
    net = randomised(make())
    x = torch.rand(shape, dtype=torch.float64)
    omega = torch.rand(net.num_params, dtype=torch.float64)
    plain = net.bake(omega)
    assert type(plain) is type(net.plain()) and not any(isinstance(m, TUNABLE) for m in plain.modules())
    torch.testing.assert_close(plain(x), net(x, omega), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(plain(x), reference(plain.state_dict(), x), rtol=1e-10, atol=1e-10)
    # The first layer's kernel is the mlp-mode blend: alpha = W omega + b.
    layer = net.tunable_layers[0]
    name = next(n for n, m in net.named_modules() if m is layer)
    alpha = layer.mlp.weight @ omega + layer.mlp.bias
    torch.testing.assert_close(plain.get_parameter(f"{name}.weight"),
                               torch.einsum("p,p...->...", alpha, layer.weight).detach(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", NETS)
def test_per_sample_omega_equals_one_call_per_sample_and_shared_equals_broadcast(name):
    make, _, shape = NETS[name]
    net = randomised(make())
    x = torch.rand(shape, dtype=torch.float64)
    omega = torch.rand(shape[0], net.num_params, dtype=torch.float64)
    batch = net(x, omega)
    for b in range(shape[0]):
        torch.testing.assert_close(batch[b:b + 1], net(x[b:b + 1], omega[b]), rtol=0, atol=1e-10)
    torch.testing.assert_close(net(x, omega[0]), net(x, omega[:1].expand(shape[0], -1)), rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", [*NETS, "swinir"])
def test_repeated_omega_without_autograd_runs_a_kept_baked_twin(name):
    if name == "swinir":
        net, shape = randomised(TunableSwinIR(**SMALL_SWINIR)).eval(), (2, 3, 16, 16)
    else:
        make, _, shape = NETS[name]
        net = randomised(make()).eval()
    x = torch.rand(shape, dtype=torch.float64)
    first, second = torch.rand(2, net.num_params, dtype=torch.float64)

    def kept():
        return net.__dict__.get("_last_call", (None, None, None))[2]

    with torch.no_grad():
        blended = net(x, first)  # the first call at this omega blends layer by layer and keeps nothing
        assert kept() is None
        again = net(x, first)
        twin = kept()
        assert twin is not None and not any(isinstance(m, TUNABLE) for m in twin.modules())
        torch.testing.assert_close(again, blended, rtol=0, atol=0)  # the same blends: identical outputs
        with torch.inference_mode():
            torch.testing.assert_close(net(x, first), blended, rtol=0, atol=0)
        assert kept() is twin
        # A weight changed in place: the twin is stale and is baked again.
        net.tunable_layers[0].weight.mul_(2)
        changed = net(x, first)
        assert kept() is not None and kept() is not twin and not torch.equal(changed, blended)
        net.reuse_baked = False
        torch.testing.assert_close(net(x, first), changed, rtol=0, atol=0)  # what blending gives
        net.reuse_baked = True
        # Another omega: back to blending per layer; per-sample omega never bakes.
        net(x, second)
        assert kept() is None
        net(x, second.expand(shape[0], -1))
        net(x, second.expand(shape[0], -1))
        assert kept() is None
        net(x, first)
        net(x, first)
        assert kept() is not None
    with torch.enable_grad():  # autograd on: the twin goes, nothing is baked, gradients reach the kernels
        net(x, first).sum().backward()
        assert kept() is None
        net(x, first).sum().backward()
    assert kept() is None and net.tunable_layers[0].weight.grad is not None
    net.reuse_baked = False
    with torch.no_grad():
        net(x, first)
        net(x, first)
    assert kept() is None


# A small SwinIR with both shifted and unshifted blocks, two RSTBs of different head counts.
SMALL_SWINIR = dict(img_size=16, window_size=4, depths=[2, 2], embed_dim=12, num_heads=[2, 3], mlp_ratio=2)


@pytest.mark.parametrize("upsampler", ["", "pixelshuffle"])
def test_swinir_per_sample_omega_and_bake(upsampler):
    settings = dict(SMALL_SWINIR, upsampler=upsampler, upscale=2, num_feat=8)
    net = randomised(TunableSwinIR(**settings)).eval()
    x = torch.rand(3, 3, 13, 10, dtype=torch.float64)  # padded to the window, cropped back
    omega = torch.rand(3, 2, dtype=torch.float64)
    batch = net(x, omega)
    assert batch.shape == (3, 3, 13 * (2 if upsampler else 1), 10 * (2 if upsampler else 1))
    for b in range(3):  # each image blends its own bias tables: the op gets a [B, heads, N, N] bias
        torch.testing.assert_close(batch[b:b + 1], net(x[b:b + 1], omega[b]), rtol=0, atol=1e-10)
    torch.testing.assert_close(net(x, omega[0]), net(x, omega[:1].expand(3, -1)), rtol=0, atol=1e-10)
    plain = net.bake(omega[1])
    assert type(plain) is SwinIR and not any(isinstance(m, TUNABLE) for m in plain.modules())
    torch.testing.assert_close(plain(x), net(x, omega[1]), rtol=1e-10, atol=1e-10)
    table = "layers.1.residual_group.blocks.1.attn.relative_position_bias_table"
    layer = net.get_submodule(table)
    alpha = layer.mlp.weight @ omega[1] + layer.mlp.bias
    torch.testing.assert_close(plain.get_parameter(table), torch.einsum("p,p...->...", alpha, layer.weight).detach())
    SwinIR(**settings).double().load_state_dict(plain.state_dict())  # strict: official names


@pytest.mark.parametrize("block", [0, 1], ids=["unshifted", "shifted"])
def test_swinir_block_with_inactive_windows_equals_its_baked_twin(block):
    """A tunable block whose early-exit state switches windows off (FlexIR's mask mode, one region per
    window) leaves their tokens as they were and updates the others exactly as its baked twin does."""
    from flexops.models.flexir.inference import RunningRegions
    from flexops.nn.tunable import Alphas

    net = randomised(TunableSwinIR(**SMALL_SWINIR)).eval()
    omega = torch.rand(2, dtype=torch.float64)
    name = f"layers.0.residual_group.blocks.{block}"
    tunable, plain = net.get_submodule(name), net.bake(omega).get_submodule(name)
    x = torch.rand(2, 16, 16, 12, dtype=torch.float64)
    active = torch.tensor([[[1, 0, 1, 1], [0, 1, 1, 0], [1, 1, 0, 1], [1, 1, 1, 0]]] * 2, dtype=torch.bool)
    boxes = [(4 * i, 4 * i + 4, 4 * j, 4 * j + 4) for i in range(4) for j in range(4)]
    running = RunningRegions(active.flatten(1), boxes, halo=1, device=x.device)
    out = tunable(x, Alphas(net.tunable_layers, omega), running)
    torch.testing.assert_close(out, plain(x, None, running), rtol=1e-10, atol=1e-10)
    off = ~active.repeat_interleave(4, 1).repeat_interleave(4, 2)  # unshifted: the windows' own tokens
    if block == 0:
        assert torch.equal(out[off], x[off])
    torch.testing.assert_close(tunable(x, Alphas(net.tunable_layers, omega)), plain(x), rtol=1e-10, atol=1e-10)


def test_swinir_from_swinir_reproduces_it_on_the_simplex():
    swinir = randomised(SwinIR(**SMALL_SWINIR, upscale=1)).eval()
    net = TunableSwinIR.from_swinir(swinir, 3)
    assert net.mode == "linear" and not net.training and net.conv_first.weight.dtype == torch.float64
    torch.testing.assert_close(net.conv_first.weight[2], swinir.conv_first.weight, rtol=0, atol=0)
    x = torch.rand(2, 3, 8, 12, dtype=torch.float64)
    expected = swinir(x)
    for omega in ([0.2, 0.3, 0.5], [0.0, 1.0, 0.0], [[0.6, 0.4, 0.0], [0.1, 0.1, 0.8]]):  # sums of 1 in float64
        torch.testing.assert_close(net(x, torch.tensor(omega, dtype=torch.float64)), expected, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="swinir must be a flexops.models.swinir.SwinIR, got TunableSwinIR"):
        TunableSwinIR.from_swinir(net, 3)


def assert_omega_errors(net, x):
    """A p = 2 network's errors for omega of the wrong length or batch and for a NaN in a shared or a
    per-image omega (x has batch 2)."""
    with pytest.raises(ValueError, match=r"omega must be \[2\] .* or \[B, 2\] .*got \[3\]"):
        net(x, torch.rand(3))
    with pytest.raises(ValueError, match=r"omega has 3 rows \(one setting per image\) but x has 2 images"):
        net(x, torch.rand(3, 2))
    for omega in (torch.tensor([0.5, float("nan")]), torch.tensor([[0.5, 0.5], [float("nan"), 0.5]])):
        with pytest.raises(ValueError, match="omega must be finite"):
            net(x, omega)


def test_swinir_bad_inputs_name_the_problem():
    net = TunableSwinIR(**SMALL_SWINIR)
    x = torch.rand(2, 3, 8, 8)
    assert_omega_errors(net, x)
    with pytest.raises(ValueError, match=r"omega must be \[2\] \(bake fixes one setting\)"):
        net.bake(torch.rand(2, 2))
    with pytest.raises(ValueError, match="holds 3 kernels per tunable layer .* build it with num_params=3"):
        net.load_state_dict(TunableSwinIR(3, **SMALL_SWINIR).state_dict())


def test_under_autocast_alphas_and_baked_weights_keep_the_parameters_dtype():
    from flexops.nn.tunable import Alphas

    net = TunableEDSR(n_resblocks=1, n_feats=4)
    omega = torch.tensor([0.3, 0.7])
    with torch.autocast("cpu", torch.bfloat16):
        alphas = Alphas(net.tunable_layers, omega)
        plain = net.bake(omega)
    assert all(alphas.of(layer).dtype == torch.float32 for layer in net.tunable_layers)
    assert all(t.dtype == torch.float32 for t in plain.state_dict().values())
    for key, t in net.bake(omega).state_dict().items():
        torch.testing.assert_close(plain.state_dict()[key], t, rtol=0, atol=0, msg=key)


def test_gradients_reach_every_kernel_and_mlp():
    net = TunableNAFNet(width=4, enc_blk_nums=(1,), middle_blk_num=1, dec_blk_nums=(1,))
    net(torch.rand(2, 3, 8, 8), torch.rand(2, 2)).square().mean().backward()
    missing = [n for n, t in net.named_parameters() if t.grad is None]
    assert not missing


def test_bad_inputs_name_the_problem():
    net = TunableEDSR(n_resblocks=1, n_feats=4)
    x = torch.rand(2, 3, 8, 8)
    assert_omega_errors(net, x)
    # omega is the user's setting, taken in the network's dtype (the layers' rule too).
    torch.testing.assert_close(net(x, torch.tensor([0, 1])), net(x, torch.tensor([0.0, 1.0])), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"x must be \[B, 3, H, W\]"):
        net(torch.rand(2, 4, 8, 8), torch.rand(2))
    with pytest.raises(ValueError, match=r"omega must be \[2\] \(bake fixes one setting\)"):
        net.bake(torch.rand(2, 2))
    with pytest.raises(ValueError, match="holds 3 kernels per tunable layer .* build it with num_params=3"):
        net.load_state_dict(TunableEDSR(3, n_resblocks=1, n_feats=4).state_dict())
    with pytest.raises(ValueError, match="scale must be"):
        TunableEDSR(scale=5)


# --------------------------------------------------------------------------------------------- #
# The parametric multi-loss and omega sampling
# --------------------------------------------------------------------------------------------- #


def test_multi_loss_is_eq7_with_per_image_omega():
    output, noisy, clean = torch.rand(3, 4, 3, 5, 5).unbind(0)
    omega = torch.rand(4, 2)
    loss = ParametricMultiLoss(losses.denoise_objectives(), lambdas=[1.0, 2.0])
    rec = (output - clean).abs().mean((1, 2, 3))
    target = clean + (0.9 * omega[:, 1]).view(-1, 1, 1, 1) * (noisy - clean)
    kept = (output - target).abs().mean((1, 2, 3))
    expected = (omega[:, 0] * rec + 2 * omega[:, 1] * kept).mean()
    torch.testing.assert_close(loss(output, (noisy, clean), omega), expected)
    # A shared omega is the same for every image.
    shared = loss(output, (noisy, clean), omega[0])
    torch.testing.assert_close(shared, loss(output, (noisy, clean), omega[:1].expand(4, 2)))
    with pytest.raises(ValueError, match=r"omega must be \[2\] or \[B, 2\] = \[4, 2\]"):
        loss(output, (noisy, clean), torch.rand(3, 2))


def test_discriminator_takes_any_size_from_16():
    disc = Discriminator(width=4)
    assert disc(torch.rand(2, 3, 16, 16)).shape == (2,) and disc(torch.rand(3, 3, 40, 24)).shape == (3,)
    # The paper's 4 scales: four stride-2 stages, then pooling before the fully-connected layers.
    assert sum(m.stride == (2, 2) for m in disc.modules() if isinstance(m, torch.nn.Conv2d)) == 4
    with pytest.raises(ValueError, match=r"H, W >= 16"):
        disc(torch.rand(1, 3, 8, 32))


def test_ragan_losses_and_the_discriminator_step():
    torch.manual_seed(0)
    adversary = RelativisticAdversary(Discriminator(width=4))
    fake, real = torch.rand(3, 3, 16, 16, requires_grad=True), torch.rand(3, 3, 16, 16)
    disc = adversary.discriminator
    before = [t.detach().clone() for t in disc.parameters()]

    g = adversary.generator_loss(fake, real)
    assert g.shape == (3,) and all(t.grad is None for t in disc.parameters())  # trains the network only
    g.sum().backward()
    assert fake.grad is not None and all(t.grad is None for t in disc.parameters())

    # An independent writing of RaGAN (BCE with logits: target 1 -> softplus(-x), target 0 -> softplus(x)),
    # on the same logits (BatchNorm in train mode normalises reals and fakes as one batch).
    logits = disc(torch.cat([real, fake.detach()])).detach()
    d_real, d_fake = logits[:3], logits[3:]
    expected_g = 0.5 * (F.softplus(d_real - d_fake.mean()) + F.softplus(-(d_fake - d_real.mean())))
    torch.testing.assert_close(g.detach(), expected_g)
    expected_d = 0.5 * (F.softplus(-(d_real - d_fake.mean())).mean() + F.softplus(d_fake - d_real.mean()).mean())
    torch.testing.assert_close(adversary.discriminator_loss(fake.detach(), real).detach(), expected_d)

    metrics = adversary.after_step()  # the discriminator's step on the remembered pair
    assert set(metrics) == {"L_D"} and math.isfinite(metrics["L_D"])
    assert any(not torch.equal(a, b) for a, b in zip(before, disc.parameters()))
    assert adversary.after_step() == {}  # no new pair, no step


def test_sr_training_with_the_adversary_resumes_bit_identically(tmp_path):
    features = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU()).requires_grad_(False)
    images = [im[:, :64, :64] for im in data.sample_images()[:2]]
    spec = EXPERIMENTS["sr"]

    def run(steps, checkpoint):
        torch.manual_seed(0)
        adversary = RelativisticAdversary(Discriminator(width=4))
        multi_loss = ParametricMultiLoss(losses.sr_objectives(features, adversary))
        net = TunableEDSR(n_resblocks=1, n_feats=4, scale=4)
        dataset = TunablePairs(images, 8, spec)  # 8x8 inputs, 32x32 targets
        loss_fn = loss_function(multi_loss, spec.sampling)
        training.train(net, loss_fn, dataset, steps=steps, batch_size=2, lr=1e-3, milestones=[], checkpoint=checkpoint,
                       save_every=2, progress=False, companions={"discriminator": adversary})
        return net, adversary

    whole, whole_adversary = run(4, None)
    run(2, tmp_path / "sr.pt")
    resumed, resumed_adversary = run(4, tmp_path / "sr.pt")
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(whole_adversary.discriminator.state_dict().values(),
                    resumed_adversary.discriminator.state_dict().values()):
        assert torch.equal(a, b)
    assert "discriminator" in training.load_checkpoint(tmp_path / "sr.pt")


def test_joint_targets_reading():
    noisy, clean, output = torch.rand(3, 2, 3, 12, 12).unbind(0)
    noise, blur = losses.joint_objectives()
    omega = torch.tensor([[1.0, 0.0], [0.3, 0.0]])
    # omega_1 = 1 removes all the noise; omega_2 = 0 adds no sharpening, so L_blur = L_noise.
    torch.testing.assert_close(noise(output, (noisy, clean), omega)[0], (output[0] - clean[0]).abs().mean())
    torch.testing.assert_close(blur(output, (noisy, clean), omega), noise(output, (noisy, clean), omega))
    # The sharpening of a constant image is nothing; of an edge, an overshoot of gamma * omega_2.
    flat = torch.full((1, 3, 12, 12), 0.5)
    torch.testing.assert_close(losses.sharpen(flat, torch.ones(1)), flat)
    assert losses.sharpen(torch.eye(12).expand(1, 3, 12, 12), torch.ones(1)).max() > 1 + 4


def test_omega_sampling():
    g = torch.Generator().manual_seed(0)
    two = sample_omega("simplex", 4000, 2, g)
    assert torch.allclose(two.sum(1), torch.ones(4000)) and abs(two[:, 0].mean() - 0.5) < 0.02
    three = sample_omega("simplex", 4000, 3, g)
    assert torch.allclose(three.sum(1), torch.ones(4000)) and (three >= 0).all()
    assert torch.allclose(three.mean(0), torch.full((3,), 1 / 3), atol=0.02)  # Dirichlet(1, 1, 1)
    free = sample_omega("independent", 4000, 2, g)
    assert (free >= 0).all() and (free <= 1).all() and (free.sum(1) - 1).abs().max() > 0.5
    step = sample_omega("independent", 5, 2, g, per_sample=False)
    assert (step == step[0]).all()
    with pytest.raises(ValueError, match="kind must be"):
        sample_omega("dirichlet", 2, 2)


def test_perceptual_objectives_need_local_vgg_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="VGG-19 weights, not found at .*does not download them"):
        losses.vgg19_features("conv5_4", tmp_path / "vgg19.pth")


def test_style_objective_with_given_features():
    features = torch.nn.Conv2d(3, 4, 3, padding=1).requires_grad_(False)
    style, content = torch.rand(3, 16, 16), torch.rand(2, 3, 16, 16)
    (objective,) = losses.style_objectives(features, [style])
    output = content.clone().requires_grad_(True)
    value = objective(output, (content, content), torch.ones(2, 1))
    expected = 1e5 * (losses.gram(features(content)) - losses.gram(features(style[None]))).pow(2).sum((1, 2))
    tv = (content[..., 1:, :] - content[..., :-1, :]).abs().sum((1, 2, 3)) + \
        (content[..., 1:] - content[..., :-1]).abs().sum((1, 2, 3))
    torch.testing.assert_close(value, expected + 1e-6 * tv)  # output == content: no content or chroma term


# --------------------------------------------------------------------------------------------- #
# Training
# --------------------------------------------------------------------------------------------- #


def test_pairs_are_reproducible_and_degraded():
    images = [im[:, :64, :64] for im in data.sample_images()[:2]]
    sr = TunablePairs(images, 8, EXPERIMENTS["sr"], seed=1)
    lr_patch, hr_patch = sr[3]
    assert lr_patch.shape == (3, 8, 8) and hr_patch.shape == (3, 32, 32)
    joint = TunablePairs(images, 16, EXPERIMENTS["joint"], seed=1)
    assert all(torch.equal(a, b) for a, b in zip(joint[5], joint[5]))
    noisy, clean = joint[5]
    assert noisy.shape == clean.shape and not torch.equal(noisy, clean)


def test_cli_trains_saves_and_resumes(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for i, image in enumerate(data.sample_images()[:2]):
        data.save_image(image[:, :48, :48], images / f"{i}.png")
    args = ["train", "--data", str(images), "--steps", "2", "--batch-size", "2", "--patch-size", "16", "--blocks", "1",
            "--features", "4", "--checkpoint", str(tmp_path / "run.pt"), "--no-progress", "--experiment", "joint"]
    main(args)
    assert training.load_checkpoint(tmp_path / "run.pt")["step"] == 2
    main(args[:4] + ["3"] + args[5:])
    assert training.load_checkpoint(tmp_path / "run.pt")["step"] == 3
    model = training.load_model(tmp_path / "run.pt")
    assert isinstance(model, TunableEDSR) and model.num_params == 2
    with pytest.raises(SystemExit):
        main(args[:-1] + ["sr"])  # no VGG weights here: a message, not a traceback
    assert "VGG-19 weights" in capsys.readouterr().err


def psnr(a, b):
    return (-10 * torch.log10((a.clamp(0, 1) - b).square().mean())).item()


def test_control_direction_on_a_tiny_resnet():
    """The paper's claim (Table 1) on a 2-block ResNet trained a few hundred CPU steps at sigma 25:
    as omega_1 goes 0 -> 1 the output moves from the noisy input to the clean image."""
    images = [im[:, :128, :128] for im in data.sample_images()[:4]]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # layers this small run slower with threads than without
    try:
        net = train("denoise", "edsr", images, network_kwargs=dict(n_resblocks=2, n_feats=16), steps=300,
                    patch_size=32, batch_size=8, lr=5e-3, sigma_range=(25, 25), progress=False)
        pairs = TunablePairs(images, 32, EXPERIMENTS["denoise"], (25, 25), seed=99)  # unseen patches
        noisy, clean = map(torch.stack, zip(*[pairs[i] for i in range(16)]))
        with torch.no_grad():
            outputs = [net(noisy, torch.tensor([w, 1 - w])) for w in (0.0, 0.5, 1.0)]
    finally:
        torch.set_num_threads(threads)
    to_clean = [psnr(out, clean) for out in outputs]
    to_noisy = [psnr(out, noisy) for out in outputs]
    assert to_clean[0] < to_clean[1] < to_clean[2], to_clean
    assert to_noisy[0] > to_noisy[1] > to_noisy[2], to_noisy
    assert to_clean[2] > psnr(noisy, clean) + 3  # omega = (1, 0) denoises


def test_nafnet_runs_channels_last_on_cpu_except_batches_with_a_setting_per_image():
    """NAFNet's maps are channels-last on CPU (faster there, eager and compiled), except for a batch
    with a setting per image and in a half type (whose kernels convert contiguous images per tile);
    the output is contiguous and the two layouts compute the same to float32 rounding."""
    net = TunableNAFNet(width=4, enc_blk_nums=(1,), middle_blk_num=1, dec_blk_nums=(1,)).eval()
    seen = []
    net.intro.register_forward_pre_hook(
        lambda module, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)
                                         and not args[0].is_contiguous()))
    x, omega = torch.rand(2, 3, 16, 16), torch.tensor([0.3, 0.7])
    with torch.no_grad():
        outputs = [net(x, omega), net(x, omega.expand(2, -1)), net(x[:1], omega[None]), net.bake(omega)(x)]
    assert seen == [True, False, True]
    assert all(out.is_contiguous() for out in outputs)
    with torch.no_grad():
        net.to(torch.bfloat16)(x.bfloat16(), omega.bfloat16())  # a half type: contiguous maps
    assert seen[-1] is False
    for out in outputs[1:]:
        torch.testing.assert_close(out, outputs[0][:len(out)], rtol=1e-5, atol=1e-6)
