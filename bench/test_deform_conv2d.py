"""Modulated deformable convolution (3x3, one offset group, with mask) against torchvision's
deform_conv2d and against a dense conv2d of the same shape, forward and forward+backward.

Shapes: the issue's 1x64x128x128, IR-NAS cell widths (10, 20, 40 channels), and with --paper-sizes the
issue's 1x64x256x256 (torchvision takes 6 s a forward+backward there: half a minute of the main job).
"""

import pytest
import torch
import torch.nn.functional as F

import flexops
from harness import compare, first_calls, note, plot, record, record_first_calls, tables
from plots import reference, robust_ylim

torchvision_ops = pytest.importorskip("torchvision.ops")

SHAPES = [(1, 64, 128, 128), (1, 64, 256, 256), (1, 10, 128, 128), (1, 20, 128, 128), (1, 40, 128, 128)]
PAPER_SIZE_SHAPES = {(1, 64, 256, 256)}  # run with --paper-sizes only
FRESH_SHAPE = (1, 64, 128, 128)  # also timed in new processes: the goals' shape
GOAL_ROW = "1x64x128x128 fwd"  # the row the goals are set for
TABLE = "deform_conv2d 3x3 with mask, CPU: flexops vs torchvision.ops.deform_conv2d vs dense conv2d"


def make_inputs(batch, channels, height, width, requires_grad):
    x = torch.randn(batch, channels, height, width)
    offset = 2 * torch.randn(batch, 18, height, width)
    mask = torch.rand(batch, 9, height, width)
    weight, bias = 0.1 * torch.randn(channels, channels, 3, 3), torch.randn(channels)
    tensors = (x, offset, weight, bias, mask)
    return [t.requires_grad_(requires_grad) for t in tensors]


def functions(shape, backward):
    """{name: fn} timed for one row: flexops, torchvision and conv2d (with backward when asked)."""
    x, offset, weight, bias, mask = make_inputs(*shape, requires_grad=backward)

    def step(fn):
        def run():
            out = fn()
            if backward:
                out.backward(torch.ones_like(out))
        return run

    return {
        "flexops": step(lambda: flexops.ops.deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)),
        "torchvision": step(lambda: torchvision_ops.deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)),
        "conv2d": step(lambda: F.conv2d(x, weight, bias, padding=1)),
    }


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "forward_backward"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_deform_conv2d(benchmark, shape, backward, request):
    if shape in PAPER_SIZE_SHAPES and not request.config.getoption("--paper-sizes"):
        pytest.skip("1x64x256x256 runs with --paper-sizes")
    best = compare(benchmark, functions(shape, backward), grad=backward)
    row = f"{'x'.join(map(str, shape))} {'fwd+bwd' if backward else 'fwd'}"
    ms = {name: 1e3 * t for name, t in best.items()}
    for name in ("flexops", "torchvision", "conv2d"):
        record(TABLE, row, f"{name} ms", f"{ms[name]:.1f}", ms[name])
    goal = row == GOAL_ROW
    speedup, over_conv = ms["torchvision"] / ms["flexops"], ms["flexops"] / ms["conv2d"]
    record(TABLE, row, "speed-up vs tv", f"{speedup:.1f}x", speedup, ">= 5x" if goal else None,
           speedup >= 5 if goal else None)
    record(TABLE, row, "time / conv2d", f"{over_conv:.2f}x", over_conv, "<= 2.5x" if goal else None,
           over_conv <= 2.5 if goal else None)
    if shape == FRESH_SHAPE:
        fresh = first_calls(__file__, "functions", [shape, backward], ["flexops", "torchvision"], grad=backward)
        record_first_calls(TABLE, row, fresh)
        speedup = fresh["torchvision"].following / fresh["flexops"].following
        record(TABLE, row, "speed-up fresh", f"{speedup:.1f}x", speedup)
    note(TABLE, "best of interleaved rounds, warmed process; fresh (1x64x128x128) = in a new process of its own: "
                "first call / best of the next three, and the speed-up on those; goals (forward, 1x64x128x128): "
                ">= 5x faster than torchvision, <= 2.5x conv2d")


@plot("deform_vs_torchvision.png")
def draw(figure):
    """Per shape: the speed-up over torchvision and the time over a dense conv2d, beside the goals."""
    cells = tables.get(TABLE)
    if not cells:
        return False
    rows = list(dict.fromkeys(r for r, _ in cells))
    panels = (("speed-up vs tv", "torchvision time / flexops time", 5, "goal >= 5x"),
              ("time / conv2d", "flexops time / conv2d time", 2.5, "goal <= 2.5x"))
    for i, (column, label, goal, goal_label) in enumerate(panels):
        axes = figure.add_subplot(1, 2, i + 1)
        values = [cells[(r, column)].value for r in rows]
        axes.bar(range(len(rows)), values, color=["tab:orange" if r == GOAL_ROW else "tab:blue" for r in rows])
        reference(axes, goal, "goal", f"{goal_label} ({GOAL_ROW}, orange)")
        robust_ylim(axes, list(enumerate(values)), keep=(0, goal))
        axes.set_xticks(range(len(rows)), rows, rotation=40, ha="right", fontsize=6)
        axes.set_ylabel(label, fontsize=8)
        axes.legend(fontsize=7)
    figure.suptitle("deform_conv2d 3x3 with mask (CPU): flexops against torchvision and a dense conv2d", fontsize=10)
