"""Per-task channel-masked convolution (TASNet, Kim et al., ICCV 2021): M task vectors share one
1x64x128x128 feature map and each keeps its own random fraction d of the 64 input and 64 output
channels of a 3x3 convolution.

Baselines measured in the same run: one dense convolution over all channels per task (what the
CResMD supernet pays, M of them) and the reference (mask, dense convolution over the M broadcast
maps, mask). The ideal speedup over the dense convolutions is 1 / (d_in * d_out).
"""

import pytest
import torch
import torch.nn.functional as F

import flexops
from flexops import reference
from harness import compare, first_calls, note, plot, record, record_first_calls, tables
from plots import STYLES

CHANNELS, SIZE = 64, 128
DENSITIES = (0.125, 0.25, 0.5, 1.0)
TASKS = (1, 27)
FRESH_ROW = (27, 0.25)  # (tasks, density) also timed in new processes
TABLE = f"masked conv 64->64 3x3 on a shared 1x64x{SIZE}x{SIZE} map, M tasks, CPU ({torch.get_num_threads()} threads)"


def random_masks(tasks, channels, density, generator):
    """[tasks, channels] bool, each row with exactly density * channels active channels."""
    keep = round(density * channels)
    mask = torch.zeros(tasks, channels, dtype=torch.bool)
    for row in mask:
        row[torch.randperm(channels, generator=generator)[:keep]] = True
    return mask


def functions(tasks, density):
    """{name: fn} timed for one row: the masked layer, its dense baselines and the reference."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, CHANNELS, SIZE, SIZE)
    layer = flexops.MaskedConv2d(CHANNELS, CHANNELS, 3, padding=1)
    in_mask = random_masks(tasks, CHANNELS, density, generator)
    out_mask = random_masks(tasks, CHANNELS, density, generator)

    def dense():
        return [F.conv2d(x, layer.weight, layer.bias, padding=1) for _ in range(tasks)]

    return {
        "masked": lambda: layer(x, in_mask, out_mask),
        "dense": dense,
        # The same convolutions as one call over the map repeated M times: one [M, 64, H, W] output
        # like the masked op's, where `dense` returns M separate ones.
        "dense batched": lambda: F.conv2d(x.expand(tasks, -1, -1, -1), layer.weight, layer.bias, padding=1),
        "reference": lambda: reference.masked_conv2d(x, layer.weight, layer.bias, in_mask, out_mask,
                                                     (1, 1), (1, 1), (1, 1)),
    }


@pytest.mark.parametrize("density", DENSITIES, ids=lambda d: f"d{int(100 * d)}")
@pytest.mark.parametrize("tasks", TASKS, ids=lambda m: f"M{m}")
def test_masked_conv2d(benchmark, tasks, density):
    best = compare(benchmark, functions(tasks, density))
    note(TABLE, "d = fraction of input and of output channels kept per task (random per task); "
                "speedup = time of M dense convs over all channels / masked (batched: as one call with one "
                "[M, 64, H, W] output), beside the ideal 1 / (d_in * d_out); best of interleaved rounds, warmed "
                "process; fresh (M=27, 25%): in a new process of its own, first call / best of the next three, and the "
                "speed-up over dense on those")
    row = f"M={tasks:<2} d_in=d_out={100 * density:g}%"
    ideal = 1 / density**2
    for name, column in (("masked", "masked ms"), ("dense", "dense ms"), ("dense batched", "batched ms"),
                         ("reference", "reference ms")):
        record(TABLE, row, column, f"{1e3 * best[name]:.1f}", 1e3 * best[name])
    for name, column in (("dense", "vs dense"), ("dense batched", "vs batched")):
        ratio = best[name] / best["masked"]
        record(TABLE, row, column, f"{ratio:.1f}x", ratio, f"ideal {ideal:.0f}x")
    record(TABLE, row, "vs reference", f"{best['reference'] / best['masked']:.1f}x", best["reference"] / best["masked"])
    if (tasks, density) == FRESH_ROW:
        fresh = first_calls(__file__, "functions", [tasks, density], ["masked", "dense"])
        record_first_calls(TABLE, row, fresh)
        ratio = fresh["dense"].following / fresh["masked"].following
        record(TABLE, row, "vs dense fresh", f"{ratio:.1f}x", ratio, f"ideal {ideal:.0f}x")


@plot("masked_speedup.png")
def draw(figure):
    """Speed-up over M dense convolutions against the kept fraction, with the ideal 1 / d^2."""
    cells = tables.get(TABLE)
    if not cells:
        return False
    axes = figure.add_subplot()
    for tasks in TASKS:
        rows = [(d, f"M={tasks:<2} d_in=d_out={100 * d:g}%") for d in DENSITIES]
        rows = [(d, r) for d, r in rows if (r, "vs dense") in cells]
        axes.plot([d for d, _ in rows], [cells[(r, "vs dense")].value for _, r in rows], "o-", label=f"M={tasks}")
    axes.plot(DENSITIES, [1 / d**2 for d in DENSITIES], **STYLES["ideal"], label="ideal 1 / d^2")
    axes.set_xscale("log", base=2)
    axes.set_yscale("log", base=2)
    axes.set_xlabel("kept fraction d of input and of output channels")
    axes.set_ylabel("M dense convs time / masked time")
    axes.set_title(f"masked_conv2d 64->64 3x3, shared 1x64x{SIZE}x{SIZE} map")
    axes.legend()
