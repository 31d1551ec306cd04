"""Runtime overhead of tunable convolution over a plain convolution (Maggioni et al., CVPR 2023,
runtime figure: 128x128 input, kernel sizes 3/5/7, p = 2..6, 16..128 channels; the paper reports
under 20% overhead everywhere and under 5% for p <= 4, on a V100).

Shared omega: one setting for the batch (batch 1, as in the paper). Per-sample omega: a batch of 4
with its own setting per image, against a plain convolution of the same batch.
"""

import pytest
import torch
import torch.nn.functional as F

import flexops
from harness import compare, note, record

SIZE = 128
KERNELS = (3, 5, 7)
CHANNELS = (16, 32, 64, 128)
PARAMS = (2, 3, 4, 5, 6)
PER_SAMPLE_BATCH = 4


def paper_bound(p):
    return "<5%" if p <= 4 else "<20%"


@pytest.mark.parametrize("per_sample", [False, True], ids=["shared", "per_sample"])
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("channels", CHANNELS)
def test_tunable_overhead(benchmark, channels, kernel, per_sample):
    batch = PER_SAMPLE_BATCH if per_sample else 1
    x = torch.randn(batch, channels, SIZE, SIZE)
    conv = torch.nn.Conv2d(channels, channels, kernel, padding=kernel // 2)
    # The same convolution timed twice: how far apart two identical functions read shows the noise.
    fns = {"conv2d": lambda: conv(x), "conv2d again": lambda: conv(x)}
    layers = {}
    for p in PARAMS:
        layers[p] = flexops.TunableConv2d(channels, channels, kernel, p, padding=kernel // 2)
        omega = torch.rand(batch, p) if per_sample else torch.rand(p)
        fns[f"p{p}"] = lambda layer=layers[p], omega=omega: layer(x, omega)
    best = compare(benchmark, fns)
    table = f"tunable conv overhead vs nn.Conv2d, {'per-sample' if per_sample else 'shared'} omega, {batch}x C x{SIZE}x{SIZE}, CPU"
    note(table, "cell: (tunable / conv2d - 1) in %, best of interleaved rounds; paper (V100): <5% for p<=4, <20% for p<=6; "
                "'noise': the same for nn.Conv2d timed a second time")
    row = f"C={channels} k={kernel} conv {1e3 * best['conv2d']:.1f}ms"
    record(table, row, "noise", f"{100 * (best['conv2d again'] / best['conv2d'] - 1):+.1f}%")
    for p in PARAMS:
        overhead = 100 * (best[f"p{p}"] / best["conv2d"] - 1)
        record(table, row, f"p={p} ({paper_bound(p)})", f"{overhead:+.1f}%")
