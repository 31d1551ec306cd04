"""Malformed calls of the registered ops (torch.ops.flexops.*), past flexops' Python checks, as
torch.export / AOTInductor packages and C++ programs make them: each must raise a RuntimeError that
names what was wrong, never read out of bounds or kill the process (csrc/common/conv_geometry.h and
the ops' checks). The cases run in a few subprocesses, so a crash fails the group and names its case."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

# Case name -> (call, a phrase of the expected message). `r` is torch.randn, `ops` torch.ops.flexops.
TUNABLE = {
    # The reproductions: per-sample alpha with fewer rows than the batch read past its end.
    "alpha rows < batch": ("ops.tunable_conv2d(r(4, 8, 4, 128), r(2, 8, 1, 3, 3), None, r(2, 2), "
                           "[2, 2], [1, 1], [1, 1], 8)", "alpha must be [p]"),
    "alpha rows < expanded batch": ("ops.tunable_conv2d(r(1, 64, 1, 128).expand(20000, 64, 1, 128), "
                                    "r(2, 64, 1, 1, 9), None, r(2, 2), [1, 1], [0, 4], [1, 1], 64)",
                                    "alpha must be [p]"),
    "stride 0": ("ops.tunable_conv2d(r(1, 4, 8, 8), r(2, 4, 4, 3, 3), None, r(2), [0, 1], [1, 1], [1, 1], 1)",
                 "stride must be >= 1"),
    "negative stride": ("ops.tunable_conv2d(r(1, 4, 8, 8), r(2, 4, 4, 3, 3), None, r(2), [1, -2], [1, 1], "
                        "[1, 1], 1)", "stride must be >= 1"),
    "negative padding": ("ops.tunable_conv2d(r(1, 4, 8, 8), r(2, 4, 4, 3, 3), None, r(2), [1, 1], [-1, 1], "
                         "[1, 1], 1)", "padding must be >= 0"),
    "dilation 0": ("ops.tunable_conv2d(r(1, 4, 8, 8), r(2, 4, 4, 3, 3), None, r(2), [1, 1], [1, 1], [1, 0], 1)",
                   "dilation must be >= 1"),
    "groups 0": ("ops.tunable_conv2d(r(1, 4, 8, 8), r(2, 4, 4, 3, 3), None, r(2), [1, 1], [1, 1], [1, 1], 0)",
                 "groups must be >= 1"),
    "groups not dividing Cout": ("ops.tunable_conv2d(r(1, 4, 8, 8), r(2, 3, 2, 3, 3), None, r(2), [1, 1], "
                                 "[1, 1], [1, 1], 2)", "must divide weight's output channels"),
    "weight Cin mismatch": ("ops.tunable_conv2d(r(1, 4, 8, 8), r(2, 4, 3, 3, 3), None, r(2), [1, 1], [1, 1], "
                            "[1, 1], 1)", "times groups"),
    "short bias": ("ops.tunable_conv2d(r(1, 4, 8, 8), r(2, 4, 4, 3, 3), r(2, 3), r(2), [1, 1], [1, 1], [1, 1], 1)",
                   "bias must be [p, Cout]"),
    "bias of one kernel": ("ops.tunable_conv2d(r(1, 4, 8, 8), r(2, 4, 4, 1, 1), r(4), r(2), [1, 1], [0, 0], "
                           "[1, 1], 1)", "bias must be [p, Cout]"),
    "alpha of wrong p": ("ops.tunable_conv2d(r(2, 4, 8, 8), r(2, 4, 4, 1, 1), None, r(2, 3), [1, 1], [0, 0], "
                         "[1, 1], 1)", "alpha must be [p]"),
    "alpha 3-d": ("ops.tunable_conv2d(r(2, 4, 8, 8), r(2, 4, 4, 1, 1), None, r(2, 2, 1), [1, 1], [0, 0], "
                  "[1, 1], 1)", "alpha must be [p]"),
    "weight 4-d": ("ops.tunable_conv2d(r(1, 4, 8, 8), r(4, 4, 3, 3), None, r(4), [1, 1], [1, 1], [1, 1], 1)",
                   "weight must be [p, Cout"),
    "no kernels": ("ops.tunable_conv2d(r(1, 4, 8, 8), r(0, 4, 4, 3, 3), None, r(0), [1, 1], [1, 1], [1, 1], 1)",
                   "p >= 1"),
    "input 3-d": ("ops.tunable_conv2d(r(4, 8, 8), r(2, 4, 4, 3, 3), None, r(2), [1, 1], [1, 1], [1, 1], 1)",
                  "input must be [B, Cin, H, W]"),
    "double weight": ("ops.tunable_conv2d(r(1, 4, 8, 8), r(2, 4, 4, 3, 3).double(), None, r(2), [1, 1], [1, 1], "
                      "[1, 1], 1)", "weight must have input's dtype"),
    "double alpha": ("ops.tunable_conv2d(r(1, 4, 8, 8), r(2, 4, 4, 3, 3), None, r(2).double(), [1, 1], [1, 1], "
                     "[1, 1], 1)", "alpha must have input's dtype"),
    "integer input": ("ops.tunable_conv2d(torch.ones(1, 4, 8, 8, dtype=torch.int32), "
                      "torch.ones(2, 4, 4, 3, 3, dtype=torch.int32), None, torch.ones(2, dtype=torch.int32), "
                      "[1, 1], [1, 1], [1, 1], 1)", "floating-point"),
    "kernel larger than input": ("ops.tunable_conv2d(r(1, 4, 2, 2), r(2, 4, 4, 5, 5), None, r(2), [1, 1], "
                                 "[0, 0], [1, 1], 1)", "larger than the padded input"),
    "padding overflows int64": ("ops.tunable_conv2d(r(1, 4, 8, 8), r(2, 4, 4, 3, 3), None, r(2), [1, 1], "
                                "[2**62, 0], [1, 1], 1)", "overflow int64"),
    "output elements overflow int64": ("ops.tunable_conv2d(r(1, 4, 1, 1), r(2, 4, 4, 1, 1), None, r(2), "
                                       "[1, 1], [2**60, 2**60], [1, 1], 1)", "more elements than int64"),
    "dilation overflows int64": ("ops.tunable_conv2d(r(1, 4, 8, 8), r(2, 4, 4, 3, 3), None, r(2), [1, 1], "
                                 "[1, 1], [2**62, 1], 1)", "overflow int64"),
    "backward grad_output of wrong size": ("ops.tunable_conv2d_backward(r(1, 4, 8, 7), r(1, 4, 8, 8), "
                                           "r(2, 4, 4, 3, 3), None, r(2), [1, 1], [1, 1], [1, 1], 1)",
                                           "grad_output must be the output's sizes"),
    "backward alpha rows < batch": ("ops.tunable_conv2d_backward(r(4, 4, 8, 8), r(4, 4, 8, 8), "
                                    "r(2, 4, 4, 1, 1), None, r(2, 2), [1, 1], [0, 0], [1, 1], 1)",
                                    "alpha must be [p]"),
    "backward stride 0": ("ops.tunable_conv2d_backward(r(1, 4, 8, 8), r(1, 4, 8, 8), r(2, 4, 4, 3, 3), None, "
                          "r(2), [0, 0], [1, 1], [1, 1], 1)", "stride must be >= 1"),
}

MASKED = {
    "stride 0": ("ops.masked_conv2d(r(1, 4, 8, 8), r(6, 4, 3, 3), None, on(1, 4), on(1, 6), [0, 1], [1, 1], [1, 1])",
                 "stride must be >= 1"),
    "short bias": ("ops.masked_conv2d(r(1, 4, 8, 8), r(6, 4, 3, 3), r(5), on(1, 4), on(1, 6), [1, 1], [1, 1], "
                   "[1, 1])", "bias must be [Cout]"),
    "weight Cin mismatch": ("ops.masked_conv2d(r(1, 4, 8, 8), r(6, 3, 3, 3), None, on(1, 4), on(1, 6), [1, 1], "
                            "[1, 1], [1, 1])", "weight's input channels"),
    "negative padding": ("ops.masked_conv2d(r(1, 4, 8, 8), r(6, 4, 3, 3), None, on(1, 4), on(1, 6), [1, 1], "
                         "[0, -1], [1, 1])", "padding must be >= 0"),
    "dilation 0": ("ops.masked_conv2d(r(1, 4, 8, 8), r(6, 4, 3, 3), None, on(1, 4), on(1, 6), [1, 1], [1, 1], "
                   "[0, 1])", "dilation must be >= 1"),
    "padding overflows int64": ("ops.masked_conv2d(r(1, 4, 8, 8), r(6, 4, 3, 3), None, on(1, 4), on(1, 6), "
                                "[1, 1], [2**62, 2**62], [1, 1])", "overflow int64"),
    "float mask": ("ops.masked_conv2d(r(1, 4, 8, 8), r(6, 4, 3, 3), None, torch.ones(1, 4), on(1, 6), [1, 1], "
                   "[1, 1], [1, 1])", "in_mask must be bool"),
    "mask of wrong channels": ("ops.masked_conv2d(r(1, 4, 8, 8), r(6, 4, 3, 3), None, on(1, 4), on(1, 5), "
                               "[1, 1], [1, 1], [1, 1])", "out_mask must be bool"),
    "mask rows disagree": ("ops.masked_conv2d(r(1, 4, 8, 8), r(6, 4, 3, 3), None, on(2, 4), on(3, 6), [1, 1], "
                           "[1, 1], [1, 1])", "1 or the same number of rows"),
    "batch neither 1 nor tasks": ("ops.masked_conv2d(r(2, 4, 8, 8), r(6, 4, 3, 3), None, on(3, 4), on(3, 6), "
                                  "[1, 1], [1, 1], [1, 1])", "input batch must be 1 or 3"),
    "mask without rows": ("ops.masked_conv2d(r(1, 4, 8, 8), r(6, 4, 3, 3), None, on(0, 4), on(1, 6), [1, 1], "
                          "[1, 1], [1, 1])", "M >= 1"),
    "double weight": ("ops.masked_conv2d(r(1, 4, 8, 8), r(6, 4, 3, 3).double(), None, on(1, 4), on(1, 6), "
                      "[1, 1], [1, 1], [1, 1])", "weight must have input's dtype"),
    "weight 5-d": ("ops.masked_conv2d(r(1, 4, 8, 8), r(1, 6, 4, 3, 3), None, on(1, 4), on(1, 6), [1, 1], [1, 1], "
                   "[1, 1])", "weight must be [Cout, Cin, kh, kw]"),
    "kernel larger than input": ("ops.masked_conv2d(r(1, 4, 2, 2), r(6, 4, 5, 5), None, on(1, 4), on(1, 6), "
                                 "[1, 1], [0, 0], [1, 1])", "larger than the padded input"),
    "backward grad_output of wrong batch": ("ops.masked_conv2d_backward(r(1, 6, 8, 8), r(1, 4, 8, 8), "
                                            "r(6, 4, 3, 3), None, on(3, 4), on(3, 6), [1, 1], [1, 1], [1, 1])",
                                            "grad_output must be the output's sizes"),
    "backward stride 0": ("ops.masked_conv2d_backward(r(1, 6, 8, 8), r(1, 4, 8, 8), r(6, 4, 3, 3), None, "
                          "on(1, 4), on(1, 6), [0, 0], [1, 1], [1, 1])", "stride must be >= 1"),
    "backward short bias": ("ops.masked_conv2d_backward(r(1, 6, 8, 8), r(1, 4, 8, 8), r(6, 4, 3, 3), r(2), "
                            "on(1, 4), on(1, 6), [1, 1], [1, 1], [1, 1])", "bias must be [Cout]"),
}

# input [2, 4, 8, 8], weight [6, 4, 3, 3], padding 1: offset [2, 18, 8, 8], mask [2, 9, 8, 8].
DEFORM = {
    "offset channels": ("ops.deform_conv2d(r(2, 4, 8, 8), r(2, 2, 8, 8), r(6, 4, 3, 3), None, None, [1, 1], "
                        "[1, 1], [1, 1])", "the shape of the offset"),
    "offset size": ("ops.deform_conv2d(r(2, 4, 8, 8), r(2, 18, 7, 8), r(6, 4, 3, 3), None, None, [1, 1], [1, 1], "
                    "[1, 1])", "the shape of the offset"),
    "offset batch": ("ops.deform_conv2d(r(2, 4, 8, 8), r(1, 18, 8, 8), r(6, 4, 3, 3), None, None, [1, 1], [1, 1], "
                     "[1, 1])", "the shape of the offset"),
    "mask channels": ("ops.deform_conv2d(r(2, 4, 8, 8), r(2, 18, 8, 8), r(6, 4, 3, 3), None, r(2, 2, 8, 8), "
                      "[1, 1], [1, 1], [1, 1])", "mask.shape[1] is not valid"),
    "mask size": ("ops.deform_conv2d(r(2, 4, 8, 8), r(2, 18, 8, 8), r(6, 4, 3, 3), None, r(2, 9, 8, 7), [1, 1], "
                  "[1, 1], [1, 1])", "the shape of the mask"),
    "stride 0": ("ops.deform_conv2d(r(2, 4, 8, 8), r(2, 18, 8, 8), r(6, 4, 3, 3), None, None, [0, 1], [1, 1], "
                 "[1, 1])", "stride must be >= 1"),
    "negative padding": ("ops.deform_conv2d(r(2, 4, 8, 8), r(2, 18, 8, 8), r(6, 4, 3, 3), None, None, [1, 1], "
                         "[-1, 1], [1, 1])", "padding must be >= 0"),
    "dilation 0": ("ops.deform_conv2d(r(2, 4, 8, 8), r(2, 18, 8, 8), r(6, 4, 3, 3), None, None, [1, 1], [1, 1], "
                   "[1, 0])", "dilation must be >= 1"),
    "short bias": ("ops.deform_conv2d(r(2, 4, 8, 8), r(2, 18, 8, 8), r(6, 4, 3, 3), r(5), None, [1, 1], [1, 1], "
                   "[1, 1])", "bias must be [Cout]"),
    "weight channels not dividing": ("ops.deform_conv2d(r(2, 4, 8, 8), r(2, 18, 8, 8), r(6, 3, 3, 3), None, "
                                     "None, [1, 1], [1, 1], [1, 1])", "must divide input's channels"),
    "groups not dividing Cout": ("ops.deform_conv2d(r(2, 4, 8, 8), r(2, 18, 8, 8), r(5, 2, 3, 3), None, None, "
                                 "[1, 1], [1, 1], [1, 1])", "divide weight's output channels"),
    "offset groups not dividing": ("ops.deform_conv2d(r(2, 4, 8, 8), r(2, 54, 8, 8), r(6, 4, 3, 3), None, None, "
                                   "[1, 1], [1, 1], [1, 1])", "offset groups"),
    "double offset": ("ops.deform_conv2d(r(2, 4, 8, 8), r(2, 18, 8, 8).double(), r(6, 4, 3, 3), None, None, "
                      "[1, 1], [1, 1], [1, 1])", "offset must have input's dtype"),
    "padding overflows int64": ("ops.deform_conv2d(r(2, 4, 8, 8), r(2, 18, 8, 8), r(6, 4, 3, 3), None, None, "
                                "[1, 1], [2**62, 1], [1, 1])", "overflow int64"),
    "backward grad_output of wrong size": ("ops.deform_conv2d_backward(r(2, 6, 8, 7), r(2, 4, 8, 8), "
                                           "r(2, 18, 8, 8), r(6, 4, 3, 3), None, [1, 1], [1, 1], [1, 1])",
                                           "grad_output must be the output's sizes"),
    "backward mask channels": ("ops.deform_conv2d_backward(r(2, 6, 8, 8), r(2, 4, 8, 8), r(2, 18, 8, 8), "
                               "r(6, 4, 3, 3), r(2, 3, 8, 8), [1, 1], [1, 1], [1, 1])",
                               "mask.shape[1] is not valid"),
}

# qkv [1, 8, 8, 3 * 8]: 2 heads of 4 channels, windows of 4 (16 tokens).
WINDOW = {
    "heads 0": ("ops.window_attention(r(1, 8, 8, 24), 0, 4, 0, None, 0.5, None)", "num_heads"),
    "window 0": ("ops.window_attention(r(1, 8, 8, 24), 2, 0, 0, None, 0.5, None)", "window_size"),
    "window not dividing": ("ops.window_attention(r(1, 8, 8, 24), 2, 3, 0, None, 0.5, None)", "window_size"),
    "shift >= window": ("ops.window_attention(r(1, 8, 8, 24), 2, 4, 4, None, 0.5, None)", "shift_size"),
    "negative shift": ("ops.window_attention(r(1, 8, 8, 24), 2, 4, -1, None, 0.5, None)", "shift_size"),
    "bias of wrong size": ("ops.window_attention(r(1, 8, 8, 24), 2, 4, 0, r(2, 16, 15), 0.5, None)",
                           "rel_pos_bias must be"),
    "active of wrong size": ("ops.window_attention(r(1, 8, 8, 24), 2, 4, 0, None, 0.5, "
                             "torch.ones(1, 2, 3, dtype=torch.bool))", "active must be bool"),
    "backward grad_output of wrong dtype": ("ops.window_attention_backward(r(1, 8, 8, 8).double(), "
                                            "r(1, 8, 8, 24), 2, 4, 0, None, 0.5, None)", "grad_output must be"),
}
KEPT = {
    "negative size": ("ops.kept_empty_like(r(2), [4, -1])", "sizes must be >= 0"),
}

_RUNNER = textwrap.dedent("""
    import json, sys, torch, flexops
    ops, r = torch.ops.flexops, torch.randn
    on = lambda *size: torch.ones(*size, dtype=torch.bool)
    for name, call in json.loads(sys.argv[1]).items():
        print(json.dumps(["start", name]), flush=True)
        try:
            eval(call)
        except RuntimeError as error:
            print(json.dumps(["raised", name, str(error)]), flush=True)
        else:
            print(json.dumps(["returned", name]), flush=True)
""")


@pytest.mark.parametrize("op, cases", [("tunable_conv2d", TUNABLE), ("masked_conv2d", MASKED),
                                       ("deform_conv2d", DEFORM), ("window_attention", WINDOW),
                                       ("kept_empty_like", KEPT)])
def test_malformed_calls_raise(op, cases, tmp_path):
    calls = {name: call for name, (call, _) in cases.items()}
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", _RUNNER, json.dumps(calls)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    events = [json.loads(line) for line in done.stdout.splitlines()]
    if done.returncode != 0:
        started = [event[1] for event in events if event[0] == "start"]
        pytest.fail(f"{op}: the process died (exit {done.returncode}) in case {started[-1]!r}: {done.stderr[-2000:]}")
    outcomes = {event[1]: event[2:] for event in events if event[0] != "start"}
    for name, (_, phrase) in cases.items():
        assert name in outcomes and outcomes[name], f"{op}: {name!r} returned instead of raising"
        assert phrase in outcomes[name][0], f"{op}: {name!r} raised {outcomes[name][0]!r}"
