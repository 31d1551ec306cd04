"""The paper's ResNet (mindediting `TunableEDSR`, the zoo's tunable.md 3.1) and its plain twin `EDSRNet`.

    x -> MeanShift(-mean) -> s = ReLU(head(x)) -> n_resblocks x [y + res_scale conv2(ReLU(conv1(y)))]
      -> y + s -> upsample (scale 2/4: [conv C->4C, PixelShuffle(2)] per factor 2; 3: [conv C->9C,
      PixelShuffle(3)]; 1: none) -> tail -> + mean

No body-end convolution and no global input skip (unlike EDSR-PyTorch); every convolution 3x3 and
tunable. The mean is a buffer (not a parameter, not counted).

>>> net = TunableEDSR()                                   # 2,370,642 parameters, 34 tunable convolutions
>>> y = net(torch.rand(2, 3, 64, 64), torch.tensor([1.0, 0.0]))   # omega [2], or [2, 2] per image
"""

import torch
import torch.nn.functional as F
from torch import nn

from flexops.models import checks
from flexops.models.registry import register
from flexops.models.tunable.core import Layers, TunableNetwork
from flexops.nn.tunable import run_layer

RGB_MEAN = (0.4488, 0.4371, 0.4040)  # DIV2K's, as EDSR's MeanShift (rgb_range 1)


class EDSRNet(nn.Module):
    """The paper's ResNet with plain layers: what `TunableEDSR.bake(omega)` returns. forward(x).

    Args:
        n_resblocks, n_feats, res_scale: residual blocks, channels, residual scale (16, 64, 0.1).
        scale: upscaling factor, 1 (denoising, deblurring), 2, 3 or 4 (x4 SR).
        in_chans: image channels in and out. The mean shift subtracts DIV2K's RGB mean for 3 channels;
            other channel counts use the mean of those three values for every channel (a reading).
        layers: the layer factory (core.Layers); the default makes plain layers.

    x [B, in_chans, H, W] -> [B, in_chans, scale H, scale W].
    """

    def __init__(self, n_resblocks=16, n_feats=64, res_scale=0.1, scale=1, in_chans=3, *, layers=None):
        super().__init__()
        for name, v in (("n_resblocks", n_resblocks), ("n_feats", n_feats), ("in_chans", in_chans)):
            if not isinstance(v, int) or v < (0 if name == "n_resblocks" else 1):
                raise ValueError(f"{name} must be a {'non-negative' if name == 'n_resblocks' else 'positive'} int; "
                                 f"got {v!r}")
        if scale not in (1, 2, 3, 4):
            raise ValueError(f"scale must be 1, 2, 3 or 4; got {scale!r}")
        layers = layers or Layers()
        self.settings = dict(n_resblocks=n_resblocks, n_feats=n_feats, res_scale=res_scale, scale=scale,
                             in_chans=in_chans)
        self.in_chans, self.scale, self.res_scale = in_chans, scale, res_scale
        mean = RGB_MEAN if in_chans == 3 else (sum(RGB_MEAN) / 3,) * in_chans
        self.register_buffer("mean", torch.tensor(mean).view(1, in_chans, 1, 1))
        self.head = layers.conv(in_chans, n_feats, 3)
        self.body = nn.ModuleList(_ResBlock(layers, n_feats) for _ in range(n_resblocks))
        # scale 2^k: k x (conv to 4C, shuffle 2); scale 3: conv to 9C, shuffle 3 (EDSR's Upsampler).
        factors = {1: (), 2: (2,), 3: (3,), 4: (2, 2)}[scale]
        self.upsample = nn.ModuleList(layers.conv(n_feats, f * f * n_feats, 3) for f in factors)
        self.shuffles = factors
        self.tail = layers.conv(n_feats, in_chans, 3)

    def forward(self, x):
        checks.image_batch(x, self.in_chans)
        return self.run(x, None)

    def run(self, x, alphas):
        mean = self.mean
        s = F.relu(run_layer(self.head, x - mean, alphas))
        y = s
        for block in self.body:
            y = y + self.res_scale * run_layer(block.conv2, F.relu(run_layer(block.conv1, y, alphas)), alphas)
        y = y + s
        for conv, factor in zip(self.upsample, self.shuffles):
            y = F.pixel_shuffle(run_layer(conv, y, alphas), factor)
        return run_layer(self.tail, y, alphas) + mean


class _ResBlock(nn.Module):
    """conv1 -> ReLU -> conv2 (3x3, C -> C); the skip and the scale are applied by the network."""

    def __init__(self, layers, channels):
        super().__init__()
        self.conv1 = layers.conv(channels, channels, 3)
        self.conv2 = layers.conv(channels, channels, 3)


@register("tunable_edsr")
class TunableEDSR(TunableNetwork, EDSRNet):
    """The paper's tunable ResNet: every convolution a TunableConv2d with p kernels. forward(x, omega).

    Args:
        num_params: p, the length of omega (2 in the paper's experiments).
        n_resblocks, n_feats, res_scale, scale, in_chans: as `EDSRNet` (16, 64, 0.1, 1, 3).
        mode: "mlp" (alpha = Linear(p, p)(omega) per layer, the paper's) or "linear" (alpha = omega).

    forward(x [B, in_chans, H, W], omega [p] or [B, p]) -> [B, in_chans, scale H, scale W].
    2,370,642 parameters at the defaults (1,185,219 per kernel set + 34 x 6 for the MLPs).

    >>> net = TunableEDSR(num_params=2)
    >>> y = net(noisy, torch.tensor([1.0, 0.0]))      # the first objective (e.g. denoise fully)
    >>> plain = net.bake(torch.tensor([0.7, 0.3]))    # a plain EDSRNet for a setting, no overhead
    """

    def __init__(self, num_params=2, n_resblocks=16, n_feats=64, res_scale=0.1, scale=1, in_chans=3, mode="mlp"):
        super().__init__(n_resblocks, n_feats, res_scale, scale, in_chans, layers=Layers(num_params, mode))
        self._collect_tunable(num_params, mode)

    def plain(self):
        """A fresh plain EDSRNet of the same settings."""
        return EDSRNet(**self.settings)
