"""Tunable NAFNet (mindediting `TunableNAFNet`, the zoo's tunable.md 3.3) and its plain twin `NAFNet`.

Official NAFNet (megvii-research/NAFNet, basicsr/models/archs/NAFNet_arch.py) with its state_dict
names, so the plain twin loads official checkpoints strictly (NAFNet-SIDD-width32: width 32,
enc_blk_nums (2, 2, 4, 8), middle 12, dec (2, 2, 2, 2)). Tunable: every convolution (intro, ending,
the blocks' conv1..conv5 and sca, downs, ups) and each block's beta and gamma; LayerNorm2d is not.

>>> net = TunableNAFNet()                           # 58,281,794 parameters, 298 tunable layers
>>> y = net(torch.rand(1, 3, 64, 64), torch.tensor([1.0, 0.0]))
"""

import torch
import torch.nn.functional as F
from torch import nn

from flexops.models import checks
from flexops.models.registry import register
from flexops.models.tunable.core import Layers, TunableNetwork
from flexops.nn import dense
from flexops.nn.tunable import run_layer, value


class LayerNorm2d(nn.Module):
    """NAFNet's LayerNorm over the channels of each pixel (eps 1e-6); weight 1, bias 0 (official init)."""

    def __init__(self, channels, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        mu = x.mean(1, keepdim=True)
        centred = x - mu
        var = centred.pow(2).mean(1, keepdim=True)
        y = centred / (var + self.eps).sqrt()
        return self.weight.view(1, -1, 1, 1) * y + self.bias.view(1, -1, 1, 1)


class NAFBlock(nn.Module):
    """NAFNet's block (DW_Expand 2, FFN_Expand 2, no dropout): official names (`sca.1` is its conv)."""

    def __init__(self, layers, c):
        super().__init__()
        self.conv1 = layers.conv(c, 2 * c, 1)
        self.conv2 = layers.conv(2 * c, 2 * c, 3, groups=2 * c)
        self.conv3 = layers.conv(c, c, 1)
        self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), layers.conv(c, c, 1))
        self.conv4 = layers.conv(c, 2 * c, 1)
        self.conv5 = layers.conv(c, c, 1)
        self.norm1 = LayerNorm2d(c)
        self.norm2 = LayerNorm2d(c)
        # Zero at initialisation: a fresh block is the identity. Tunable [c, 1, 1], so per-image values
        # are [B, c, 1, 1]; the official (plain) shape is [1, c, 1, 1].
        self.beta = layers.param((c, 1, 1), (1, c, 1, 1))
        self.gamma = layers.param((c, 1, 1), (1, c, 1, 1))

    def run(self, inp, alphas):
        x = run_layer(self.conv2, run_layer(self.conv1, self.norm1(inp), alphas), alphas)
        x = _simple_gate(x)
        x = x * run_layer(self.sca, x, alphas)
        x = run_layer(self.conv3, x, alphas)
        y = inp + x * value(self.beta, alphas)
        x = run_layer(self.conv5, _simple_gate(run_layer(self.conv4, self.norm2(y), alphas)), alphas)
        return y + x * value(self.gamma, alphas)


def _simple_gate(x):
    x1, x2 = x.chunk(2, dim=1)
    return x1 * x2


class NAFNet(nn.Module):
    """NAFNet with plain layers (official names and parameters): what `TunableNAFNet.bake` returns.

    Args:
        width: channels of the first level (doubled per level down).
        enc_blk_nums, middle_blk_num, dec_blk_nums: blocks per encoder level, in the middle, per decoder
            level (len(dec_blk_nums) == len(enc_blk_nums)).
        img_channel: image channels in and out. layers: the layer factory (default: plain layers).

    forward(x [B, img_channel, H, W]) -> same shape; the input is zero-padded right and bottom to a
    multiple of 2^levels and the output cropped back, as the official network does.
    """

    def __init__(self, width=32, enc_blk_nums=(2, 2, 4, 8), middle_blk_num=12, dec_blk_nums=(2, 2, 2, 2),
                 img_channel=3, *, layers=None):
        super().__init__()
        enc_blk_nums, dec_blk_nums = tuple(enc_blk_nums), tuple(dec_blk_nums)
        if len(enc_blk_nums) != len(dec_blk_nums):
            raise ValueError(f"enc_blk_nums and dec_blk_nums must have one entry per level each; got "
                             f"{enc_blk_nums} and {dec_blk_nums}")
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be a positive int; got {width!r}")
        layers = layers or Layers()
        self.settings = dict(width=width, enc_blk_nums=enc_blk_nums, middle_blk_num=middle_blk_num,
                             dec_blk_nums=dec_blk_nums, img_channel=img_channel)
        self.in_chans = img_channel
        self.intro = layers.conv(img_channel, width, 3)
        self.ending = layers.conv(width, img_channel, 3)
        self.encoders, self.decoders, self.ups, self.downs = (nn.ModuleList() for _ in range(4))
        chan = width
        for num in enc_blk_nums:
            self.encoders.append(nn.Sequential(*[NAFBlock(layers, chan) for _ in range(num)]))
            self.downs.append(layers.conv(chan, 2 * chan, 2, stride=2))
            chan *= 2
        self.middle_blks = nn.Sequential(*[NAFBlock(layers, chan) for _ in range(middle_blk_num)])
        for num in dec_blk_nums:
            self.ups.append(nn.Sequential(layers.conv(chan, 2 * chan, 1, bias=False), nn.PixelShuffle(2)))
            chan //= 2
            self.decoders.append(nn.Sequential(*[NAFBlock(layers, chan) for _ in range(num)]))
        self.padder_size = 2 ** len(enc_blk_nums)

    def forward(self, x):
        checks.image_batch(x, self.in_chans)
        return self.run(x, None)

    def run(self, inp, alphas):
        height, width = inp.shape[-2:]
        inp = F.pad(inp, (0, -width % self.padder_size, 0, -height % self.padder_size))
        if _runs_channels_last(inp, alphas):
            inp = inp.contiguous(memory_format=torch.channels_last)
        x = run_layer(self.intro, inp, alphas)
        skips = []
        for encoder, down in zip(self.encoders, self.downs):
            for block in encoder:
                x = block.run(x, alphas)
            skips.append(x)
            x = run_layer(down, x, alphas)
        for block in self.middle_blks:
            x = block.run(x, alphas)
        for decoder, up, skip in zip(self.decoders, self.ups, reversed(skips)):
            x = run_layer(up, x, alphas) + skip
            for block in decoder:
                x = block.run(x, alphas)
        x = run_layer(self.ending, x, alphas) + inp
        return x[:, :, :height, :width].contiguous()


def _runs_channels_last(x, alphas):
    """Whether NAFNet runs on channels-last maps (CPU): LayerNorm2d's per-pixel means then read
    contiguous channels and oneDNN's convolutions need no reorders. Measured at 128x128 on 2 threads:
    plain NAFNet-SIDD-width32 123.6 -> 117.0 ms (batch 4: 646 -> 467 ms), tunable with a new shared
    omega 139.6 -> 123.0 ms; compiled, 123.5 -> 109.5 ms in one run (inductor gives the plain
    network's convolutions channels-last maps itself, not the tunable op's), though over 25 rounds
    it still read 11-15 % above its compiled baked twin. Not for a batch with a setting per image,
    whose pointwise kernels are blended as they are packed on contiguous images only
    (cpu/blended_pointwise.cpp): 457 -> 684 ms at batch 4; nor in a half type (cast whole or under
    autocast), where the tunable op widens contiguous images tile by tile but channels-last ones
    whole (bf16 peak at 128x128: 21 MB contiguous, 29 MB channels-last); nor while a graph is
    captured for export, which stays as the network is written."""
    if checks.traced(x) or x.device.type != "cpu":
        return False
    if dense.cpu_compute_dtype(x) not in (torch.float32, torch.float64):
        return False
    if alphas is None:  # the plain network
        return True
    # run() takes an Alphas, or omega itself (each layer then computes its own alpha).
    per_sample = alphas.dim() == 2 if isinstance(alphas, torch.Tensor) else alphas.per_sample
    return not per_sample or x.shape[0] == 1


@register("tunable_nafnet")
class TunableNAFNet(TunableNetwork, NAFNet):
    """Tunable NAFNet: every convolution and each block's beta, gamma tunable. forward(x, omega).

    Args:
        num_params: p. width, enc_blk_nums, middle_blk_num, dec_blk_nums, img_channel: as `NAFNet`
            (defaults: NAFNet-SIDD-width32). mode: "mlp" (the paper's) or "linear".

    forward(x [B, img_channel, H, W], omega [p] or [B, p]) -> [B, img_channel, H, W].
    58,281,794 parameters at the defaults (p = 2; 29,159,715 for the plain NAFNet).

    >>> net = TunableNAFNet(num_params=2)
    >>> y = net(noisy, torch.rand(4, 2))               # a setting per image of a batch of 4
    """

    def __init__(self, num_params=2, width=32, enc_blk_nums=(2, 2, 4, 8), middle_blk_num=12,
                 dec_blk_nums=(2, 2, 2, 2), img_channel=3, mode="mlp"):
        super().__init__(width, enc_blk_nums, middle_blk_num, dec_blk_nums, img_channel,
                         layers=Layers(num_params, mode))
        self._collect_tunable(num_params, mode)

    def plain(self):
        """A fresh plain NAFNet of the same settings."""
        return NAFNet(**self.settings)
