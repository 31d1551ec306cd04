"""KeptLinear: nn.Linear, optionally followed by GELU, whose CPU inference output comes from memory
flexops keeps between calls (flexops.accelerate's fused Swin blocks use it).

A Linear's output is a fresh tensor each call, and a large one (a Swin block's qkv map: 8.8 MB for
SwinIR-M at 64x64) is a fresh mapping from glibc: writing it pays a page fault per 4 KiB. On the
project's 2-core VM that made SwinIR-M's qkv projection 14.5 ms instead of 10.3 ms (fp32, 1 thread),
and the MLP's GELU, writing a second fresh map, twice as slow as in place. Without autograd the
output comes from flexops' kept blocks instead (csrc/cpu/kept_memory.h), addmm writes the product
into it and GELU runs on it in place: the same operations, so the same result. With gradients, on
other devices, under autocast, in compiled code and in a half type this CPU runs only in float32
(flexops.nn.dense) it is flexops.nn.dense.Linear's forward (then F.gelu).
"""

import torch
import torch.nn.functional as F
from torch import nn

import flexops.ops  # noqa: F401  (loads flexops._C, which registers flexops::kept_empty_like)
from flexops.nn import dense


@torch.library.register_fake("flexops::kept_empty_like")
def _fake_kept_empty_like(like, size):
    return like.new_empty(size)


class KeptLinear(dense.Linear):
    """nn.Linear on an existing layer's Parameters (not copies; the state_dict keys stay), then GELU
    when `gelu` is its `approximate` ("none" or "tanh"), None for none; its CPU inference output
    lives in kept memory."""

    def __init__(self, linear, gelu=None):
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        self.gelu = gelu

    def forward(self, x):
        if (x.device.type != "cpu" or torch.is_grad_enabled() or torch.is_autocast_enabled("cpu")
                or torch.compiler.is_compiling() or dense.emulated_half_type(x) is not None):
            out = super().forward(x)
            return out if self.gelu is None else F.gelu(out, approximate=self.gelu)
        out = torch.ops.flexops.kept_empty_like(x, [*x.shape[:-1], self.out_features])
        rows, flat_out = x.reshape(-1, self.in_features), out.view(-1, self.out_features)
        if self.bias is None:
            torch.mm(rows, self.weight.t(), out=flat_out)
        else:
            torch.addmm(self.bias, rows, self.weight.t(), out=flat_out)
        return out if self.gelu is None else torch.ops.aten.gelu_(out, approximate=self.gelu)

    def extra_repr(self):
        return super().extra_repr() + ("" if self.gelu is None else f", gelu={self.gelu!r}")
