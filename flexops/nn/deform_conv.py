"""Deformable convolution layers on flexops.ops.deform_conv2d.

DeformConv2d takes offset and mask from the caller, as torchvision.ops.DeformConv2d does.
ModulatedDeformConv2d predicts them from its own input (the DCNv2 "pack" layer of IR-NAS's search
space): a convolution with the layer's geometry outputs 2*og*kh*kw offsets and og*kh*kw mask logits.
That convolution starts at zero, so a fresh layer has zero offsets and mask logits 0. With the default
mask activation 2*sigmoid(logit) its mask is 1: it is exactly a plain convolution, and training moves it
away from one. With mask_activation="sigmoid" (DCNv2's, mmcv's and IR-NAS's) its mask is 0.5: a fresh
layer computes 0.5*conv(x) + bias.
"""

import torch
from torch import nn
from torch.nn.modules.utils import _pair

from flexops.nn import _inputs
from flexops.nn._init import default_init_
from flexops.nn.dense import Conv2d
from flexops.ops._args import fx_leaf_layer
from flexops.ops.deform_conv2d import deform_conv2d


class DeformConv2d(nn.Module):
    """Deformable convolution (DCN, DCNv2 with a mask) with torchvision.ops.DeformConv2d's parameters
    and numerics, on flexops.ops.deform_conv2d.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias: as nn.Conv2d.

    forward(input [B, in, H, W], offset [B, 2 * og * kh * kw, Ho, Wo], mask [B, og * kh * kw, Ho, Wo]
    or None) -> [B, out, Ho, Wo]; offsets are (dy, dx) pairs per kernel point, og offset groups.

    >>> dcn = DeformConv2d(64, 64, 3, padding=1)
    >>> y = dcn(x, offset, mask)           # what torchvision.ops.DeformConv2d gives, faster
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.padding, self.dilation = _pair(padding), _pair(dilation)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        default_init_(self.weight, self.bias)

    @fx_leaf_layer
    def forward(self, input, offset, mask=None):
        return self._deform(_inputs.image(input, self.in_channels), offset, mask)

    def _deform(self, input, offset, mask):
        return deform_conv2d(input, offset, self.weight, self.bias, self.stride, self.padding, self.dilation, mask)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, bias={self.bias is not None}")


MASK_ACTIVATIONS = ("2sigmoid", "sigmoid")


class ModulatedDeformConv2d(DeformConv2d):
    """DCNv2 that predicts its offsets and mask from its input: forward(input).

    Args:
        in_channels ... bias: as DeformConv2d.
        offset_groups: groups of input channels sharing one set of offsets and mask values.
        mask_activation: "2sigmoid" (default: mask = 2*sigmoid(logit), a fresh layer is exactly a
            plain conv) or "sigmoid" (DCNv2/mmcv/IR-NAS: mask = sigmoid(logit), a fresh layer is
            0.5*conv + bias).

    `conv_offset` predicts 3*og*kh*kw channels: the first 2*og*kh*kw are the offsets, as (dy, dx)
    pairs per offset group and kernel point (torchvision's layout, which is DCNv2's cat(o1, o2)),
    the last og*kh*kw the mask logits.

    Example::

        dcn = ModulatedDeformConv2d(10, 10, 3, padding=1, offset_groups=2, mask_activation="sigmoid")
        y = dcn(torch.randn(1, 10, 32, 32))      # [1, 10, 32, 32]
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 offset_groups=1, bias=True, mask_activation="2sigmoid"):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        if in_channels % offset_groups:
            raise ValueError(f"offset_groups={offset_groups} must divide in_channels={in_channels}")
        if mask_activation not in MASK_ACTIVATIONS:
            raise ValueError(f"mask_activation must be one of {MASK_ACTIVATIONS}, got {mask_activation!r}")
        self.offset_groups = offset_groups
        self.mask_activation = mask_activation
        points = self.kernel_size[0] * self.kernel_size[1]
        self.conv_offset = Conv2d(in_channels, 3 * offset_groups * points, self.kernel_size, self.stride,
                                     self.padding, self.dilation)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    @fx_leaf_layer
    def forward(self, input):
        prediction = self.conv_offset(_inputs.image(input, self.in_channels))
        num_offsets = 2 * self.offset_groups * self.kernel_size[0] * self.kernel_size[1]
        offset, logits = prediction[:, :num_offsets], prediction[:, num_offsets:]
        mask = torch.sigmoid(logits)
        return self._deform(input, offset, 2 * mask if self.mask_activation == "2sigmoid" else mask)

    def extra_repr(self):
        return f"{super().extra_repr()}, offset_groups={self.offset_groups}, mask_activation={self.mask_activation!r}"
