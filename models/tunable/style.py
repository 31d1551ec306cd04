"""The style network of the paper's style experiment (Fig. 7; mindediting `TunableStyleNet`, the zoo's
tunable.md 3.4) and its plain twin `StyleNet`: a UNet without skips, p = 3 styles blended by omega.

    normalise (ImageNet mean/std), reflect-pad to a multiple of 2^num_scales
    ConvBlock(3 -> C, 9)
    per scale: ConvBlock(c -> 2c, 3, stride 2), (blocks[0] - 1) x ConvBlock(2c -> 2c, 3)
    blocks[1] x ResBlockNorm(c): conv-IN-ReLU-conv-IN, + skip, ReLU
    per scale: nearest x2, ConvBlock(c -> c/2, 3), (blocks[2] - 1) x ConvBlock(c/2 -> c/2, 3)
    conv(C -> 3, 9) (no norm, no activation); de-normalise; crop
ConvBlock = conv -> InstanceNorm(affine) -> ReLU. Convolutions tunable; InstanceNorms not.

>>> net = TunableStyleNet()                   # p = 3: 26,325,329 parameters, 22 tunable convolutions
>>> y = net(torch.rand(1, 3, 64, 64), torch.tensor([0.2, 0.3, 0.5]))
"""

import torch
import torch.nn.functional as F
from torch import nn

from flexops.models import checks
from flexops.models.registry import register
from flexops.models.tunable.core import Layers, TunableNetwork
from flexops.nn.tunable import run_layer

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ConvBlock(nn.Module):
    """conv (k x k, 'same' padding) -> InstanceNorm2d(affine) -> ReLU."""

    def __init__(self, layers, in_channels, out_channels, kernel_size=3, stride=1):
        super().__init__()
        self.conv = layers.conv(in_channels, out_channels, kernel_size, stride=stride)
        self.norm = nn.InstanceNorm2d(out_channels, affine=True)

    def run(self, x, alphas):
        return F.relu(self.norm(run_layer(self.conv, x, alphas)))


class ResBlockNorm(nn.Module):
    """ReLU(x + IN(conv2(ReLU(IN(conv1(x))))))."""

    def __init__(self, layers, channels):
        super().__init__()
        self.block = ConvBlock(layers, channels, channels)
        self.conv = layers.conv(channels, channels, 3)
        self.norm = nn.InstanceNorm2d(channels, affine=True)

    def run(self, x, alphas):
        return F.relu(x + self.norm(run_layer(self.conv, self.block.run(x, alphas), alphas)))


class StyleNet(nn.Module):
    """The style network with plain layers: what `TunableStyleNet.bake` returns. forward(x).

    Args:
        num_scales: stride-2 levels (2). num_channels: channels of the first level (64), doubled per
            level. num_blocks: (ConvBlocks per level down, residual blocks, ConvBlocks per level up),
            (2, 6, 2). layers: the layer factory (default: plain layers).

    x [B, 3, H, W] in [0, 1] -> [B, 3, H, W].
    """

    def __init__(self, num_scales=2, num_channels=64, num_blocks=(2, 6, 2), *, layers=None):
        super().__init__()
        num_blocks = tuple(num_blocks)
        if len(num_blocks) != 3 or min(num_blocks) < 0 or min(num_blocks[0], num_blocks[2]) < 1:
            raise ValueError(f"num_blocks must be (down >= 1, residual >= 0, up >= 1) blocks; got {num_blocks}")
        layers = layers or Layers()
        self.settings = dict(num_scales=num_scales, num_channels=num_channels, num_blocks=num_blocks)
        self.in_chans = 3
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        down, residual, up = num_blocks
        c = num_channels
        encoder = [ConvBlock(layers, 3, c, 9)]
        for _ in range(num_scales):
            encoder.append(ConvBlock(layers, c, 2 * c, 3, stride=2))
            encoder += [ConvBlock(layers, 2 * c, 2 * c) for _ in range(down - 1)]
            c *= 2
        self.encoder = nn.ModuleList(encoder)
        self.body = nn.ModuleList(ResBlockNorm(layers, c) for _ in range(residual))
        self.decoder = nn.ModuleList()
        for _ in range(num_scales):  # each level: upsample, then its blocks
            self.decoder.append(nn.ModuleList([ConvBlock(layers, c, c // 2)] +
                                              [ConvBlock(layers, c // 2, c // 2) for _ in range(up - 1)]))
            c //= 2
        self.tail = layers.conv(c, 3, 9)
        self.multiple = 2**num_scales

    def forward(self, x):
        checks.image_batch(x, self.in_chans)
        return self.run(x, None)

    def run(self, x, alphas):
        height, width = x.shape[-2:]
        pad = (0, -width % self.multiple, 0, -height % self.multiple)
        # Padded even when pad is all zeros (a copy of the input): no branch on sizes, which torch.fx cannot read.
        y = F.pad((x - self.mean) / self.std, pad, mode="reflect")
        for block in self.encoder:
            y = block.run(y, alphas)
        for block in self.body:
            y = block.run(y, alphas)
        for level in self.decoder:
            y = F.interpolate(y, scale_factor=2, mode="nearest")
            for block in level:
                y = block.run(y, alphas)
        y = run_layer(self.tail, y, alphas) * self.std + self.mean
        return y[:, :, :height, :width]


@register("tunable_stylenet")
class TunableStyleNet(TunableNetwork, StyleNet):
    """The paper's tunable style network: p = 3 styles (Mosaic, Edtaonisl, Kandinsky), omega on the simplex.

    Args:
        num_params: p (3). num_scales, num_channels, num_blocks: as `StyleNet`. mode: "mlp" or "linear".

    forward(x [B, 3, H, W], omega [p] or [B, p]) -> [B, 3, H, W].
    26,325,329 parameters at the defaults (8,780,739 for the plain network).

    >>> net = TunableStyleNet()
    >>> y = net(photo, torch.tensor([0.5, 0.5, 0.0]))   # half Mosaic, half Edtaonisl
    """

    def __init__(self, num_params=3, num_scales=2, num_channels=64, num_blocks=(2, 6, 2), mode="mlp"):
        super().__init__(num_scales, num_channels, num_blocks, layers=Layers(num_params, mode))
        self._collect_tunable(num_params, mode)

    def plain(self):
        """A fresh plain StyleNet of the same settings."""
        return StyleNet(**self.settings)
