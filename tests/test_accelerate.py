"""flexops.accelerate on third-party networks: spandrel's SwinIR, HAT, DRCT and Swin2SR (tiny configs,
random weights), a network with torchvision's DeformConv2d and DCNv2 modules that call torchvision's
deform_conv2d themselves give the same outputs before and after, and the report says what was
swapped and what was left."""

import copy

import pytest
import torch
from torch import nn

import flexops
from flexops.models.swin_family import FusedOverlapBlock, FusedSwinBlock, overlap_position_index
from flexops.models.swinir import SwinTransformerBlock

pytest.importorskip("spandrel")
from spandrel.architectures.DRCT import DRCT  # noqa: E402
from spandrel.architectures.HAT import HAT  # noqa: E402
from spandrel.architectures.Swin2SR import Swin2SR  # noqa: E402
from spandrel.architectures.SwinIR import SwinIR  # noqa: E402

torchvision_ops = pytest.importorskip("torchvision.ops")
import torchvision  # noqa: E402
from torchvision.ops import deform_conv2d  # noqa: E402

TINY = dict(embed_dim=12, depths=[2, 2], num_heads=[2, 3], mlp_ratio=2, drop_path_rate=0.0)
NETWORKS = {  # name: (constructor, blocks it holds: Swin blocks and HAT's OCABs, modules left)
    "swinir": (lambda: SwinIR(window_size=8, img_size=16, upsampler="pixelshuffle", upscale=2, **TINY), 4, 0),
    "hat": (lambda: HAT(window_size=8, img_size=16, upscale=2, num_feat=8, compress_ratio=3, squeeze_factor=4,
                        **TINY), 6, 0),
    "drct": (lambda: DRCT(window_size=8, img_size=16, gc=4, upsampler="pixelshuffle", upscale=2, **TINY), 10, 0),
    "swin2sr": (lambda: Swin2SR(window_size=8, img_size=16, upsampler="pixelshuffledirect", upscale=2, **TINY), 4, 0),
}


def random_weights(net, dtype, seed=0):
    """Every parameter random (outputs of order 1); Swin2SR's first head gets a logit scale above its
    clamp, so that the clamp is exercised."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=generator))
        for module in net.modules():
            if hasattr(module, "logit_scale"):
                module.logit_scale[0] = 5.0
    return net.to(dtype).eval()


@pytest.mark.parametrize("name", NETWORKS)
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_same_outputs(name, dtype, tol):
    build, blocks, left = NETWORKS[name]
    theirs = random_weights(build(), dtype)
    ours = copy.deepcopy(theirs)
    keys = ours.state_dict().keys()
    report = flexops.accelerate(ours)
    assert len(report.replaced) == blocks and len(report.left) == left, str(report)
    assert sum(isinstance(m, FusedSwinBlock) for m in ours.modules()) == blocks
    assert ours.state_dict().keys() == keys
    for size in ((16, 16), (24, 40)):  # the trained size, and one with another shift mask (DRCT does not pad)
        x = torch.rand(1, 3, *size, dtype=dtype)
        with torch.no_grad():
            torch.testing.assert_close(ours(x), theirs(x), rtol=tol, atol=tol)


def test_same_parameters_not_copies():
    net = SwinIR(window_size=8, img_size=16, **TINY).eval()
    qkv = net.layers[0].residual_group.blocks[1].attn.qkv.weight
    flexops.accelerate(net)
    block = net.layers[0].residual_group.blocks[1]
    assert isinstance(block, FusedSwinBlock) and block.attn.qkv.weight is qkv and block.shift_size == 4
    assert isinstance(block, SwinTransformerBlock)  # the zoo's one Swin block, on the third-party layers


def test_hat_block_refuses_another_relative_position_index():
    net = random_weights(NETWORKS["hat"][0](), torch.float32)
    flexops.accelerate(net)
    block = net.layers[0].residual_group.blocks[0]
    x, size = torch.rand(1, 16 * 16, block.mlp.fc1.in_features), (16, 16)
    block(x, size, block.index)
    with pytest.raises(ValueError, match="relative position index passed .* is not the one"):
        block(x, size, block.index.flip(0))


def test_hat_overlapping_blocks():
    """HAT's OCABs are fused on their own layers, with HAT's own overlapping index (whose negative
    entries wrap), and refuse another index; accelerated in training mode, their gradients are HAT's."""
    theirs = random_weights(NETWORKS["hat"][0](), torch.float64).train()
    ours = copy.deepcopy(theirs)
    table = ours.layers[0].residual_group.overlap_attn.relative_position_bias_table
    report = flexops.accelerate(ours)
    assert ("layers.1.residual_group.overlap_attn", "OCAB -> FusedOverlapBlock (overlapping window attention)") \
        in report.replaced and "channel-attention branch" in str(report)
    block = ours.layers[0].residual_group.overlap_attn
    assert isinstance(block, FusedOverlapBlock) and block.training
    assert torch.equal(overlap_position_index(8, 12), theirs.relative_position_index_OCA)
    assert block.relative_position_bias_table is table  # the same Parameter, not a copy
    x = torch.rand(2, 3, 16, 24, dtype=torch.float64)
    ours(x).square().sum().backward()
    theirs(x).square().sum().backward()
    their_parameters = dict(theirs.named_parameters())
    for name, mine in ours.named_parameters():
        torch.testing.assert_close(mine.grad, their_parameters[name].grad, rtol=1e-9, atol=1e-12, msg=name)
    tokens, size = torch.rand(1, 16 * 16, block.mlp.fc1.in_features, dtype=torch.float64), (16, 16)
    with pytest.raises(ValueError, match="relative position index passed .* is not the one"):
        block(tokens, size, block.index.flip(1))


def test_attention_dropout_is_left():
    net = SwinIR(window_size=8, img_size=16, attn_drop_rate=0.1, **TINY)
    report = flexops.accelerate(net)
    assert not report.replaced and len(report.left) == 4
    assert "attention dropout" in report.left[0][1]


class DeformNet(nn.Module):
    """A DCN layer whose offsets and mask a plain convolution predicts (the DCNv2 pattern)."""

    def __init__(self):
        super().__init__()
        self.offsets = nn.Conv2d(4, 3 * 9, 3, padding=1)
        self.dcn = torchvision_ops.DeformConv2d(4, 6, 3, padding=1)

    def forward(self, x):
        offset_y, offset_x, mask = self.offsets(x).chunk(3, dim=1)
        return self.dcn(x, torch.cat((offset_y, offset_x), 1), torch.sigmoid(mask))


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_torchvision_deform_conv(dtype, tol):
    theirs = random_weights(DeformNet(), dtype)
    ours = copy.deepcopy(theirs)
    report = flexops.accelerate(ours)
    assert report.replaced == [("dcn", "torchvision DeformConv2d -> flexops.nn.DeformConv2d")]
    assert isinstance(ours.dcn, flexops.DeformConv2d)
    x = torch.rand(2, 4, 9, 11, dtype=dtype)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=tol, atol=tol)


class DCNv2Pack(nn.Module):
    """A DCNv2 module as BasicSR writes one: its own weight, its offsets and mask from a convolution,
    then torchvision's function deform_conv2d (called as torchvision.ops.deform_conv2d)."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(6, 4, 3, 3))
        self.bias = nn.Parameter(torch.randn(6))
        self.conv_offset = nn.Conv2d(4, 3 * 9, 3, padding=1)

    def offsets_and_mask(self, x):
        offset_y, offset_x, mask = self.conv_offset(x).chunk(3, dim=1)
        return torch.cat((offset_y, offset_x), 1), torch.sigmoid(mask)

    def forward(self, x):
        offset, mask = self.offsets_and_mask(x)
        return torchvision.ops.deform_conv2d(x, offset, self.weight, self.bias, (1, 1), (1, 1), mask=mask)


class DCNv2ThroughOps(DCNv2Pack):
    def forward(self, x):  # the function through torchvision.ops, imported under a name of its own
        offset, mask = self.offsets_and_mask(x)
        return torchvision_ops.deform_conv2d(x, offset, self.weight, self.bias, padding=1, mask=mask)


class DCNv2ByName(DCNv2Pack):
    def forward(self, x):  # the function imported by name
        offset, mask = self.offsets_and_mask(x)
        return deform_conv2d(x, offset, self.weight, self.bias, padding=(1, 1), mask=mask)


def ops_run(fn):
    """The names of the operators `fn()` dispatched."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        fn()
    return {event.key for event in profile.key_averages()}


@pytest.mark.parametrize("pack", [DCNv2Pack, DCNv2ThroughOps, DCNv2ByName])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_functional_deform_conv_calls_flexops(pack, dtype, tol):
    theirs = random_weights(nn.Sequential(pack()), dtype)
    ours = copy.deepcopy(theirs)
    report = flexops.accelerate(ours)
    assert report.replaced == [("0", f"{pack.__name__}: its forward's torchvision.ops.deform_conv2d -> "
                                     "flexops.ops.deform_conv2d")] and report.left == []
    assert type(ours[0]) is pack and list(ours.state_dict()) == list(theirs.state_dict())
    x = torch.rand(2, 4, 9, 11, dtype=dtype)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=tol, atol=tol)
        ran = ops_run(lambda: ours(x))
        assert "flexops::deform_conv2d" in ran and "torchvision::deform_conv2d" not in ran
        assert "torchvision::deform_conv2d" in ops_run(lambda: pack().to(dtype)(x))  # the class is untouched
    copied = copy.deepcopy(ours)  # the rebound forward follows its module
    assert copied[0].forward.__self__ is copied[0]


def test_not_a_module():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        flexops.accelerate(torch.zeros(1))
