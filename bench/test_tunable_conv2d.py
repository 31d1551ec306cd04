"""Runtime overhead of tunable convolution over a plain convolution (Maggioni et al., CVPR 2023,
runtime figure: 128x128 input, kernel sizes 3/5/7, p = 2..6, 16..128 channels; the paper reports
under 20% overhead everywhere and under 5% for p <= 4, on a V100).

Shared omega: one setting for the batch (batch 1, as in the paper). Per-sample omega: a batch of 4
with its own setting per image, against a plain convolution of the same batch.
"""

import pytest
import torch

import flexops
from harness import compare, first_calls, note, plot, record, tables
from plots import noise_band, reference, robust_ylim

SIZE = 128
KERNELS = (3, 5, 7)
CHANNELS = (16, 32, 64, 128)
PARAMS = (2, 3, 4, 5, 6)
PER_SAMPLE_BATCH = 4
FRESH_ROW = (64, 3)  # (channels, kernel) also timed in new processes
TABLES = {per_sample: f"tunable conv overhead vs nn.Conv2d, {'per-sample' if per_sample else 'shared'} omega, "
                      f"{PER_SAMPLE_BATCH if per_sample else 1} x C x {SIZE}x{SIZE}, CPU" for per_sample in (False, True)}


def functions(channels, kernel, per_sample):
    """{name: fn} timed for one row: nn.Conv2d (twice, for the noise) and a tunable layer per p."""
    batch = PER_SAMPLE_BATCH if per_sample else 1
    x = torch.randn(batch, channels, SIZE, SIZE)
    conv = torch.nn.Conv2d(channels, channels, kernel, padding=kernel // 2)
    # The same convolution timed twice: how far apart two identical functions read shows the noise.
    fns = {"conv2d": lambda: conv(x), "conv2d again": lambda: conv(x)}
    for p in PARAMS:
        layer = flexops.TunableConv2d(channels, channels, kernel, p, padding=kernel // 2)
        omega = torch.rand(batch, p) if per_sample else torch.rand(p)
        fns[f"p{p}"] = lambda layer=layer, omega=omega: layer(x, omega)
    return fns


@pytest.mark.parametrize("per_sample", [False, True], ids=["shared", "per_sample"])
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("channels", CHANNELS)
def test_tunable_overhead(benchmark, channels, kernel, per_sample):
    best = compare(benchmark, functions(channels, kernel, per_sample), twins=("conv2d", "conv2d again"))
    table = TABLES[per_sample]
    note(table, "cell: (tunable / conv2d - 1) in %, best of interleaved rounds, warmed process, beside the paper's "
                "bound (V100: <5% for p<=4, <20% for p<=6); 'noise': nn.Conv2d timed a second time against itself; "
                f"fresh (C={FRESH_ROW[0]} k={FRESH_ROW[1]}): each in a new process of its own, the same overhead on "
                "the best of calls 2-4")
    row = f"C={channels} k={kernel} conv {1e3 * best['conv2d']:.1f}ms"
    noise = 100 * (best["conv2d again"] / best["conv2d"] - 1)
    record(table, row, "noise", f"{noise:+.1f}%", noise)
    for p in PARAMS:
        overhead = 100 * (best[f"p{p}"] / best["conv2d"] - 1)
        bound = 5 if p <= 4 else 20
        record(table, row, f"p={p}", f"{overhead:+.1f}%", overhead, f"<{bound}%", overhead < bound)
    if (channels, kernel) == FRESH_ROW:
        fresh = first_calls(__file__, "functions", [channels, kernel, per_sample], ["conv2d", "p2", "p4"])
        for p in (2, 4):
            overhead = 100 * (fresh[f"p{p}"].following / fresh["conv2d"].following - 1)
            record(table, row, f"p={p} fresh", f"{overhead:+.1f}%", overhead)


@plot("tunable_overhead.png")
def draw(figure):
    """The paper's runtime figure, measured: overhead against channels, one panel per kernel size,
    with the noise band and the paper's bounds; an outlier is marked on the edge, not scaled to."""
    cells = tables.get(TABLES[False])
    if not cells:
        return False
    rows = list(dict.fromkeys(r for r, _ in cells))
    for i, kernel in enumerate(KERNELS):
        axes = figure.add_subplot(1, len(KERNELS), i + 1)
        kernel_rows = [r for r in rows if f" k={kernel} " in r]
        if not kernel_rows:
            continue
        channels = [int(r.split()[0][2:]) for r in kernel_rows]
        points = []
        for p in PARAMS:
            overheads = [cells[(r, f"p={p}")].value for r in kernel_rows]
            axes.plot(channels, overheads, "o-", ms=3, label=f"p={p}")
            points += zip(channels, overheads)
        noise_band(axes, channels, [cells[(r, "noise")].value for r in kernel_rows])
        reference(axes, 5, "paper", "paper: < 5% (p <= 4)")
        reference(axes, 20, "paper", "paper: < 20% (p <= 6)")
        robust_ylim(axes, points, keep=(0, 5, 20))
        axes.set_xscale("log", base=2)
        axes.set_xlabel("channels")
        axes.set_title(f"{kernel}x{kernel}", fontsize=9)
        if i == 0:
            axes.set_ylabel("overhead over nn.Conv2d (%)")
        if i == 1:  # overheads of 5x5 kernels and more stay low: room for the legend above them
            axes.legend(fontsize=6, loc="upper right")
    figure.suptitle("Tunable convolution overhead, shared omega, with the noise band (grey)", fontsize=10)
