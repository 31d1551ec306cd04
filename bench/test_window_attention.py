"""Swin window attention at SwinIR's denoising shapes (embed 180, 6 heads of 30, window 8, shift 4),
the attention of FlexIR and tunable SwinIR; qkv is the [1, H, W, 540] output of the qkv Linear.

Baselines measured in the same run, both as SwinIR runs them (shift mask computed once and kept,
as SwinIR's attn_mask buffer): the SwinIR path (roll, window-partition copy, q k^T + bias + mask,
softmax, @ v, window-reverse copy, roll back) and the same path with
torch.nn.functional.scaled_dot_product_attention on the partitioned windows (bias + mask as its
float attn_mask). Neither can skip windows; flexops is timed with 100%, 50% and 25% of the windows
active (FlexIR's early exit), side by side with them.
"""

import pytest
import torch
import torch.nn.functional as F

import flexops
from flexops.models.swinir_reference import partition, reverse, shift_mask  # SwinIR's own path
from harness import compare, first_calls, note, plot, record, record_first_calls, tables
from plots import STYLES, robust_ylim

CHANNELS, HEADS, WINDOW, SHIFT = 180, 6, 8, 4
SIZES = (64, 128, 256)
FRESH_SIZE = 128  # also timed in new processes
FRACTIONS = (1.0, 0.5, 0.25)
TABLE = (f"window attention, C {CHANNELS}, {HEADS} heads, window {WINDOW}, shift {SHIFT}, "
         f"CPU ({torch.get_num_threads()} threads)")


def swinir_path(attention):
    """SwinIR's window attention around `attention(q, k, v, bias_and_mask)`."""

    def run(qkv, bias, mask):
        b, h, w, c3 = qkv.shape
        c, n = c3 // 3, WINDOW**2
        x = torch.roll(qkv, (-SHIFT, -SHIFT), (1, 2))
        windows = partition(x, WINDOW)
        q, k, v = windows.reshape(-1, n, 3, HEADS, c // HEADS).permute(2, 0, 3, 1, 4)
        bias_and_mask = (mask.unsqueeze(1) + bias).repeat(b, 1, 1, 1)  # [B * windows, heads, N, N]
        out = attention(q, k, v, bias_and_mask).transpose(1, 2).reshape(-1, n, c)
        out = reverse(out, WINDOW, h, w)
        return torch.roll(out, (SHIFT, SHIFT), (1, 2))

    return run


def naive(q, k, v, bias_and_mask):
    attn = (q * (CHANNELS // HEADS) ** -0.5) @ k.transpose(-2, -1) + bias_and_mask
    return attn.softmax(-1) @ v


def sdpa(q, k, v, bias_and_mask):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias_and_mask)


def random_active(size, fraction, generator):
    """[1, windows_y, windows_x] with exactly `fraction` of the windows on, at random."""
    windows = (size // WINDOW) ** 2
    active = torch.zeros(windows, dtype=torch.bool)
    active[torch.randperm(windows, generator=generator)[: round(fraction * windows)]] = True
    return active.view(1, size // WINDOW, size // WINDOW)


def functions(size, grad):
    """{name: fn} timed for one row: flexops with each fraction of windows active, the SwinIR and SDPA paths."""
    generator = torch.Generator().manual_seed(0)
    qkv = torch.randn(1, size, size, 3 * CHANNELS, requires_grad=grad)
    bias = (0.02 * torch.randn(HEADS, WINDOW**2, WINDOW**2)).requires_grad_(grad)
    mask = shift_mask(size, size, WINDOW, SHIFT)
    grad_out = torch.randn(1, size, size, CHANNELS)

    def timed(fn):
        if not grad:
            return fn
        return lambda: fn().backward(grad_out)

    fns = {
        f"flexops {100 * f:g}%": timed(
            lambda a=random_active(size, f, generator): flexops.ops.window_attention(qkv, HEADS, WINDOW, SHIFT, bias,
                                                                                     active=a)
        )
        for f in FRACTIONS
    }
    fns["swinir"] = timed(lambda: swinir_path(naive)(qkv, bias, mask))
    fns["sdpa"] = timed(lambda: swinir_path(sdpa)(qkv, bias, mask))
    return fns


@pytest.mark.parametrize("grad", [False, True], ids=["forward", "forward_backward"])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s}x{s}")
def test_window_attention(benchmark, size, grad):
    best = compare(benchmark, functions(size, grad), grad=grad)
    note(TABLE, "swinir / sdpa = SwinIR's roll + partition + attention + reverse + roll, with naive matmul-softmax "
                "or SDPA; x = their time / flexops (all windows); a% = flexops with a% of the windows active, as "
                "a fraction of its all-active time, beside the ideal a; best of interleaved rounds, warmed process; "
                f"fresh ({FRESH_SIZE}x{FRESH_SIZE}): in a new process of its own, first call / best of the next "
                "three, and sdpa's time over flexops' on those")
    row = f"{size}x{size} {'fwd+bwd' if grad else 'fwd'}"
    full = best["flexops 100%"]
    for name in ("swinir", "sdpa"):
        record(TABLE, row, f"{name} ms", f"{1e3 * best[name]:.1f}", 1e3 * best[name])
    record(TABLE, row, "flexops ms", f"{1e3 * full:.1f}", 1e3 * full)
    for name in ("swinir", "sdpa"):
        record(TABLE, row, f"vs {name}", f"{best[name] / full:.2f}x", best[name] / full)
    for f in FRACTIONS[1:]:
        fraction = best[f"flexops {100 * f:g}%"] / full
        record(TABLE, row, f"{100 * f:g}% / 100%", f"{fraction:.2f}", fraction, f"ideal {f:g}")
    if size == FRESH_SIZE:
        fresh = first_calls(__file__, "functions", [size, grad], ["flexops 100%", "sdpa"], grad=grad)
        record_first_calls(TABLE, row, fresh)
        ratio = fresh["sdpa"].following / fresh["flexops 100%"].following
        record(TABLE, row, "vs sdpa fresh", f"{ratio:.2f}x", ratio)


@plot("window_attention.png")
def draw(figure):
    """Time against the fraction of active windows (early exit), beside SwinIR's path and SDPA."""
    cells = tables.get(TABLE)
    if not cells:
        return False
    rows = [r for r in dict.fromkeys(r for r, _ in cells) if r.endswith("fwd")]
    for i, row in enumerate(rows):
        axes = figure.add_subplot(1, len(rows), i + 1)
        full = cells[(row, "flexops ms")].value
        times = [full] + [full * cells[(row, f"{100 * f:g}% / 100%")].value for f in FRACTIONS[1:]]
        baselines = [cells[(row, "swinir ms")].value, cells[(row, "sdpa ms")].value]
        axes.plot(FRACTIONS, times, "o-", label="flexops")
        axes.plot(FRACTIONS, [full * f for f in FRACTIONS], **STYLES["ideal"], label="ideal: a x all-active time")
        axes.axhline(baselines[0], color="tab:red", ls="--", label="SwinIR path")
        axes.axhline(baselines[1], color="tab:green", ls=":", label="SwinIR path + SDPA")
        robust_ylim(axes, list(zip(FRACTIONS, times)), keep=(0, *baselines))
        axes.set_xlabel("active windows a")
        axes.set_title(row, fontsize=9)
        if i == 0:
            axes.set_ylabel("ms (forward)")
            axes.legend(fontsize=7)
    figure.suptitle("window attention with early exit, C 180, 6 heads, window 8", fontsize=10)
