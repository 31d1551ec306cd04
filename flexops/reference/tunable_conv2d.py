"""Tunable convolution, the specification.

y_b = conv2d(x_b, sum_i alpha_bi W_i) + sum_i alpha_bi b_i, with alpha [p] shared by the batch or
[B, p] per sample. Differentiable by autograd in every input.
"""

import torch
import torch.nn.functional as F


def tunable_conv2d(input, weight, bias, alpha, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    p = weight.shape[0]
    rows = alpha.reshape(-1, p)
    kernels = torch.einsum("rp,p...->r...", rows, weight)
    biases = None if bias is None else rows @ bias
    outputs = [
        F.conv2d(
            input if alpha.dim() == 1 else input[r : r + 1],
            kernels[r],
            None if biases is None else biases[r],
            stride,
            padding,
            dilation,
            groups,
        )
        for r in range(rows.shape[0])
    ]
    if not outputs:  # per-sample alpha with an empty batch
        return F.conv2d(input, weight[0], None, stride, padding, dilation, groups)
    return torch.cat(outputs)
