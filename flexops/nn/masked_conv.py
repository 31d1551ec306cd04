"""MaskedConv2d: a convolution whose active input and output channels are chosen per call, for
one task ([C] masks) or M tasks at once ([M, C] masks), on flexops.ops.masked_conv2d."""

import torch
from torch import nn
from torch.nn.modules.utils import _pair

from flexops.nn import _inputs
from flexops.nn._init import default_init_
from flexops.ops._args import fx_leaf_layer
from flexops.ops.masked_conv2d import masked_conv2d


class MaskedConv2d(nn.Module):
    """A convolution whose active input and output channels are chosen per call (TASNet), on
    flexops.ops.masked_conv2d: work is proportional to active inputs x active outputs per task.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, bias: as nn.Conv2d (its
            parameters, weight and bias, too).

    forward(input [B, in, H, W], in_mask=None, out_mask=None): masks [in] / [out] for one task, or
    [M, in] / [M, out] for M tasks (bool or 0/1; None: all on). With M tasks the input batch is 1
    (one feature map shared by the tasks) or M. Returns [max(B, M), out, Ho, Wo]; channels off in
    out_mask are exactly 0, channels off in in_mask count as 0 whatever the input holds.

    >>> conv = MaskedConv2d(64, 64, 3, padding=1)
    >>> keep_in, keep_out = torch.rand(27, 64) < 0.3, torch.rand(27, 64) < 0.3     # 27 tasks
    >>> y = conv(torch.randn(1, 64, 128, 128), keep_in, keep_out)                 # [27, 64, 128, 128]
    """

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

    @fx_leaf_layer
    def forward(self, input, in_mask=None, out_mask=None):
        return masked_conv2d(_inputs.image(input, self.in_channels), self.weight, self.bias, in_mask, out_mask,
                             self.stride, self.padding, self.dilation)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, bias={self.bias is not None}")
