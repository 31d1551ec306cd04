"""Channel-masked convolution, the specification.

The masks select around a dense convolution: inactive input channels are zeroed before it, inactive
output channels (bias included) after it. Selecting (torch.where) rather than multiplying makes them
exactly zero even where the input holds inf or NaN. Masks [C] or [M, C] broadcast against the batch
exactly as the op does: an input of batch 1 with M mask rows gives M outputs. Differentiable by
autograd in input, weight and bias.
"""

import torch
import torch.nn.functional as F


def masked_conv2d(input, weight, bias=None, in_mask=None, out_mask=None, stride=(1, 1), padding=(0, 0),
                  dilation=(1, 1)):
    if in_mask is not None:
        input = torch.where(in_mask.reshape(-1, input.shape[1], 1, 1) != 0, input, 0)
    output = F.conv2d(input, weight, bias, stride, padding, dilation)
    if out_mask is not None:
        output = torch.where(out_mask.reshape(-1, weight.shape[0], 1, 1) != 0, output, 0)
    return output
