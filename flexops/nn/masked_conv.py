"""MaskedConv2d: a convolution whose active input and output channels are chosen per call, for
one task ([C] masks) or M tasks at once ([M, C] masks), on flexops.ops.masked_conv2d."""

import torch
from torch import nn
from torch.nn.modules.utils import _pair

from flexops.nn._init import default_init_
from flexops.ops.masked_conv2d import masked_conv2d


class MaskedConv2d(nn.Module):
    """forward(input, in_mask=None, out_mask=None); parameters as nn.Conv2d's (weight, bias)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, bias=True):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.padding, self.dilation = _pair(padding), _pair(dilation)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        # nn.Conv2d's initialisation, so a MaskedConv2d with full masks starts as an nn.Conv2d would.
        default_init_(self.weight, self.bias)

    def forward(self, input, in_mask=None, out_mask=None):
        return masked_conv2d(input, self.weight, self.bias, in_mask, out_mask, self.stride, self.padding,
                             self.dilation)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, bias={self.bias is not None}")
