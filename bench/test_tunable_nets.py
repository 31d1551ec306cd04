"""Whole-network cost of the tunable networks against their baked plain twins (net.bake(omega): the
same network with nn.Conv2d layers holding the blended kernels), timed in the same run.

1x3x128x128, shared omega (batch 1) and per-sample omega (batch 4, baseline: the baked network on the
same batch), p = 2..6, CPU (and CUDA when present). The paper's claim is per layer (Fig. 3, V100):
under 5 % for p <= 4, under 20 % for p <= 6. The zoo's goals: shared omega, p <= 4, at most 5 % for the
ResNet (goal 2 %) and 10 % for NAFNet; per-sample omega, batch 4, at most 15 %.

By default p = 2 and 4 (the goals' range) and SwinIR (the colour denoising SwinIR-M, 188 GMACs at
128x128) at 32x32 on CPU, where a 128x128 forward takes seconds and the sweep the better part of an
hour (its row says the size); --paper-sizes runs p = 2..6 and SwinIR at 128x128.

Columns: "noise" is the baked network timed a second time (how far two identical functions read);
"p=2", "p=4": the tunable network called again and again with one setting, as when restoring many
images at it (without autograd it then runs a baked twin it keeps: see TunableNetwork.forward);
"p=2 new omega each call": a different setting every call (a user moving a slider), every layer
blended anew; "per-layer p=2" runs the same network with every layer computing and checking its own
alpha (the layers' public omega path), to show what computing all alphas at once saves.

The baked twin is the published network (nn.Conv2d, nn.Linear). A tunable 1x1 convolution (NAFNet's
conv1/3/4/5 and sca, every linear of SwinIR) runs on CPU as matrix products, which beat oneDNN's 1x1
convolution on contiguous images (32 -> 64 channels at 128x128: 0.6 against 2 ms): cells below zero
are that, not free blends.
"""

import copy
import itertools

import pytest
import torch

from flexops.models.tunable import TunableEDSR, TunableNAFNet, TunableStyleNet, TunableSwinIR
from harness import compare, first_calls, note, record, record_first_calls

SIZE = 128
PARAMS = (2, 3, 4, 5, 6)


def params(config):
    """p = 2 and 4 by default (the goals' cases); 2..6 with --paper-sizes."""
    return PARAMS if config.getoption("--paper-sizes") else (2, 4)
PER_SAMPLE_BATCH = 4
NETWORKS = {"ResNet": TunableEDSR, "NAFNet": TunableNAFNet, "StyleNet": TunableStyleNet, "SwinIR": TunableSwinIR}
GOALS = {"ResNet": "5% (2%)", "NAFNet": "10%", "StyleNet": "-", "SwinIR": "5% (2%)"}
SMALLER = {("SwinIR", "cpu"): 32}  # input size where SIZE would take too long


def devices():
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def functions(name, per_sample, device, size, ps):
    """{function name: fn} of one table row, for `compare` and, in new processes, `first_calls`."""
    torch.manual_seed(0)
    batch = PER_SAMPLE_BATCH if per_sample else 1
    x = torch.rand(batch, 3, size, size, device=device)
    nets = {p: NETWORKS[name](num_params=p).to(device).eval() for p in ps}
    omegas = {p: torch.rand(batch, p, device=device) if per_sample else torch.rand(p, device=device) for p in ps}
    baked = nets[2].bake(omegas[2].reshape(-1, 2)[0])

    def timed(fn):
        if device == "cuda":
            return lambda: (fn(), torch.cuda.synchronize())
        return fn

    fns = {"baked": timed(lambda: baked(x)), "baked again": timed(lambda: baked(x))}
    for p in ps:
        fns[f"p{p}"] = timed(lambda net=nets[p], omega=omegas[p]: net(x, omega))
    fns["per-layer p2"] = timed(lambda: nets[2].run(x, omegas[2]))  # each layer its own alpha and checks
    if not per_sample:  # a new setting every call (a user moving a slider): never the kept baked twin
        # Its own copy: calls at another omega in between would keep nets[2] from reusing its twin.
        slider, settings = copy.deepcopy(nets[2]), itertools.cycle(torch.rand(2, 2, device=device))
        fns["new omega p2"] = timed(lambda: slider(x, next(settings)))
    return fns


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("per_sample", [False, True], ids=["shared", "per_sample"])
@pytest.mark.parametrize("name", NETWORKS)
def test_tunable_network_overhead(benchmark, name, per_sample, device, request):
    ps = params(request.config)
    size = SIZE if request.config.getoption("--paper-sizes") else SMALLER.get((name, device), SIZE)
    fns = functions(name, per_sample, device, size, list(ps))
    # Until best-of has settled and the baked twin reads within 2 % of itself, or 12 s (a minute with
    # --paper-sizes): on a busy machine a few rounds could miss every quiet moment for one function of a
    # row (measured: the same baked twin +22 % in one run of five rounds, +2 % in the next); the report
    # names the rows that had not settled.
    seconds = 60 if request.config.getoption("--paper-sizes") else 12
    best = compare(benchmark, fns, seconds=seconds, twins=("baked", "baked again"))
    kind = f"per-sample omega, {PER_SAMPLE_BATCH}x3x{SIZE}x{SIZE}" if per_sample else f"shared omega, 1x3x{SIZE}x{SIZE}"
    table = f"tunable networks vs their baked plain twin, {kind}, {device}"
    note(table, "cell: (tunable / baked - 1) in %, best of interleaved rounds; goals: shared p<=4 ResNet, SwinIR "
                "5% (2%), NAFNet 10%; per-sample 15%; paper (per layer, V100): <5% p<=4, <20% p<=6; 'noise': the baked "
                "network timed twice; p=2, p=4: one setting call after call (the kept baked twin); 'new omega': a "
                "different setting every call; 'per-layer p=2': every layer computes and checks its own alpha; "
                "tunable 1x1 convolutions run as matrix products, faster than the twin's oneDNN 1x1 convolutions"
                + ("; fresh: the baked twin and p=2, each in a new process of its own (what a user's script sees: "
                   "there the baseline's large buffers still fault), first call / best of the next two, and the "
                   "overhead on those" if per_sample else ""))
    at = "" if size == SIZE else f" at {size}x{size}"
    row = f"{name}{at} baked {1e3 * best['baked']:.1f}ms (goal {GOALS[name] if not per_sample else '15%'})"
    noise = 100 * (best["baked again"] / best["baked"] - 1)
    record(table, row, "noise", f"{noise:+.1f}%", noise)
    goal = 15 if per_sample else {"ResNet": 5, "SwinIR": 5, "NAFNet": 10}.get(name)
    for p in ps:
        overhead = 100 * (best[f"p{p}"] / best["baked"] - 1)
        judged = goal is not None and p <= 4
        record(table, row, f"p={p}", f"{overhead:+.1f}%", overhead, f"<= {goal}%" if judged else None,
               overhead <= goal if judged else None)
    if not per_sample:
        new_omega = 100 * (best["new omega p2"] / best["baked"] - 1)
        record(table, row, "p=2 new omega each call", f"{new_omega:+.1f}%", new_omega, f"<= {goal}%" if goal else None,
               new_omega <= goal if goal else None)
    per_layer = 100 * (best["per-layer p2"] / best["baked"] - 1)
    record(table, row, "per-layer p=2", f"{per_layer:+.1f}%", per_layer)
    if per_sample and device == "cpu":
        # First call and two more (not three): eight new processes of whole networks at a second a call.
        fresh = first_calls(__file__, "functions", [name, per_sample, device, size, [2]], ["baked", "p2"], calls=3)
        record_first_calls(table, row, fresh)
        overhead = 100 * (fresh["p2"].following / fresh["baked"].following - 1)
        record(table, row, "fresh p=2", f"{overhead:+.1f}%", overhead)
