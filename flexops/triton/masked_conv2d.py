"""Channel-masked convolution for all tasks in one launch: an implicit-GEMM convolution driven by
per-task lists of active input and output channels.

One program computes a BLOCK_M x BLOCK_N tile of one task's output (pixels x active output
channels), reducing over K = active input channels * kh * kw in BLOCK_K steps. The channel lists put
each task's active channels first, so a task's K loop runs over its active inputs only and tiles past
its active outputs do no work: the cost follows active-in x active-out per task.
"""

import torch
import triton
import triton.language as tl


@triton.jit
def _masked_conv2d_kernel(
    x_ptr, w_ptr, bias_ptr, y_ptr,
    in_index_ptr, in_count_ptr, out_index_ptr, out_count_ptr,
    H, W, Ho, Wo,
    sx_b, sx_c, sx_h, sx_w,
    sw_o, sw_i, sw_h, sw_w,
    sy_b, sy_c, sy_h, sy_w,
    in_row_step, out_row_step, in_channels, out_channels,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    KH: tl.constexpr, KW: tl.constexpr, HAS_BIAS: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    tiles_per_image = tl.cdiv(Ho * Wo, BLOCK_M)
    task = (tl.program_id(0) // tiles_per_image).to(tl.int64)
    m = (tl.program_id(0) % tiles_per_image) * BLOCK_M + tl.arange(0, BLOCK_M)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    oy = m // Wo
    ox = m % Wo
    m_ok = m < Ho * Wo

    # A mask row shared by all tasks has row step 0 (and a shared input image batch stride 0).
    in_row = task * in_row_step
    out_row = task * out_row_step
    out_count = tl.load(out_count_ptr + out_row)
    n_ok = n < out_count
    out_channel = tl.load(out_index_ptr + out_row * out_channels + n, mask=n_ok, other=0)
    in_count = tl.load(in_count_ptr + in_row)
    # A tile past the task's active outputs skips the reduction; its store is fully masked.
    k_total = tl.where(tl.program_id(1) * BLOCK_N < out_count, in_count * KH * KW, 0)

    x_image = x_ptr + task * sx_b
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, k_total, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < k_total
        channel = tl.load(in_index_ptr + in_row * in_channels + k // (KH * KW), mask=k_ok, other=0)
        ky = (k // KW) % KH
        kx = k % KW
        iy = oy[:, None] * stride_h - pad_h + ky[None, :] * dil_h
        ix = ox[:, None] * stride_w - pad_w + kx[None, :] * dil_w
        inside = m_ok[:, None] & k_ok[None, :] & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
        x = tl.load(x_image + channel[None, :] * sx_c + iy * sx_h + ix * sx_w, mask=inside, other=0.0)
        w_offsets = out_channel[None, :] * sw_o + channel[:, None] * sw_i + ky[:, None] * sw_h + kx[:, None] * sw_w
        w = tl.load(w_ptr + w_offsets, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc = tl.dot(x, w, acc, input_precision=INPUT_PRECISION)

    if HAS_BIAS:
        acc += tl.load(bias_ptr + out_channel, mask=n_ok, other=0.0).to(tl.float32)[None, :]

    y = y_ptr + task * sy_b + out_channel[None, :] * sy_c + oy[:, None] * sy_h + ox[:, None] * sy_w
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


def _channel_lists(mask):
    """bool [rows, C] -> (int32 [rows, C] with each row's active channels first, int32 [rows] counts)."""
    order = torch.argsort((~mask).to(torch.uint8), dim=1, stable=True)
    return order.to(torch.int32).contiguous(), mask.sum(1, dtype=torch.int32)


def masked_conv2d(input, weight, bias, in_mask, out_mask, stride, padding, dilation):
    """Forward of flexops.ops.masked_conv2d (arguments validated, masks bool [rows, C])."""
    from flexops.ops._args import conv_output_size, new_output

    batch, _, height, width = input.shape
    cout, _, kh, kw = weight.shape
    rows = max(in_mask.shape[0], out_mask.shape[0])
    tasks = rows if rows > 1 else batch
    ho, wo = conv_output_size((height, width), (kh, kw), stride, padding, dilation)
    output = new_output(input, (tasks, cout, ho, wo)).zero_()
    if output.numel() == 0:
        return output
    in_index, in_count = _channel_lists(in_mask)
    out_index, out_count = _channel_lists(out_mask)
    has_bias = bias is not None
    bias = bias if has_bias else weight  # a placeholder pointer, never read
    input_strides = list(input.stride())
    if batch == 1:  # one feature map shared by every task
        input_strides[0] = 0
    # fp32 follows torch's convolution rule: TF32 when cuDNN may use it (only fp32 inputs are affected).
    precision = "tf32" if torch.backends.cudnn.allow_tf32 else "ieee"
    block_m, block_k = 64, 32
    block_n = max(16, min(64, triton.next_power_of_2(cout)))
    grid = (tasks * triton.cdiv(ho * wo, block_m), triton.cdiv(cout, block_n))
    _masked_conv2d_kernel[grid](
        input, weight, bias, output,
        in_index, in_count, out_index, out_count,
        height, width, ho, wo,
        *input_strides, *weight.stride(), *output.stride(),
        int(in_mask.shape[0] > 1), int(out_mask.shape[0] > 1), in_mask.shape[1], cout,
        *stride, *padding, *dilation,
        KH=kh, KW=kw, HAS_BIAS=has_bias, INPUT_PRECISION=precision,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
    )
    return output
