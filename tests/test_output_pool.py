"""CPU outputs of 32 MiB and more come from blocks kept between calls (csrc/cpu/output_pool.h): they
must behave as ordinary tensors that never share memory while alive."""

import os
import subprocess
import sys

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
