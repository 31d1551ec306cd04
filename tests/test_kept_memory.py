"""The tensors flexops' CPU kernels allocate come from blocks kept between calls (csrc/cpu/kept_memory.h):
they must behave as ordinary tensors that never share memory while alive, a warmed call must find every
block it needs kept (no new memory, no page faults), and FLEXOPS_KEPT_CPU_MB=0 must keep none."""

import json
import os
import subprocess
import sys
import textwrap

import torch

from flexops.ops import masked_conv2d, window_attention


def test_large_outputs_are_independent_ordinary_tensors():
    x, weight = torch.randn(1, 4, 64, 64), torch.randn(8, 4, 3, 3)
    out_mask = torch.rand(300, 8) < 0.5
    first = masked_conv2d(x, weight, None, None, out_mask, padding=1)  # 300 x 8 x 64 x 64 fp32: 39 MB
    kept = first.clone()
    second = masked_conv2d(2 * x, weight, None, None, out_mask, padding=1)
    assert first.data_ptr() != second.data_ptr()
    torch.testing.assert_close(first, kept)
    torch.testing.assert_close(second, 2 * kept)

    block = second.data_ptr()
    del second
    third = masked_conv2d(x, weight, None, None, out_mask, padding=1)
    assert third.data_ptr() == block  # the freed block served the next output of its size
    torch.testing.assert_close(third, kept)
    third.resize_(301, 8, 64, 64)  # resizable like any tensor
    third[300] = 1
    torch.testing.assert_close(third[:300], kept)


def test_large_window_attention_gradient_is_independent():
    qkv = torch.randn(1, 64, 64, 3 * 2048, requires_grad=True)  # grad_qkv: 100 MB
    grad = torch.randn(1, 64, 64, 2048)
    out = window_attention(qkv, 64, 8)
    (first,) = torch.autograd.grad(out, qkv, grad, retain_graph=True)
    (second,) = torch.autograd.grad(out, qkv, 2 * grad)
    assert first.data_ptr() != second.data_ptr()
    torch.testing.assert_close(second, 2 * first)


def run_with_kept_limit(value, tmp_path):
    """Runs a large masked_conv2d in a fresh process with FLEXOPS_KEPT_CPU_MB=value (read once)."""
    code = (
        "import torch, flexops\n"
        "x, w = torch.randn(1, 4, 64, 64), torch.randn(8, 4, 3, 3)\n"
        "out = flexops.ops.masked_conv2d(x, w, None, None, torch.ones(300, 8, dtype=torch.bool), padding=1)\n"
        "torch.testing.assert_close(out[7], torch.nn.functional.conv2d(x, w, padding=1)[0])\n"
    )
    env = dict(os.environ, FLEXOPS_KEPT_CPU_MB=value)
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True)


def test_kept_limit_from_the_environment(tmp_path):
    assert run_with_kept_limit("0", tmp_path).returncode == 0
    assert run_with_kept_limit("64", tmp_path).returncode == 0
    bad = run_with_kept_limit("lots", tmp_path)
    assert bad.returncode != 0
    assert "FLEXOPS_KEPT_CPU_MB must be a whole number of megabytes" in bad.stderr
    code = "import flexops._C as C\ntry:\n    C.kept_cpu_bytes()\nexcept RuntimeError as e:\n    print(e)\n"
    env = dict(os.environ, FLEXOPS_KEPT_CPU_MB="-1")
    asked = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert asked.returncode == 0 and "FLEXOPS_KEPT_CPU_MB must be a whole number" in asked.stdout, asked


# Five calls of each op, forward and backward, on one thread (so that the number of workspaces alive at
# once is the same every call); prints each call's minor page faults and the kept bytes after it.
_CALLS = textwrap.dedent("""
    import json, resource, torch, flexops
    from flexops import _C
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x, offset, mask, weight, bias = (torch.randn(*s, generator=g, requires_grad=True) for s in
                                     [(1, 32, 64, 64), (1, 18, 64, 64), (1, 9, 64, 64), (32, 32, 3, 3), (32,)])
    qkv, table = torch.randn(1, 64, 64, 288, requires_grad=True), torch.randn(3, 64, 64, requires_grad=True)
    tasks = torch.rand(4, 32, generator=g) < 0.5
    kernels, alpha = torch.randn(2, 32, 32, 1, 1, requires_grad=True), torch.rand(2, requires_grad=True)
    ops = {
        "deform_conv2d": (lambda: flexops.ops.deform_conv2d(x, offset, weight, bias, padding=1, mask=mask),
                          (x, offset, weight, bias, mask)),
        "masked_conv2d": (lambda: flexops.ops.masked_conv2d(x, weight, bias, None, tasks, padding=1), (x, weight, bias)),
        "window_attention": (lambda: flexops.ops.window_attention(qkv, 3, 8, 4, table), (qkv, table)),
        # Pointwise kernels, shared and per sample: matrix products into kept outputs and gradients.
        "tunable_conv2d": (lambda: flexops.ops.tunable_conv2d(x, kernels, None, alpha), (x, kernels, alpha)),
        "tunable_conv2d per-sample": (lambda: flexops.ops.tunable_conv2d(x, kernels, None, alpha[None]),
                                      (x, kernels, alpha)),
    }
    result = {}
    for name, (op, inputs) in ops.items():
        for backward in (False, True):
            grad = torch.randn_like(op()) if backward else None
            calls = []
            for _ in range(5):
                faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                with torch.inference_mode(not backward):
                    out = torch.autograd.grad(op(), inputs, grad) if backward else op()
                del out
                calls.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults, _C.kept_cpu_bytes()))
            result[f"{name} {'backward' if backward else 'forward'}"] = calls
    print(json.dumps(result))
""")


def calls_in_fresh_process(kept_mb, tmp_path):
    env = dict(os.environ, FLEXOPS_KEPT_CPU_MB=kept_mb)
    done = subprocess.run([sys.executable, "-c", _CALLS], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_warm_calls_reuse_kept_workspaces(tmp_path):
    for case, calls in calls_in_fresh_process("1024", tmp_path).items():
        faults, kept = zip(*calls)
        # Every op keeps workspaces or outputs of 128 KiB and more, forward and backward.
        assert kept[0] > 0, case
        # From the second call on every block comes back from the kept ones: nothing new is held ...
        assert len(set(kept[1:])) == 1, (case, kept)
        # ... and nothing is faulted in (a first call faults in up to thousands of pages; a few pages of
        # autograd's and the interpreter's own small allocations may still come fresh). masked_conv2d's
        # backward takes each task's gradients from ATen's convolution_backward, whose buffers glibc
        # serves, fresh or not as its thresholds have adapted: only its own tensors are kept.
        if case != "masked_conv2d backward":
            assert max(faults[2:]) <= 32, (case, faults)


def test_kept_limit_zero_keeps_nothing(tmp_path):
    for case, calls in calls_in_fresh_process("0", tmp_path).items():
        assert all(kept == 0 for _, kept in calls), (case, calls)


# Shared-alpha tunable convolutions with 48 distinct kernel sizes (each blended kernel 147-300 KB, a
# kept block of its own size): prints the most kept_cpu_bytes() reported and the growth of the
# resident set.
_MANY_SIZES = textwrap.dedent("""
    import json, torch, flexops
    from flexops import _C
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096
    x = torch.randn(1, 64, 8, 8)
    flexops.ops.tunable_conv2d(x, torch.randn(2, 64, 64, 3, 3), None, torch.rand(2), padding=1)
    start, most = rss(), 0
    for out_channels in range(64, 64 + 2 * 48, 2):
        weight = torch.randn(2, out_channels, 64, 3, 3)
        flexops.ops.tunable_conv2d(x, weight, None, torch.rand(2), padding=1)
        del weight
        most = max(most, _C.kept_cpu_bytes())
    print(json.dumps({"most_kept": most, "rss_growth": rss() - start}))
""")


def test_many_kernel_sizes_stay_within_the_limit(tmp_path):
    for limit_mb in ("2", "0"):
        env = dict(os.environ, FLEXOPS_KEPT_CPU_MB=limit_mb)
        done = subprocess.run([sys.executable, "-c", _MANY_SIZES], env=env, cwd=tmp_path, capture_output=True,
                              text=True)
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert result["most_kept"] <= int(limit_mb) << 20, result
        # Unbounded, one kept kernel per size held 48 x 220 KB = 10 MB more; glibc keeps some freed pages.
        assert result["rss_growth"] < 8 << 20, result
