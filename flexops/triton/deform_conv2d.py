"""Triton kernels for modulated deformable convolution (torchvision.ops.deform_conv2d semantics).

The im2col matrix of a deformable convolution ("columns": one bilinear sample per input channel,
kernel point and output pixel, times the mask) is never stored. Every kernel builds the tiles of
it that it needs on the fly:

- forward: implicit GEMM, out[pixels, Cout/g] += columns[pixels, channels] @ weight[channels, Cout/g]
  for each kernel point and block of the group's channels; + bias.
- backward, data: per (image, offset group, kernel point, pixel block), the gradient of the columns
  (grad_out @ weight, tl.dot) is scattered into grad_input (atomics) and reduced over the offset
  group's channels into grad_offset and grad_mask, which that program alone owns.
- backward, weight: grad_weight[Cout/g, channels] = grad_out^T @ columns, the (image, pixel)
  reduction split across programs that add into an fp32 buffer.

Channel blocks never straddle a conv group or an offset group: channels are walked in "units" of
gcd(Cin/groups, Cin/offset_groups) channels, which lie in exactly one of each, so the sampling
point of a unit is computed once per pixel and shared by all its channels. The input is read
channels-last, which makes the four corner gathers of a channel block contiguous.
"""
import math

import torch
import triton
import triton.language as tl

from flexops.triton._dot import dot


@triton.jit
def _sample_point(off_ptr, mask_ptr, b, og, k, oy, ox, pix_ok, K, KW,
                  stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                  so_b, so_c, so_h, so_w, sm_b, sm_c, sm_h, sm_w, HAS_MASK: tl.constexpr):
    """Where kernel point k of offset group og samples for output pixels (oy, ox), and its mask."""
    off = off_ptr + b * so_b + (og * 2 * K + 2 * k) * so_c + oy * so_h + ox * so_w
    dy = tl.load(off, mask=pix_ok, other=0.0).to(tl.float32)
    dx = tl.load(off + so_c, mask=pix_ok, other=0.0).to(tl.float32)
    y = (oy * stride_h - pad_h + (k // KW) * dil_h).to(tl.float32) + dy
    x = (ox * stride_w - pad_w + (k % KW) * dil_w).to(tl.float32) + dx
    if HAS_MASK:
        m = mask_ptr + b * sm_b + (og * K + k) * sm_c + oy * sm_h + ox * sm_w
        modulation = tl.load(m, mask=pix_ok, other=0.0).to(tl.float32)
    else:
        modulation = tl.where(pix_ok, 1.0, 0.0)
    return y, x, modulation


@triton.jit
def _corners(y, x, H, W, pix_ok):
    """Top-left corner, fractional parts and in-image tests of bilinear sampling at (y, x).

    Only the corners are tested, as torchvision does: a point outside -1 < y < H has no corner in
    the image with a nonzero weight, and y == -1 keeps torchvision's one-sided offset gradient.
    """
    # Far-away points only touch zeros; clamping keeps the int conversion from overflowing. A NaN
    # coordinate stays NaN and reads no corner, as the C++ kernels do (csrc/common/bilinear.h): its
    # NaN fractions make the sample NaN, as in torchvision, unless the other coordinate is outside.
    y = tl.where((y != y) & ((x <= -1.0) | (x >= W)), -2.0, y)
    x = tl.where((x != x) & ((y <= -1.0) | (y >= H)), -2.0, x)
    number = (y == y) & (x == x)
    y = tl.where(number, tl.minimum(tl.maximum(y, -2.0), H), y)
    x = tl.where(number, tl.minimum(tl.maximum(x, -2.0), W), x)
    y0f = tl.floor(y)
    x0f = tl.floor(x)
    y0 = tl.where(number, y0f, -2.0).to(tl.int32)
    x0 = tl.where(number, x0f, -2.0).to(tl.int32)
    y0_ok = pix_ok & (y0 >= 0) & (y0 < H)
    y1_ok = pix_ok & (y0 >= -1) & (y0 < H - 1)
    x0_ok = (x0 >= 0) & (x0 < W)
    x1_ok = (x0 >= -1) & (x0 < W - 1)
    return y0, x0, y - y0f, x - x0f, y0_ok, y1_ok, x0_ok, x1_ok


@triton.jit
def _gather(img, yy, xx, ok, chans, chan_ok, s_c, s_h, s_w):
    """img[chans, yy, xx] as a [pixels, channels] fp32 tile, 0 where ok is false."""
    ptrs = img + (yy * s_h + xx * s_w)[:, None] + chans[None, :] * s_c
    return tl.load(ptrs, mask=ok[:, None] & chan_ok[None, :], other=0.0).to(tl.float32)


@triton.jit
def _scatter_add(img, yy, xx, ok, chans, chan_ok, s_c, s_h, s_w, values):
    ptrs = img + (yy * s_h + xx * s_w)[:, None] + chans[None, :] * s_c
    tl.atomic_add(ptrs, values, mask=ok[:, None] & chan_ok[None, :])


@triton.jit
def _columns(img, y0, x0, ly, lx, y0_ok, y1_ok, x0_ok, x1_ok, modulation, chans, chan_ok,
             s_c, s_h, s_w):
    """A [pixels, channels] tile of the columns: mask * bilinear sample, fp32."""
    hy = 1.0 - ly
    hx = 1.0 - lx
    cols = (hy * hx)[:, None] * _gather(img, y0, x0, y0_ok & x0_ok, chans, chan_ok, s_c, s_h, s_w)
    cols += (hy * lx)[:, None] * _gather(img, y0, x0 + 1, y0_ok & x1_ok, chans, chan_ok, s_c, s_h, s_w)
    cols += (ly * hx)[:, None] * _gather(img, y0 + 1, x0, y1_ok & x0_ok, chans, chan_ok, s_c, s_h, s_w)
    cols += (ly * lx)[:, None] * _gather(img, y0 + 1, x0 + 1, y1_ok & x1_ok, chans, chan_ok, s_c, s_h, s_w)
    # The mask multiplies the blended value, as in torchvision: an infinite mask gives inf, not the
    # NaN of inf times a zero corner weight. Lanes past the last channel stay 0 (not inf * 0), as
    # the product with the weight tile sums over them.
    return tl.where(chan_ok[None, :], cols * modulation[:, None], 0.0)


@triton.jit
def _deform_conv2d_fwd_kernel(
        x_ptr, off_ptr, mask_ptr, w_ptr, bias_ptr, out_ptr,
        H, W, Ho, Wo, K, KW, group_channels, group_out, og_channels, unit,
        stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
        sx_b, sx_c, sx_h, sx_w, so_b, so_c, so_h, so_w, sm_b, sm_c, sm_h, sm_w,
        sy_b, sy_c, sy_h, sy_w,
        HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    # Program: BLOCK_M output pixels of one image x BLOCK_N output channels of one group.
    pix_blocks = tl.cdiv(Ho * Wo, BLOCK_M)
    b = (tl.program_id(0) // pix_blocks).to(tl.int64)
    pix = (tl.program_id(0) % pix_blocks) * BLOCK_M + tl.arange(0, BLOCK_M)
    pix_ok = pix < Ho * Wo
    oy = pix // Wo
    ox = pix % Wo
    out_blocks = tl.cdiv(group_out, BLOCK_N)
    g = tl.program_id(1) // out_blocks
    outs = (tl.program_id(1) % out_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
    out_ok = outs < group_out
    img = x_ptr + b * sx_b

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k in range(K):
        for c0 in range(g * group_channels, (g + 1) * group_channels, unit):
            y, x, modulation = _sample_point(
                off_ptr, mask_ptr, b, c0 // og_channels, k, oy, ox, pix_ok, K, KW,
                stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                so_b, so_c, so_h, so_w, sm_b, sm_c, sm_h, sm_w, HAS_MASK)
            y0, x0, ly, lx, y0_ok, y1_ok, x0_ok, x1_ok = _corners(y, x, H, W, pix_ok)
            for c in range(c0, c0 + unit, BLOCK_C):
                chans = c + tl.arange(0, BLOCK_C)
                chan_ok = chans < c0 + unit
                cols = _columns(img, y0, x0, ly, lx, y0_ok, y1_ok, x0_ok, x1_ok, modulation,
                                chans, chan_ok, sx_c, sx_h, sx_w)
                # The weight is laid out [groups, K, Cin/groups, Cout/groups] by the launcher.
                rows = (g * K + k) * group_channels + chans - g * group_channels
                w = tl.load(w_ptr + rows[:, None] * group_out + outs[None, :],
                            mask=chan_ok[:, None] & out_ok[None, :], other=0.0)
                acc = dot(cols.to(w.dtype), w, acc, DOT_PRECISION)

    if HAS_BIAS:
        acc += tl.load(bias_ptr + g * group_out + outs, mask=out_ok, other=0.0).to(tl.float32)[None, :]
    out = out_ptr + b * sy_b + (g * group_out + outs)[None, :] * sy_c + (oy * sy_h + ox * sy_w)[:, None]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=pix_ok[:, None] & out_ok[None, :])


@triton.jit
def _deform_conv2d_bwd_data_kernel(
        grad_out_ptr, x_ptr, off_ptr, mask_ptr, w_ptr, grad_x_ptr, grad_off_ptr, grad_mask_ptr,
        H, W, Ho, Wo, K, KW, group_channels, group_out, og_channels, unit,
        stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
        sx_b, sx_c, sx_h, sx_w, so_b, so_c, so_h, so_w, sm_b, sm_c, sm_h, sm_w,
        sg_b, sg_c, sg_h, sg_w, sgx_b, sgx_c, sgx_h, sgx_w,
        HAS_MASK: tl.constexpr, DOT_PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_C: tl.constexpr):
    # Program: BLOCK_M output pixels of one image x one (offset group, kernel point), so it owns
    # those entries of grad_offset and grad_mask and reduces over the offset group's channels.
    pix_blocks = tl.cdiv(Ho * Wo, BLOCK_M)
    b = (tl.program_id(0) // pix_blocks).to(tl.int64)
    pix = (tl.program_id(0) % pix_blocks) * BLOCK_M + tl.arange(0, BLOCK_M)
    pix_ok = pix < Ho * Wo
    oy = pix // Wo
    ox = pix % Wo
    og = tl.program_id(1) // K
    k = tl.program_id(1) % K
    img = x_ptr + b * sx_b
    grad_img = grad_x_ptr + b * sgx_b

    y, x, modulation = _sample_point(
        off_ptr, mask_ptr, b, og, k, oy, ox, pix_ok, K, KW,
        stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
        so_b, so_c, so_h, so_w, sm_b, sm_c, sm_h, sm_w, HAS_MASK)
    y0, x0, ly, lx, y0_ok, y1_ok, x0_ok, x1_ok = _corners(y, x, H, W, pix_ok)
    hy = (1.0 - ly)[:, None]
    hx = (1.0 - lx)[:, None]
    ly = ly[:, None]
    lx = lx[:, None]
    grad_y = tl.zeros([BLOCK_M], dtype=tl.float32)
    grad_x = tl.zeros([BLOCK_M], dtype=tl.float32)
    grad_m = tl.zeros([BLOCK_M], dtype=tl.float32)
    for c0 in range(og * og_channels, (og + 1) * og_channels, unit):
        g = c0 // group_channels
        for c in range(c0, c0 + unit, BLOCK_C):
            chans = c + tl.arange(0, BLOCK_C)
            chan_ok = chans < c0 + unit
            # Gradient of the columns for these channels: grad_out[pixels, Cout/g] @ weight[Cout/g, chans].
            grad_cols = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
            rows = (g * K + k) * group_channels + chans - g * group_channels
            for o in range(0, group_out, BLOCK_O):
                outs = o + tl.arange(0, BLOCK_O)
                out_ok = outs < group_out
                go = tl.load(grad_out_ptr + b * sg_b + (g * group_out + outs)[None, :] * sg_c
                             + (oy * sg_h + ox * sg_w)[:, None],
                             mask=pix_ok[:, None] & out_ok[None, :], other=0.0)
                wt = tl.load(w_ptr + rows[None, :] * group_out + outs[:, None],
                             mask=out_ok[:, None] & chan_ok[None, :], other=0.0)
                grad_cols = dot(go, wt.to(go.dtype), grad_cols, DOT_PRECISION)

            v00 = _gather(img, y0, x0, y0_ok & x0_ok, chans, chan_ok, sx_c, sx_h, sx_w)
            v01 = _gather(img, y0, x0 + 1, y0_ok & x1_ok, chans, chan_ok, sx_c, sx_h, sx_w)
            v10 = _gather(img, y0 + 1, x0, y1_ok & x0_ok, chans, chan_ok, sx_c, sx_h, sx_w)
            v11 = _gather(img, y0 + 1, x0 + 1, y1_ok & x1_ok, chans, chan_ok, sx_c, sx_h, sx_w)
            # d(sample)/dy and d(sample)/dx; corners outside the image read as 0.
            grad_y += tl.sum(grad_cols * (hx * (v10 - v00) + lx * (v11 - v01)), axis=1)
            grad_x += tl.sum(grad_cols * (hy * (v01 - v00) + ly * (v11 - v10)), axis=1)
            if HAS_MASK:
                sample = hy * hx * v00 + hy * lx * v01 + ly * hx * v10 + ly * lx * v11
                grad_m += tl.sum(grad_cols * sample, axis=1)

            grad_cols *= modulation[:, None]
            _scatter_add(grad_img, y0, x0, y0_ok & x0_ok, chans, chan_ok, sgx_c, sgx_h, sgx_w, hy * hx * grad_cols)
            _scatter_add(grad_img, y0, x0 + 1, y0_ok & x1_ok, chans, chan_ok, sgx_c, sgx_h, sgx_w, hy * lx * grad_cols)
            _scatter_add(grad_img, y0 + 1, x0, y1_ok & x0_ok, chans, chan_ok, sgx_c, sgx_h, sgx_w, ly * hx * grad_cols)
            _scatter_add(grad_img, y0 + 1, x0 + 1, y1_ok & x1_ok, chans, chan_ok, sgx_c, sgx_h, sgx_w, ly * lx * grad_cols)

    # grad_offset [B, og*2K, Ho, Wo] and grad_mask [B, og*K, Ho, Wo] are contiguous.
    grad_off = grad_off_ptr + (b * 2 * tl.num_programs(1) + 2 * tl.program_id(1)) * Ho * Wo + pix
    tl.store(grad_off, (grad_y * modulation).to(grad_off_ptr.dtype.element_ty), mask=pix_ok)
    tl.store(grad_off + Ho * Wo, (grad_x * modulation).to(grad_off_ptr.dtype.element_ty), mask=pix_ok)
    if HAS_MASK:
        grad_mask = grad_mask_ptr + (b * tl.num_programs(1) + tl.program_id(1)) * Ho * Wo + pix
        tl.store(grad_mask, grad_m.to(grad_mask_ptr.dtype.element_ty), mask=pix_ok)


@triton.jit
def _deform_conv2d_bwd_weight_kernel(
        grad_out_ptr, x_ptr, off_ptr, mask_ptr, grad_w_ptr,
        B, H, W, Ho, Wo, K, KW, group_channels, group_out, og_channels, unit, tiles_per_program,
        stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
        sx_b, sx_c, sx_h, sx_w, so_b, so_c, so_h, so_w, sm_b, sm_c, sm_h, sm_w,
        sg_b, sg_c, sg_h, sg_w,
        HAS_MASK: tl.constexpr, DOT_PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_C: tl.constexpr):
    # Program: BLOCK_O output channels x BLOCK_C channels of one unit x one kernel point, summed
    # over tiles_per_program of the B * pixel_blocks tiles of (image, BLOCK_M pixels).
    pid = tl.program_id(0)
    out_blocks = tl.cdiv(group_out, BLOCK_O)
    unit_blocks = tl.cdiv(unit, BLOCK_C)
    chan_blocks = (group_channels // unit) * unit_blocks
    outs = (pid % out_blocks) * BLOCK_O + tl.arange(0, BLOCK_O)
    out_ok = outs < group_out
    pid = pid // out_blocks
    cb = pid % chan_blocks
    pid = pid // chan_blocks
    k = pid % K
    g = pid // K
    c0 = g * group_channels + (cb // unit_blocks) * unit
    chans = c0 + (cb % unit_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    chan_ok = chans < c0 + unit
    og = c0 // og_channels

    pix_blocks = tl.cdiv(Ho * Wo, BLOCK_M)
    first = tl.program_id(1) * tiles_per_program
    acc = tl.zeros([BLOCK_O, BLOCK_C], dtype=tl.float32)
    for t in range(first, tl.minimum(first + tiles_per_program, B * pix_blocks)):
        b = (t // pix_blocks).to(tl.int64)
        pix = (t % pix_blocks) * BLOCK_M + tl.arange(0, BLOCK_M)
        pix_ok = pix < Ho * Wo
        oy = pix // Wo
        ox = pix % Wo
        y, x, modulation = _sample_point(
            off_ptr, mask_ptr, b, og, k, oy, ox, pix_ok, K, KW,
            stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
            so_b, so_c, so_h, so_w, sm_b, sm_c, sm_h, sm_w, HAS_MASK)
        y0, x0, ly, lx, y0_ok, y1_ok, x0_ok, x1_ok = _corners(y, x, H, W, pix_ok)
        cols = _columns(x_ptr + b * sx_b, y0, x0, ly, lx, y0_ok, y1_ok, x0_ok, x1_ok, modulation,
                        chans, chan_ok, sx_c, sx_h, sx_w)
        go = tl.load(grad_out_ptr + b * sg_b + (g * group_out + outs)[:, None] * sg_c
                     + (oy * sg_h + ox * sg_w)[None, :],
                     mask=out_ok[:, None] & pix_ok[None, :], other=0.0)
        acc = dot(go, cols.to(go.dtype), acc, DOT_PRECISION)

    # grad_weight is an fp32 [Cout, Cin/groups, kh*kw] buffer shared by the reduction's slices.
    rows = (g * group_out + outs)[:, None] * group_channels + (chans - g * group_channels)[None, :]
    tl.atomic_add(grad_w_ptr + rows * K + k, acc, mask=out_ok[:, None] & chan_ok[None, :])


# Software-pipelining depth of every kernel. The gathers are the bottleneck, so occupancy matters more
# than deep prefetch; 3 stages would also put the fp32 weight-gradient kernel over an A100's shared
# memory. Block sizes and warps were chosen so that ptxas reports no (or tiny) register spills for
# sm_90 in fp16, fp32 and tf32; they are not tuned by measurement.
_NUM_STAGES = 2


def _geometry(input, offset, weight, stride, padding, dilation):
    """The shape arguments every kernel takes."""
    _, in_channels, height, width = input.shape
    out_channels, group_channels, kh, kw = weight.shape
    og_channels = in_channels // (offset.shape[1] // (2 * kh * kw))
    return dict(
        H=height, W=width,
        Ho=(height + 2 * padding[0] - (dilation[0] * (kh - 1) + 1)) // stride[0] + 1,
        Wo=(width + 2 * padding[1] - (dilation[1] * (kw - 1) + 1)) // stride[1] + 1,
        K=kh * kw, KW=kw, group_channels=group_channels,
        group_out=out_channels // (in_channels // group_channels), og_channels=og_channels,
        unit=math.gcd(group_channels, og_channels),
        stride_h=stride[0], stride_w=stride[1], pad_h=padding[0], pad_w=padding[1],
        dil_h=dilation[0], dil_w=dilation[1])


def _block(n, low, high):
    """A power-of-two block covering n, within [low, high] (tl.dot needs at least 16)."""
    return max(low, min(high, triton.next_power_of_2(n)))


def _dot_precision():
    # fp32 follows torch's matmul setting, as torchvision's GEMM does: TF32 only when allowed.
    return "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def _strides(name, t):
    """The strides of a 4-d tensor as the kernel arguments name_b, name_c, name_h, name_w; 0 for None."""
    return {f"{name}_{dim}": stride for dim, stride in zip("bchw", t.stride() if t is not None else (0,) * 4)}


def _prepare(input, weight):
    """The input channels-last and the weight as [groups, kh*kw, Cin/groups, Cout/groups], the
    layouts the kernels read contiguously."""
    x = input.contiguous(memory_format=torch.channels_last)
    out_channels, group_channels, kh, kw = weight.shape
    groups = input.shape[1] // group_channels
    w = weight.reshape(groups, out_channels // groups, group_channels, kh * kw).permute(0, 3, 2, 1).contiguous()
    return x, w


def deform_conv2d_forward(input, offset, weight, bias, mask, stride, padding, dilation):
    """Forward of flexops.ops.deform_conv2d (arguments already validated)."""
    from flexops.ops._args import new_output

    geo = _geometry(input, offset, weight, stride, padding, dilation)
    batch, out_channels = input.shape[0], weight.shape[0]
    out = new_output(input, (batch, out_channels, geo["Ho"], geo["Wo"]))
    if out.numel() == 0:
        return out
    x, w = _prepare(input, weight)
    groups = out_channels // geo["group_out"]
    block_m, block_n, block_c = 64, _block(geo["group_out"], 16, 128), _block(geo["unit"], 16, 32)
    grid = (batch * triton.cdiv(geo["Ho"] * geo["Wo"], block_m), groups * triton.cdiv(geo["group_out"], block_n))
    # Absent mask and bias get a placeholder pointer that the kernel never reads.
    _deform_conv2d_fwd_kernel[grid](
        x, offset, mask if mask is not None else offset, w, bias if bias is not None else out, out, **geo,
        **_strides("sx", x), **_strides("so", offset), **_strides("sm", mask), **_strides("sy", out),
        HAS_MASK=mask is not None, HAS_BIAS=bias is not None, DOT_PRECISION=_dot_precision(),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_C=block_c, num_stages=_NUM_STAGES)
    return out


def _target_programs(device):
    # Enough programs to fill the GPU a few times over; a handful under the CPU interpreter.
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def deform_conv2d_backward(grad_output, input, offset, weight, mask, stride, padding, dilation):
    """Gradients (input, offset, weight, mask) of flexops.ops.deform_conv2d; grad_input is laid out
    like the forward's output, the others are contiguous; grad_mask is empty without a mask."""
    from flexops.ops._args import new_output, output_memory_format

    geo = _geometry(input, offset, weight, stride, padding, dilation)
    batch, in_channels = input.shape[:2]
    grad_offset = torch.empty_like(offset, memory_format=torch.contiguous_format)
    grad_mask = torch.empty_like(mask, memory_format=torch.contiguous_format) if mask is not None else input.new_empty(0)
    if batch == 0:
        return (new_output(input, input.shape), grad_offset,
                torch.zeros_like(weight, memory_format=torch.contiguous_format), grad_mask)
    x, w = _prepare(input, weight)
    # Without a mask, its pointers are placeholders that the kernels never touch.
    mask_t, grad_mask_t = (mask, grad_mask) if mask is not None else (offset, grad_offset)
    # Both are sums of atomic adds: accumulate in fp32. grad_x is channels-last like x, so the
    # atomics of a channel block are contiguous.
    grad_x = torch.zeros_like(x, dtype=torch.float32)
    grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
    block_o, block_c = _block(geo["group_out"], 16, 64), _block(geo["unit"], 16, 32)
    common = dict(
        **geo,
        **_strides("sx", x), **_strides("so", offset), **_strides("sm", mask), **_strides("sg", grad_output),
        HAS_MASK=mask is not None, DOT_PRECISION=_dot_precision(),
        BLOCK_O=block_o, BLOCK_C=block_c, num_warps=8, num_stages=_NUM_STAGES)

    block_m = 64
    offset_groups = in_channels // geo["og_channels"]
    grid = (batch * triton.cdiv(geo["Ho"] * geo["Wo"], block_m), offset_groups * geo["K"])
    _deform_conv2d_bwd_data_kernel[grid](
        grad_output, x, offset, mask_t, w, grad_x, grad_offset, grad_mask_t,
        **_strides("sgx", grad_x), BLOCK_M=block_m, **common)

    # A smaller pixel tile than above keeps the fp32 (FMA) dot of this kernel from spilling.
    block_m = 32
    groups = in_channels // geo["group_channels"]
    channel_blocks = (geo["group_channels"] // geo["unit"]) * triton.cdiv(geo["unit"], block_c)
    programs = groups * geo["K"] * channel_blocks * triton.cdiv(geo["group_out"], block_o)
    # Split the (image, pixel) reduction only as far as needed to fill the device.
    tiles = batch * triton.cdiv(geo["Ho"] * geo["Wo"], block_m)
    tiles_per_program = triton.cdiv(tiles, triton.cdiv(_target_programs(input.device), programs))
    _deform_conv2d_bwd_weight_kernel[(programs, triton.cdiv(tiles, tiles_per_program))](
        grad_output, x, offset, mask_t, grad_w, B=batch, tiles_per_program=tiles_per_program,
        BLOCK_M=block_m, **common)

    return (grad_x.to(input.dtype, memory_format=output_memory_format(input)), grad_offset,
            grad_w.to(weight.dtype), grad_mask)
