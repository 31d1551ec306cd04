"""Linear and Conv2d: torch.nn's layers (same parameters, state_dict keys and float32 results),
except that a bfloat16 or float16 forward on a CPU without native arithmetic in that type runs in
float32. The zoo builds its dense layers from these; torch.fx keeps them as leaves, as torch.nn's.

PyTorch runs a half-type Linear or Conv2d on CPU through oneDNN where the CPU has the instructions
for it (AVX-512 and its BF16 or FP16 extensions, AMX). Elsewhere ATen's portable half-type loops run
it, far slower than float32: measured with torch 2.14.1 on a 2-core AVX2 EPYC (2 threads), zoo
SwinIR-M at 32x32 cast to bfloat16 took 1.87 s, 1.56 s of it in Linear layers and 0.22 s in 3x3
convolutions, where the float32 network takes 0.25 s; the IR-NAS network spent 0.98 s of its 1.0 s
in convolutions. Such a layer here widens its input, weight and bias to float32, runs float32's
kernel and rounds the result once to the half type: every product accumulates in float32, as the
half-type kernels do. Under CPU autocast the same holds for the autocast dtype (the output is in
it, as autocast's would be). Everywhere else (float32, CUDA, a CPU that has the instructions) the
layer is PyTorch's.

An inference (no autograd) widens a slice at a time, rows of a Linear's input or bands of output rows
of a convolution, and writes each into the half-type output: whole float32 copies of a large input
and output would raise the peak memory above the float32 network's (the IR-NAS network at 128x128:
180 MB against 174 MB; 91 MB in slices of 2 MB, at 0.95-0.99x of float32's speed, where 1 MB slices
ran at 0.74x). Training and compiled code (where inductor fuses the conversions) take it whole.
"""

import torch
import torch.nn.functional as F
from torch import nn

from flexops import _C
from flexops.ops._args import fx_leaf_layer


# {half type: whether oneDNN runs it on this CPU} (else ATen's slow portable loops would): the rule
# flexops' CPU kernels follow (csrc/cpu/in_float32.h: PyTorch's check, or FLEXOPS_CPU_HALF_PRODUCTS
# forcing native or float32), asked once, when this module is imported (compiled code would not see a
# later change of the variable).
NATIVE_ON_CPU = dict(zip((torch.bfloat16, torch.float16), _C.cpu_half_type_products()))


def cpu_compute_dtype(x):
    """The dtype a CPU layer computes `x` in: CPU autocast's where it is on, else x's own."""
    return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype


def emulated_half_type(x):
    """The half type a dense layer would run `x` in on this CPU without native arithmetic for it
    (cpu_compute_dtype), or None where PyTorch's own kernel is the one to run."""
    if x.device.type != "cpu":
        return None
    dtype = cpu_compute_dtype(x)
    return dtype if NATIVE_ON_CPU.get(dtype) is False else None


# Float32 bytes of one slice of an inference: its widened input and its result.
SLICE_BYTES = 2 << 20


def _widened(t):
    return None if t is None else t.float()


class _Float32WhereEmulated:
    """The forward both layers share; each layer supplies `_whole(x, weight, bias)` (its float32
    math on whole tensors), `_in_slices(x, weight, bias, dtype)` (the same written slice by slice
    into a `dtype` output) and `_sliceable(x)` (whether its slices can serve x)."""

    @fx_leaf_layer  # one call_module node under torch.fx, as torch.nn's own layers
    def forward(self, x):
        dtype = emulated_half_type(x)
        if dtype is None:
            return super().forward(x)
        with torch.autocast("cpu", enabled=False):
            weight, bias = self.weight.float(), _widened(self.bias)
            if torch.is_grad_enabled() or torch.compiler.is_compiling() or not self._sliceable(x):
                return self._whole(x.float(), weight, bias).to(dtype)
            return self._in_slices(x, weight, bias, dtype)


class Linear(_Float32WhereEmulated, nn.Linear):
    """nn.Linear; a half-type forward on a CPU without native arithmetic for it runs in float32.

    Args:
        in_features, out_features, bias, device, dtype: as nn.Linear.

    >>> layer = Linear(180, 540).to(torch.bfloat16)
    >>> y = layer(x.to(torch.bfloat16))   # bf16 output; on an AVX2 CPU computed in float32
    """

    def _sliceable(self, x):
        return True

    def _whole(self, x, weight, bias):
        return F.linear(x, weight, bias)

    def _in_slices(self, x, weight, bias, dtype):
        """x's rows widened and multiplied a slice at a time."""
        rows = x.reshape(-1, self.in_features)
        out = torch.empty(*x.shape[:-1], self.out_features, dtype=dtype)
        out_rows = out.view(-1, self.out_features)
        step = max(1, SLICE_BYTES // (4 * (self.in_features + self.out_features)))
        for start in range(0, rows.shape[0], step):
            out_rows[start:start + step] = F.linear(rows[start:start + step].float(), weight, bias)
        return out


class Conv2d(_Float32WhereEmulated, nn.Conv2d):
    """nn.Conv2d; a half-type forward on a CPU without native arithmetic for it runs in float32.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode,
        device, dtype: as nn.Conv2d.

    >>> conv = Conv2d(64, 64, 3, padding=1).to(torch.bfloat16)
    >>> y = conv(x.to(torch.bfloat16))   # bf16 output; on an AVX2 CPU computed in float32
    """

    def _sliceable(self, x):
        return (x.dim() == 4 and x.numel() > 0 and not isinstance(self.padding, str)
                and self.padding_mode == "zeros")

    def _whole(self, x, weight, bias):
        return self._conv_forward(x, weight, bias)

    def _in_slices(self, x, weight, bias, dtype):
        """The convolution of x [B, Cin, H, W] (zero padding given as numbers) in bands of output
        rows: each band's input rows (zero rows where they pass the image's edge) are widened,
        convolved in float32 and written into the half-type output."""
        (kh, _), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        batch, _, height, width = x.shape
        out_h = (height + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        out_w = (width + 2 * pw - dw * (self.kernel_size[1] - 1) - 1) // sw + 1
        if out_h <= 0 or out_w <= 0:
            return self._whole(x.float(), weight, bias).to(dtype)  # PyTorch's error
        last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        out = torch.empty(batch, self.out_channels, out_h, out_w, dtype=dtype,
                          memory_format=torch.channels_last if last else torch.contiguous_format)
        row_bytes = 4 * batch * (self.in_channels * width * sh + self.out_channels * out_w)
        band = max(1, SLICE_BYTES // row_bytes)
        for first in range(0, out_h, band):
            end = min(out_h, first + band)
            top, bottom = first * sh - ph, (end - 1) * sh - ph + dh * (kh - 1) + 1  # input rows [top, bottom)
            rows = F.pad(x[:, :, max(top, 0):min(bottom, height)].float(),
                         (0, 0, max(-top, 0), max(bottom - height, 0)))
            out[:, :, first:end] = F.conv2d(rows, weight, bias, (sh, sw), (0, pw), (dh, dw), self.groups)
        return out
