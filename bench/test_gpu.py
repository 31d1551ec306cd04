"""The GPU section: every op's CUDA C++ and Triton backends against the GPU baseline a user would
otherwise run (cuDNN's conv2d, torchvision's CUDA deform_conv2d, SwinIR's attention path with SDPA),
fp32, timed with CUDA synchronisation. It runs by itself when CUDA is present; without a GPU its table
says "no GPU", so whoever is first lent one gets every GPU number from `pytest bench/ --benchmark-only`.
"""

import time

import pytest
import torch
import torch.nn.functional as F

import flexops
from flexops.models.swinir_reference import shift_mask
from harness import note, record
from test_masked_conv2d import random_masks
from test_window_attention import CHANNELS, HEADS, SHIFT, WINDOW, sdpa, swinir_path

TABLE = "GPU: flexops backends against the GPU baselines (fp32, best of interleaved rounds)"
ROUNDS = 20


def best_times(fns):
    """Best-of-ROUNDS seconds per function, each call synchronised, in interleaved rounds."""
    best = {}
    with torch.inference_mode():
        for fn in fns.values():
            fn()
        for _ in range(ROUNDS):
            for name, fn in fns.items():
                torch.cuda.synchronize()
                start = time.perf_counter()
                fn()
                torch.cuda.synchronize()
                best[name] = min(best.get(name, float("inf")), time.perf_counter() - start)
    return best


def on(backend, fn):
    def run():
        with flexops.backends.use(backend):
            return fn()

    return run


def cases():
    """(op row, {name: fn}, baseline name), built on the GPU."""
    device = "cuda"
    x = torch.randn(1, 64, 256, 256, device=device)
    weight, bias = torch.randn(64, 64, 3, 3, device=device) * 0.05, torch.randn(64, device=device)
    tunable = torch.randn(4, 64, 64, 3, 3, device=device) * 0.05, torch.randn(4, 64, device=device)
    alpha = torch.tensor([0.4, 0.3, 0.2, 0.1], device=device)
    yield "tunable_conv2d 1x64x256x256 p=4", {
        backend: on(backend, lambda: flexops.ops.tunable_conv2d(x, *tunable, alpha, padding=1))
        for backend in ("cuda", "triton")
    } | {"cuDNN conv2d": lambda: F.conv2d(x, weight, bias, padding=1)}, "cuDNN conv2d"

    generator = torch.Generator().manual_seed(0)
    in_mask, out_mask = (random_masks(27, 64, 0.25, generator).to(device) for _ in range(2))
    yield "masked_conv2d 27 tasks, 25%/25%, 1x64x256x256", {
        backend: on(backend, lambda: flexops.ops.masked_conv2d(x, weight, bias, in_mask, out_mask, padding=1))
        for backend in ("cuda", "triton")
    } | {"cuDNN conv2d x27": lambda: [F.conv2d(x, weight, bias, padding=1) for _ in range(27)]}, "cuDNN conv2d x27"

    torchvision_ops = pytest.importorskip("torchvision.ops")
    offset, mask = 2 * torch.randn(1, 18, 256, 256, device=device), torch.rand(1, 9, 256, 256, device=device)
    yield "deform_conv2d 1x64x256x256 with mask", {
        backend: on(backend, lambda: flexops.ops.deform_conv2d(x, offset, weight, bias, padding=1, mask=mask))
        for backend in ("cuda", "triton")
    } | {"torchvision": lambda: torchvision_ops.deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)}, \
        "torchvision"

    qkv = torch.randn(1, 256, 256, 3 * CHANNELS, device=device)
    rel_bias = 0.02 * torch.randn(HEADS, WINDOW**2, WINDOW**2, device=device)
    attn_mask = shift_mask(256, 256, WINDOW, SHIFT).to(device)
    yield "window_attention 1x256x256, C 180", {
        "triton": on("triton", lambda: flexops.ops.window_attention(qkv, HEADS, WINDOW, SHIFT, rel_bias)),
        "SwinIR path + SDPA": lambda: swinir_path(sdpa)(qkv, rel_bias, attn_mask),
    }, "SwinIR path + SDPA"


def test_gpu(benchmark):
    if not torch.cuda.is_available():
        benchmark.pedantic(lambda: None, rounds=1, iterations=1)
        record(TABLE, "all ops", "result", "no GPU")
        note(TABLE, "CUDA is not available on this machine: no GPU numbers")
        return
    results = benchmark.pedantic(lambda: [(row, best_times(fns), base) for row, fns, base in cases()], rounds=1,
                                 iterations=1)
    for row, best, base in results:
        record(TABLE, row, "baseline", base)
        record(TABLE, row, "baseline ms", f"{1e3 * best[base]:.2f}", 1e3 * best[base])
        for name in ("cuda", "triton"):
            if name in best:
                ratio = best[base] / best[name]
                record(TABLE, row, f"{name} ms", f"{1e3 * best[name]:.2f}", 1e3 * best[name])
                record(TABLE, row, f"{name} speed-up", f"{ratio:.2f}x", ratio)
    note(TABLE, f"{torch.cuda.get_device_name()}; speed-up = baseline time / backend time")
