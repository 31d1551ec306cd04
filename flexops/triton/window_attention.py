"""Swin (shifted) window attention, forward and backward, one program per (window, head).

A window holds N = ws * ws tokens, few enough for a single tile: the program loads the window's q, k
and v straight from the qkv token map (the cyclic shift is index arithmetic with wrap-around, no
rolled copy), computes S = scale q k^T + bias with tl.dot, adds mask_value to pairs of tokens from
different shift regions (-inf, i.e. excluded, unless SwinIR's -100 is asked for), excludes padding
columns with -inf, takes an fp32 softmax and writes P v back at the
tokens' original positions. N and the head dim are padded to powers of two (at least 16, tl.dot's
minimum) by masking. The backward recomputes P and forms dQ, dK, dV in the same program; each
(token, head) is owned by one program, so only the bias gradient, summed over windows, needs atomics.
The bias is [heads, N, N] for the batch or [B, heads, N, N] per image: a batch stride of 0 or
heads * N * N picks the window's.
"""

import torch
import triton
import triton.language as tl

from flexops.triton._dot import dot


@triton.jit
def _window_tokens(window, H, W, rows, cols, shift, WS: tl.constexpr, BLOCK_N: tl.constexpr):
    """Batch index, per-token original (y, x), shift-region label and validity of a window."""
    b = window // (rows * cols)
    wy = (window // cols) % rows
    wx = window % cols
    t = tl.arange(0, BLOCK_N)
    valid = t < WS * WS
    # Coordinates in the rolled map (padding tokens fall outside the window; they are masked).
    sy = wy * WS + t // WS
    sx = wx * WS + t % WS
    region = 3 * ((sy >= H - WS).to(tl.int32) + (sy >= H - shift).to(tl.int32)) \
        + (sx >= W - WS).to(tl.int32) + (sx >= W - shift).to(tl.int32)
    # shifted[y, x] = qkv[(y + shift) % H, (x + shift) % W]
    y = (sy + shift) % H
    x = (sx + shift) % W
    return b, wy, wx, y, x, region, valid


@triton.jit
def _window_setup(qkv_ptr, active_ptr, H, W, rows, cols, shift, hd,
                  sq_b, sq_h, sq_w, sq_c, sa_b, sa_h, sa_w,
                  WS: tl.constexpr, HAS_ACTIVE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """Where this program's (window, head) tile lies, whether its window is active, and a pointer to
    its q channels of each token (k and v are C and 2C channels further)."""
    b, wy, wx, y, x, region, valid = _window_tokens(tl.program_id(0), H, W, rows, cols, shift, WS, BLOCK_N)
    d = tl.arange(0, BLOCK_D)
    tile_ok = valid[:, None] & (d < hd)[None, :]
    channel = tl.program_id(1) * hd + d
    if HAS_ACTIVE:
        is_active = tl.load(active_ptr + b * sa_b + wy * sa_h + wx * sa_w) != 0
    else:
        is_active = True
    q_ptrs = qkv_ptr + b.to(tl.int64) * sq_b + y[:, None] * sq_h + x[:, None] * sq_w + channel[None, :] * sq_c
    return b, y, x, region, valid, channel, tile_ok, is_active, q_ptrs


@triton.jit
def _probabilities(q, k, bias_ptr, region, valid, scale, mask_value,
                   HAS_BIAS: tl.constexpr, N: tl.constexpr, INPUT_PRECISION: tl.constexpr,
                   BLOCK_N: tl.constexpr):
    """softmax(scale q k^T + bias + mask_value between shift regions), in fp32."""
    s = dot(q, tl.trans(k), None, INPUT_PRECISION) * scale
    i = tl.arange(0, BLOCK_N)
    pair_valid = valid[:, None] & valid[None, :]
    if HAS_BIAS:
        s += tl.load(bias_ptr + i[:, None] * N + i[None, :], mask=pair_valid, other=0.0).to(tl.float32)
    # A padding row keeps every valid column so that no row is all -inf (its values are never used).
    s = tl.where((region[:, None] == region[None, :]) | ~valid[:, None], s, s + mask_value)
    s = tl.where(valid[None, :], s, float("-inf"))
    p = tl.exp(s - tl.max(s, axis=1)[:, None])
    return p / tl.sum(p, axis=1)[:, None]


@triton.jit
def _window_attention_fwd_kernel(
    qkv_ptr, bias_ptr, active_ptr, out_ptr,
    H, W, rows, cols, shift, C, hd, scale, mask_value, sb_b,
    sq_b, sq_h, sq_w, sq_c,
    so_b, so_h, so_w, so_c,
    sa_b, sa_h, sa_w,
    WS: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_ACTIVE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    head = tl.program_id(1)
    N: tl.constexpr = WS * WS
    b, y, x, region, valid, channel, tile_ok, is_active, q_ptrs = _window_setup(
        qkv_ptr, active_ptr, H, W, rows, cols, shift, hd, sq_b, sq_h, sq_w, sq_c, sa_b, sa_h, sa_w,
        WS, HAS_ACTIVE, BLOCK_N, BLOCK_D)

    acc = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    if is_active:
        q = tl.load(q_ptrs, mask=tile_ok, other=0.0)
        k = tl.load(q_ptrs + C * sq_c, mask=tile_ok, other=0.0)
        v = tl.load(q_ptrs + 2 * C * sq_c, mask=tile_ok, other=0.0)
        p = _probabilities(q, k, bias_ptr + b.to(tl.int64) * sb_b + head * N * N, region, valid, scale,
                           mask_value, HAS_BIAS, N, INPUT_PRECISION, BLOCK_N)
        acc = dot(p.to(v.dtype), v, None, INPUT_PRECISION)

    out = out_ptr + b.to(tl.int64) * so_b + y[:, None] * so_h + x[:, None] * so_w + channel[None, :] * so_c
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=tile_ok)


@triton.jit
def _window_attention_bwd_kernel(
    grad_out_ptr, qkv_ptr, bias_ptr, active_ptr, grad_qkv_ptr, grad_bias_ptr,
    H, W, rows, cols, shift, C, hd, scale, mask_value, sb_b,
    sg_b, sg_h, sg_w, sg_c,
    sq_b, sq_h, sq_w, sq_c,
    sd_b, sd_h, sd_w, sd_c,
    sa_b, sa_h, sa_w,
    WS: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_ACTIVE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    head = tl.program_id(1)
    N: tl.constexpr = WS * WS
    b, y, x, region, valid, channel, tile_ok, is_active, q_ptrs = _window_setup(
        qkv_ptr, active_ptr, H, W, rows, cols, shift, hd, sq_b, sq_h, sq_w, sq_c, sa_b, sa_h, sa_w,
        WS, HAS_ACTIVE, BLOCK_N, BLOCK_D)

    dq = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dk = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    if is_active:
        q = tl.load(q_ptrs, mask=tile_ok, other=0.0)
        k = tl.load(q_ptrs + C * sq_c, mask=tile_ok, other=0.0)
        v = tl.load(q_ptrs + 2 * C * sq_c, mask=tile_ok, other=0.0)
        grad_token = grad_out_ptr + b.to(tl.int64) * sg_b + y[:, None] * sg_h + x[:, None] * sg_w
        do = tl.load(grad_token + channel[None, :] * sg_c, mask=tile_ok, other=0.0).to(v.dtype)
        p = _probabilities(q, k, bias_ptr + b.to(tl.int64) * sb_b + head * N * N, region, valid, scale,
                           mask_value, HAS_BIAS, N, INPUT_PRECISION, BLOCK_N)

        dv = dot(tl.trans(p.to(do.dtype)), do, None, INPUT_PRECISION)
        dp = dot(do, tl.trans(v), None, INPUT_PRECISION)
        # Padding rows and columns get dS = 0: their dO rows and P columns are 0.
        ds = p * (dp - tl.sum(p * dp, axis=1)[:, None])
        dq = dot(ds.to(k.dtype), k, None, INPUT_PRECISION) * scale
        dk = dot(tl.trans(ds.to(q.dtype)), q, None, INPUT_PRECISION) * scale
        if HAS_BIAS:
            # Summed over windows in fp32; the atomics' order, hence the rounding, is not deterministic on GPU.
            i = tl.arange(0, BLOCK_N)
            tl.atomic_add(grad_bias_ptr + b.to(tl.int64) * sb_b + head * N * N + i[:, None] * N + i[None, :], ds,
                          mask=valid[:, None] & valid[None, :])

    grad = grad_qkv_ptr + b.to(tl.int64) * sd_b + y[:, None] * sd_h + x[:, None] * sd_w
    dtype = grad_qkv_ptr.dtype.element_ty
    tl.store(grad + channel[None, :] * sd_c, dq.to(dtype), mask=tile_ok)
    tl.store(grad + (C + channel[None, :]) * sd_c, dk.to(dtype), mask=tile_ok)
    tl.store(grad + (2 * C + channel[None, :]) * sd_c, dv.to(dtype), mask=tile_ok)


def _launch_config(qkv, num_heads, window_size, rel_pos_bias, active):
    """Grid, shared scalar / pointer arguments and compile-time constants of both kernels."""
    batch, height, width, channels3 = qkv.shape
    channels = channels3 // 3
    head_dim = channels // num_heads
    rows, cols = height // window_size, width // window_size
    has_bias, has_active = rel_pos_bias is not None, active is not None
    # Placeholder pointers when absent: never read.
    bias = rel_pos_bias.contiguous() if has_bias else qkv
    # Element stride between the images' biases: 0 when one bias serves the batch.
    bias_batch_stride = bias.stride(0) if has_bias and bias.dim() == 4 else 0
    active_strides = active.stride() if has_active else (0, 0, 0)
    active = active.view(torch.uint8) if has_active else qkv
    # fp32 follows torch.matmul's rule: TF32 when allowed (other dtypes ignore the setting).
    precision = "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"
    constants = dict(
        WS=window_size, HAS_BIAS=has_bias, HAS_ACTIVE=has_active, INPUT_PRECISION=precision,
        BLOCK_N=max(16, triton.next_power_of_2(window_size * window_size)),
        BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
    )
    grid = (batch * rows * cols, num_heads)
    geometry = (height, width, rows, cols)
    return grid, bias, bias_batch_stride, active, active_strides, geometry, channels, head_dim, constants


def _mask_value(mask_value):
    """The kernels' logit offset between shift regions: None excludes such pairs (-inf)."""
    return float("-inf") if mask_value is None else mask_value


def window_attention(qkv, num_heads, window_size, shift_size, rel_pos_bias, scale, active, mask_value=None):
    """-> out [B, H, W, C], new contiguous tensor of qkv's dtype. mask_value None excludes pairs of
    different shift regions."""
    batch, height, width, channels3 = qkv.shape
    out = torch.empty((batch, height, width, channels3 // 3), device=qkv.device, dtype=qkv.dtype)
    if out.numel() == 0:
        return out
    grid, bias, bias_batch_stride, active, active_strides, geometry, channels, head_dim, constants = _launch_config(
        qkv, num_heads, window_size, rel_pos_bias, active)
    _window_attention_fwd_kernel[grid](
        qkv, bias, active, out,
        *geometry, shift_size, channels, head_dim, scale, _mask_value(mask_value), bias_batch_stride,
        *qkv.stride(), *out.stride(), *active_strides,
        **constants,
    )
    return out


def window_attention_backward(
    grad_output, qkv, num_heads, window_size, shift_size, rel_pos_bias, scale, active, mask_value=None
):
    """-> (grad_qkv [B, H, W, 3C] contiguous, grad_rel_pos_bias of rel_pos_bias's shape ([heads, N, N] or
    [B, heads, N, N]), or qkv.new_empty(0) when rel_pos_bias is None)"""
    # Every (token, channel) of grad_qkv is written by exactly one program.
    grad_qkv = torch.empty(qkv.shape, device=qkv.device, dtype=qkv.dtype)
    if rel_pos_bias is None:
        grad_bias = qkv.new_empty(0)
    else:
        grad_bias = torch.zeros(rel_pos_bias.shape, device=qkv.device, dtype=torch.float32)
    if grad_qkv.numel() > 0:
        grid, bias, bias_batch_stride, active, active_strides, geometry, channels, head_dim, constants = (
            _launch_config(qkv, num_heads, window_size, rel_pos_bias, active))
        _window_attention_bwd_kernel[grid](
            grad_output, qkv, bias, active, grad_qkv, grad_bias,
            *geometry, shift_size, channels, head_dim, scale, _mask_value(mask_value), bias_batch_stride,
            *grad_output.stride(), *qkv.stride(), *grad_qkv.stride(), *active_strides,
            **constants,
        )
    if rel_pos_bias is not None:
        grad_bias = grad_bias.to(rel_pos_bias.dtype)
    return grad_qkv, grad_bias
