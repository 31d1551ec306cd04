"""Fused tunable convolution: an implicit-GEMM convolution that blends the p kernels while it loads
each weight tile, so per-sample kernels are never written to memory.

One program computes a BLOCK_M x BLOCK_N tile of one image's output (pixels x output channels of
one group), reducing over K = Cin/groups * kh * kw in BLOCK_K steps.
"""

import torch
import triton
import triton.language as tl

from flexops.triton._dot import dot
from flexops.triton._im2col import input_tile


@triton.jit
def _tunable_conv2d_kernel(
    x_ptr, w_ptr, bias_ptr, alpha_ptr, y_ptr,
    H, W, Ho, Wo, cin_per_group, cout_per_group, kernel_numel,
    sx_b, sx_c, sx_h, sx_w,
    sy_b, sy_c, sy_h, sy_w,
    salpha_b, salpha_p,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    P: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, HAS_BIAS: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    tiles_per_image = tl.cdiv(Ho * Wo, BLOCK_M)
    b = (tl.program_id(0) // tiles_per_image).to(tl.int64)
    m = (tl.program_id(0) % tiles_per_image) * BLOCK_M + tl.arange(0, BLOCK_M)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    group = tl.program_id(2)
    oy = m // Wo
    ox = m % Wo
    m_ok = m < Ho * Wo
    n_ok = n < cout_per_group
    out_channel = group * cout_per_group + n
    k_total = cin_per_group * KH * KW

    x_image = x_ptr + b * sx_b + group * cin_per_group * sx_c
    alpha_row = alpha_ptr + b * salpha_b
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, k_total, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < k_total
        x = input_tile(x_image, k // (KH * KW), k, k_ok, oy, ox, m_ok, H, W, sx_c, sx_h, sx_w,
                       stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, KH, KW)

        # Weight [p, Cout, Cin/groups, kh, kw] is contiguous: element (o, k) of kernel i is at
        # i * kernel_numel + o * k_total + k.
        w_offsets = out_channel[None, :] * k_total + k[:, None]
        w_ok = k_ok[:, None] & n_ok[None, :]
        blended = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
        for i in tl.static_range(P):
            a = tl.load(alpha_row + i * salpha_p).to(tl.float32)
            blended += a * tl.load(w_ptr + i * kernel_numel + w_offsets, mask=w_ok, other=0.0).to(tl.float32)
        acc = dot(x, blended.to(x.dtype), acc, INPUT_PRECISION)

    if HAS_BIAS:
        for i in tl.static_range(P):
            a = tl.load(alpha_row + i * salpha_p).to(tl.float32)
            bias = tl.load(bias_ptr + i * cout_per_group * tl.num_programs(2) + out_channel, mask=n_ok, other=0.0)
            acc += a * bias.to(tl.float32)[None, :]

    y = y_ptr + b * sy_b + out_channel[None, :] * sy_c + oy[:, None] * sy_h + ox[:, None] * sy_w
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


def tunable_conv2d(input, weight, bias, alpha, stride, padding, dilation, groups):
    """Forward of flexops.ops.tunable_conv2d (arguments already validated)."""
    from flexops.ops._args import conv_output_size, new_output

    batch, _, height, width = input.shape
    p, cout, cin_per_group, kh, kw = weight.shape
    ho, wo = conv_output_size((height, width), (kh, kw), stride, padding, dilation)
    output = new_output(input, (batch, cout, ho, wo))
    if output.numel() == 0:
        return output
    weight = weight.contiguous()
    has_bias = bias is not None
    bias = bias.contiguous() if has_bias else weight  # a placeholder pointer, never read
    alpha_strides = (0, alpha.stride(0)) if alpha.dim() == 1 else alpha.stride()
    cout_per_group = cout // groups
    # fp32 follows torch's convolution rule: TF32 when cuDNN may use it (only fp32 inputs are affected).
    precision = "tf32" if torch.backends.cudnn.allow_tf32 else "ieee"
    block_m, block_k = 64, 32
    block_n = max(16, min(64, triton.next_power_of_2(cout_per_group)))
    grid = (batch * triton.cdiv(ho * wo, block_m), triton.cdiv(cout_per_group, block_n), groups)
    _tunable_conv2d_kernel[grid](
        input, weight, bias, alpha, output,
        height, width, ho, wo, cin_per_group, cout_per_group, weight[0].numel(),
        *input.stride(), *output.stride(), *alpha_strides,
        *stride, *padding, *dilation,
        P=p, KH=kh, KW=kw, HAS_BIAS=has_bias, INPUT_PRECISION=precision,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
    )
    return output
