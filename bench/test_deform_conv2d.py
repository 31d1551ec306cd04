"""Modulated deformable convolution (3x3, one offset group, with mask) against torchvision's
deform_conv2d and against a dense conv2d of the same shape, forward and forward+backward.

Shapes: the issue's 1x64x128x128 and 1x64x256x256, and IR-NAS cell widths (10, 20, 40 channels).
"""

import pytest
import torch
import torch.nn.functional as F

import flexops
from harness import compare, note, record

torchvision_ops = pytest.importorskip("torchvision.ops")

SHAPES = [(1, 64, 128, 128), (1, 64, 256, 256), (1, 10, 128, 128), (1, 20, 128, 128), (1, 40, 128, 128)]
TABLE = "deform_conv2d 3x3 with mask, CPU: flexops vs torchvision.ops.deform_conv2d vs dense conv2d"


def make_inputs(batch, channels, height, width, requires_grad):
    x = torch.randn(batch, channels, height, width)
    offset = 2 * torch.randn(batch, 18, height, width)
    mask = torch.rand(batch, 9, height, width)
    weight, bias = 0.1 * torch.randn(channels, channels, 3, 3), torch.randn(channels)
    tensors = (x, offset, weight, bias, mask)
    return [t.requires_grad_(requires_grad) for t in tensors]


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "forward_backward"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_deform_conv2d(benchmark, shape, backward):
    x, offset, weight, bias, mask = make_inputs(*shape, requires_grad=backward)

    def step(fn):
        def run():
            out = fn()
            if backward:
                out.backward(torch.ones_like(out))
        return run

    fns = {
        "flexops": step(lambda: flexops.ops.deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)),
        "torchvision": step(lambda: torchvision_ops.deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)),
        "conv2d": step(lambda: F.conv2d(x, weight, bias, padding=1)),
    }
    best = compare(benchmark, fns, grad=backward)
    row = f"{'x'.join(map(str, shape))} {'fwd+bwd' if backward else 'fwd'}"
    ms = {name: 1e3 * t for name, t in best.items()}
    record(TABLE, row, "flexops ms", f"{ms['flexops']:.1f}")
    record(TABLE, row, "torchvision ms", f"{ms['torchvision']:.1f}")
    record(TABLE, row, "conv2d ms", f"{ms['conv2d']:.1f}")
    record(TABLE, row, "speed-up vs tv", f"{ms['torchvision'] / ms['flexops']:.1f}x")
    record(TABLE, row, "time / conv2d", f"{ms['flexops'] / ms['conv2d']:.2f}x")
    note(TABLE, "best of interleaved rounds; targets (forward, 1x64x128x128): >= 5x faster than torchvision, <= 2.5x conv2d")
