"""tl.dot for the flexops kernels, correct under Triton's interpreter in bfloat16 too.

The interpreter (TRITON_INTERPRET=1: the kernels on CPU tensors, as the tests run them) holds
bfloat16 values as their raw 16 bits and multiplies those as integers, so its bfloat16 tl.dot is
wrong (Triton 3.8). There the operands go through float32 first: products of bfloat16 values are
exact in float32 and the sum is float32 on a GPU as well, so the result is what a GPU computes.
Compiled for a GPU the branch is not taken and tl.dot runs on the operands as given.
"""

import os

import triton
import triton.language as tl

_INTERPRETED: tl.constexpr = tl.constexpr(os.environ.get("TRITON_INTERPRET") == "1")


@triton.jit
def dot(a, b, acc, input_precision: tl.constexpr):
    """tl.dot(a, b, acc, input_precision=input_precision); acc None starts from zero."""
    if _INTERPRETED:
        if a.dtype == tl.bfloat16:
            a = a.to(tl.float32)
        if b.dtype == tl.bfloat16:
            b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=input_precision)
