"""flexops.accelerate on third-party networks: spandrel's SwinIR and HAT at their published
hyper-parameters (random weights: the time does not depend on them), before and after `accelerate`,
timed in the same run in interleaved rounds. CPU, float32, batch 1, inference; 64x64 by default,
128x128 too with --paper-sizes (a HAT forward at 128x128 takes seconds on two cores).

Networks: SwinIR-M classical x2 (001_classicalSR_DF2K_s64w8: embed 180, 6 x 6 blocks, 6 heads, window
8, MLP ratio 2) and HAT x2 (HAT_SRx2: the same trunk with window 16, channel-attention branches and one
overlapping cross-attention block per group, each of which accelerate fuses). Goal: 1.4x after accelerate
(moonshot 2x). "noise": the network before accelerate timed a second time against itself;
"max |diff|": the largest output difference after against before.
"""

import copy

import pytest
import torch

import flexops
from harness import compare, note, record

spandrel = pytest.importorskip("spandrel")
from spandrel.architectures.HAT import HAT  # noqa: E402
from spandrel.architectures.SwinIR import SwinIR  # noqa: E402

TRUNK = dict(img_size=64, embed_dim=180, depths=[6] * 6, num_heads=[6] * 6, mlp_ratio=2, upscale=2,
             upsampler="pixelshuffle", resi_connection="1conv")
NETWORKS = {
    "SwinIR-M x2": lambda: SwinIR(window_size=8, **TRUNK),
    "HAT x2": lambda: HAT(window_size=16, compress_ratio=3, squeeze_factor=30, conv_scale=0.01, overlap_ratio=0.5,
                          **TRUNK),
}
GOAL, MOONSHOT = 1.4, 2.0
TABLE = f"accelerate on spandrel's networks, fp32, CPU ({torch.get_num_threads()} threads)"


def sizes(config):
    return (64, 128) if config.getoption("--paper-sizes") else (64,)


def networks(name):
    """(the network as spandrel builds it, an accelerated copy, the report)."""
    torch.manual_seed(0)
    before = NETWORKS[name]().eval()
    after = copy.deepcopy(before)
    return before, after, flexops.accelerate(after)


@pytest.mark.parametrize("size", [64, 128], ids=lambda s: f"{s}x{s}")
@pytest.mark.parametrize("name", NETWORKS)
def test_accelerate(benchmark, name, size, request):
    if size not in sizes(request.config):
        pytest.skip("128x128 runs with --paper-sizes")
    before, after, report = networks(name)
    x = torch.rand(1, 3, size, size)
    with torch.inference_mode():
        diff = (after(x) - before(x)).abs().max().item()
    fns = {"before": lambda: before(x), "before again": lambda: before(x), "after": lambda: after(x)}
    best = compare(benchmark, fns, seconds=20, twins=("before", "before again"))
    note(TABLE, "best of interleaved rounds; x = before / after; noise: 'before' timed twice; replaced / left: "
                "the modules accelerate swapped and those it left")
    row = f"{name} {size}x{size}"
    speedup = best["before"] / best["after"]
    noise = 100 * (best["before again"] / best["before"] - 1)
    record(TABLE, row, "before ms", f"{1e3 * best['before']:.0f}", 1e3 * best["before"])
    record(TABLE, row, "after ms", f"{1e3 * best['after']:.0f}", 1e3 * best["after"])
    record(TABLE, row, "x", f"{speedup:.2f}x", speedup, f">= {GOAL}x (moonshot {MOONSHOT}x)", speedup >= GOAL)
    record(TABLE, row, "noise", f"{noise:+.1f}%", noise)
    record(TABLE, row, "max |diff|", f"{diff:.1e}", diff)
    record(TABLE, row, "replaced / left", f"{len(report.replaced)} / {len(report.left)}")
