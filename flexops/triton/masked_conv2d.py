"""Channel-masked convolution for all tasks in one launch: an implicit-GEMM convolution driven by
per-task lists of active input and output channels.

One program computes a BLOCK_M x BLOCK_N tile of one task's output (pixels x active output
channels), reducing over K = active input channels * kh * kw in BLOCK_K steps. The channel lists put
each task's active channels first, so a task's K loop runs over its active inputs only and tiles past
its active outputs do no work: the cost follows active-in x active-out per task.

The backward is two more launches built the same way, each over all tasks:

- grad_input: a transposed convolution, per task a tile of (input pixels x active input channels)
  reduced over K = active output channels * kh * kw. Tasks sharing one input image (batch 1) add
  into it with atomics.
- grad_weight: per task a tile of (active output channels x active input channels * kh * kw)
  reduced over output pixels; tasks (and slices of the pixel reduction) add into one fp32 buffer.
"""

import torch
import triton
import triton.language as tl

from flexops.triton._dot import dot
from flexops.triton._im2col import input_tile


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
        x = input_tile(x_image, channel, k, k_ok, oy, ox, m_ok, H, W, sx_c, sx_h, sx_w,
                       stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, KH, KW)
        w_offsets = (out_channel[None, :] * sw_o + channel[:, None] * sw_i + ((k // KW) % KH)[:, None] * sw_h
                     + (k % KW)[:, None] * sw_w)
        w = tl.load(w_ptr + w_offsets, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc = dot(x, w, acc, INPUT_PRECISION)

    if HAS_BIAS:
        acc += tl.load(bias_ptr + out_channel, mask=n_ok, other=0.0).to(tl.float32)[None, :]

    y = y_ptr + task * sy_b + out_channel[None, :] * sy_c + oy[:, None] * sy_h + ox[:, None] * sy_w
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _masked_conv2d_grad_input_kernel(
    grad_y_ptr, w_ptr, grad_x_ptr,
    in_index_ptr, in_count_ptr, out_index_ptr, out_count_ptr,
    H, W, Ho, Wo,
    sgy_b, sgy_c, sgy_h, sgy_w,
    sw_o, sw_i, sw_h, sw_w,
    sgx_b, sgx_c, sgx_h, sgx_w,
    in_row_step, out_row_step, in_channels, out_channels,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    KH: tl.constexpr, KW: tl.constexpr, SHARED_INPUT: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # A tile of one task's grad_input: BLOCK_M input pixels x BLOCK_N of its active input channels.
    tiles_per_image = tl.cdiv(H * W, BLOCK_M)
    task = (tl.program_id(0) // tiles_per_image).to(tl.int64)
    m = (tl.program_id(0) % tiles_per_image) * BLOCK_M + tl.arange(0, BLOCK_M)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    iy = m // W
    ix = m % W
    m_ok = m < H * W

    in_row = task * in_row_step
    out_row = task * out_row_step
    in_count = tl.load(in_count_ptr + in_row)
    n_ok = n < in_count
    in_channel = tl.load(in_index_ptr + in_row * in_channels + n, mask=n_ok, other=0)
    out_count = tl.load(out_count_ptr + out_row)
    # A tile past the task's active inputs skips the reduction; its store is fully masked.
    k_total = tl.where(tl.program_id(1) * BLOCK_N < in_count, out_count * KH * KW, 0)

    grad_y_image = grad_y_ptr + task * sgy_b
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, k_total, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < k_total
        out_channel = tl.load(out_index_ptr + out_row * out_channels + k // (KH * KW), mask=k_ok, other=0)
        ky = (k // KW) % KH
        kx = k % KW
        # Output pixel oy reads input row oy * stride - pad + ky * dil; invert it for this input row.
        # A negative or non-multiple numerator is no output pixel: it is masked before the quotient
        # (whose rounding of negatives differs between GPU and interpreter) is used.
        ty = iy[:, None] + pad_h - ky[None, :] * dil_h
        tx = ix[:, None] + pad_w - kx[None, :] * dil_w
        oy = ty // stride_h
        ox = tx // stride_w
        hit = (m_ok[:, None] & k_ok[None, :] & (ty >= 0) & (tx >= 0)
               & (ty % stride_h == 0) & (tx % stride_w == 0) & (oy < Ho) & (ox < Wo))
        grad_y = tl.load(grad_y_image + out_channel[None, :] * sgy_c + oy * sgy_h + ox * sgy_w, mask=hit, other=0.0)
        w_offsets = out_channel[:, None] * sw_o + in_channel[None, :] * sw_i + ky[:, None] * sw_h + kx[:, None] * sw_w
        w = tl.load(w_ptr + w_offsets, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc = dot(grad_y, w, acc, INPUT_PRECISION)

    grad_x = grad_x_ptr + task * sgx_b + in_channel[None, :] * sgx_c + iy[:, None] * sgx_h + ix[:, None] * sgx_w
    if SHARED_INPUT:
        # Every task adds into the one image (batch stride 0) of an fp32 buffer.
        tl.atomic_add(grad_x, acc, mask=m_ok[:, None] & n_ok[None, :])
    else:
        tl.store(grad_x, acc.to(grad_x_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _masked_conv2d_grad_weight_kernel(
    grad_y_ptr, x_ptr, grad_w_ptr,
    in_index_ptr, in_count_ptr, out_index_ptr, out_count_ptr,
    H, W, Ho, Wo, tiles_per_program,
    sgy_b, sgy_c, sgy_h, sgy_w,
    sx_b, sx_c, sx_h, sx_w,
    sgw_o, sgw_i, sgw_h, sgw_w,
    in_row_step, out_row_step, in_channels, out_channels,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    KH: tl.constexpr, KW: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr,
):
    # A tile of one task's grad_weight: BLOCK_N of its active output channels x BLOCK_K of its
    # (active input channel, ky, kx) columns, summed over tiles_per_program tiles of BLOCK_P pixels.
    out_blocks = tl.cdiv(out_channels, BLOCK_N)
    task = (tl.program_id(0) // out_blocks).to(tl.int64)
    n = (tl.program_id(0) % out_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
    k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)

    in_row = task * in_row_step
    out_row = task * out_row_step
    out_count = tl.load(out_count_ptr + out_row)
    k_count = tl.load(in_count_ptr + in_row) * KH * KW
    n_ok = n < out_count
    k_ok = k < k_count
    out_channel = tl.load(out_index_ptr + out_row * out_channels + n, mask=n_ok, other=0)
    in_channel = tl.load(in_index_ptr + in_row * in_channels + k // (KH * KW), mask=k_ok, other=0)
    ky = (k // KW) % KH
    kx = k % KW

    pixel_tiles = tl.cdiv(Ho * Wo, BLOCK_P)
    first = tl.program_id(2) * tiles_per_program
    # A tile past the task's active outputs or columns skips the reduction; its add is fully masked.
    has_work = (tl.program_id(0) % out_blocks) * BLOCK_N < out_count
    has_work = has_work & (tl.program_id(1) * BLOCK_K < k_count)
    last = tl.where(has_work, tl.minimum(first + tiles_per_program, pixel_tiles), first)

    grad_y_image = grad_y_ptr + task * sgy_b
    x_image = x_ptr + task * sx_b
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for tile in range(first, last):
        p = tile * BLOCK_P + tl.arange(0, BLOCK_P)
        p_ok = p < Ho * Wo
        oy = p // Wo
        ox = p % Wo
        grad_y_offsets = out_channel[:, None] * sgy_c + oy[None, :] * sgy_h + ox[None, :] * sgy_w
        grad_y = tl.load(grad_y_image + grad_y_offsets, mask=n_ok[:, None] & p_ok[None, :], other=0.0)
        iy = oy[:, None] * stride_h - pad_h + ky[None, :] * dil_h
        ix = ox[:, None] * stride_w - pad_w + kx[None, :] * dil_w
        inside = p_ok[:, None] & k_ok[None, :] & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
        x = tl.load(x_image + in_channel[None, :] * sx_c + iy * sx_h + ix * sx_w, mask=inside, other=0.0)
        acc = dot(grad_y, x, acc, INPUT_PRECISION)

    grad_w_offsets = (out_channel[:, None] * sgw_o + in_channel[None, :] * sgw_i
                      + ky[None, :] * sgw_h + kx[None, :] * sgw_w)
    tl.atomic_add(grad_w_ptr + grad_w_offsets, acc, mask=n_ok[:, None] & k_ok[None, :])


def _channel_lists(mask):
    """bool [rows, C] -> (int32 [rows, C] with each row's active channels first, int32 [rows] counts)."""
    order = torch.argsort((~mask).to(torch.uint8), dim=1, stable=True)
    return order.to(torch.int32).contiguous(), mask.sum(1, dtype=torch.int32)


def _dot_precision():
    # fp32 follows torch's convolution rule: TF32 when cuDNN may use it (only fp32 inputs are affected).
    return "tf32" if torch.backends.cudnn.allow_tf32 else "ieee"


def _task_strides(t, batch):
    """The strides of a 4-d tensor read per task: batch stride 0 for one image shared by every task."""
    strides = list(t.stride())
    if batch == 1:
        strides[0] = 0
    return strides


def _stride_args(prefix, dims, strides):
    """Strides as the kernel's keyword arguments: prefix_b, prefix_c, ... for dims "bchw"."""
    return {f"{prefix}_{dim}": stride for dim, stride in zip(dims, strides)}


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
    block_m, block_k = 64, 32
    block_n = max(16, min(64, triton.next_power_of_2(cout)))
    grid = (tasks * triton.cdiv(ho * wo, block_m), triton.cdiv(cout, block_n))
    _masked_conv2d_kernel[grid](
        input, weight, bias, output,
        in_index, in_count, out_index, out_count,
        height, width, ho, wo,
        *_task_strides(input, batch), *weight.stride(), *output.stride(),
        int(in_mask.shape[0] > 1), int(out_mask.shape[0] > 1), in_mask.shape[1], cout,
        *stride, *padding, *dilation,
        KH=kh, KW=kw, HAS_BIAS=has_bias, INPUT_PRECISION=_dot_precision(),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
    )
    return output


def _target_programs(device):
    """Programs enough to fill the GPU a few times over; a handful under the CPU interpreter."""
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def masked_conv2d_backward(grad_output, input, weight, bias, in_mask, out_mask, stride, padding, dilation):
    """Gradients (input, weight, bias) of flexops.ops.masked_conv2d, one launch each for all tasks.

    grad_input is laid out like the forward's output, grad_weight and grad_bias are contiguous;
    grad_bias is empty without a bias. Entries no task uses (inactive channels) get 0.
    """
    from flexops.ops._args import output_memory_format

    batch, cin, height, width = input.shape
    cout, _, kh, kw = weight.shape
    tasks, _, ho, wo = grad_output.shape
    # Several tasks reading one shared image add their gradients into it, so it is accumulated in
    # fp32 with atomics; the order of those adds, and so the rounding, is not deterministic on GPU.
    shared_input = batch == 1 and tasks > 1
    grad_input = torch.empty(input.shape, dtype=torch.float32 if shared_input else input.dtype,
                             device=input.device, memory_format=output_memory_format(input)).zero_()
    # Every task adds into the one weight, likewise in fp32 and in no fixed order on GPU.
    grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
    if bias is None:
        grad_bias = weight.new_empty(0)
    else:
        # Gradient that reaches an inactive output channel is dropped: the forward zeroed it.
        active_grad = torch.where(out_mask[:, :, None, None], grad_output, 0)
        grad_bias = active_grad.sum((0, 2, 3), dtype=torch.float32).to(bias.dtype)

    if grad_output.numel() > 0:
        in_index, in_count = _channel_lists(in_mask)
        out_index, out_count = _channel_lists(out_mask)
        common = dict(
            H=height, W=width, Ho=ho, Wo=wo,
            in_row_step=int(in_mask.shape[0] > 1), out_row_step=int(out_mask.shape[0] > 1),
            in_channels=cin, out_channels=cout,
            stride_h=stride[0], stride_w=stride[1], pad_h=padding[0], pad_w=padding[1],
            dil_h=dilation[0], dil_w=dilation[1],
            KH=kh, KW=kw, INPUT_PRECISION=_dot_precision(),
        )

        if grad_input.numel() > 0:
            block_m, block_k = 64, 32
            block_n = max(16, min(64, triton.next_power_of_2(cin)))
            grid = (tasks * triton.cdiv(height * width, block_m), triton.cdiv(cin, block_n))
            _masked_conv2d_grad_input_kernel[grid](
                grad_output, weight, grad_input, in_index, in_count, out_index, out_count,
                **_stride_args("sgy", "bchw", grad_output.stride()),
                **_stride_args("sw", "oihw", weight.stride()),
                **_stride_args("sgx", "bchw", _task_strides(grad_input, batch)),
                SHARED_INPUT=shared_input, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, **common,
            )

        if grad_weight.numel() > 0:
            block_p = 32
            block_n = max(16, min(64, triton.next_power_of_2(cout)))
            block_k = max(16, min(64, triton.next_power_of_2(cin * kh * kw)))
            programs = tasks * triton.cdiv(cout, block_n) * triton.cdiv(cin * kh * kw, block_k)
            # Split the pixel reduction only as far as needed to fill the device.
            pixel_tiles = triton.cdiv(ho * wo, block_p)
            tiles_per_program = triton.cdiv(pixel_tiles, triton.cdiv(_target_programs(input.device), programs))
            grid = (tasks * triton.cdiv(cout, block_n), triton.cdiv(cin * kh * kw, block_k),
                    triton.cdiv(pixel_tiles, tiles_per_program))
            _masked_conv2d_grad_weight_kernel[grid](
                grad_output, input, grad_weight, in_index, in_count, out_index, out_count,
                tiles_per_program=tiles_per_program,
                **_stride_args("sgy", "bchw", grad_output.stride()),
                **_stride_args("sx", "bchw", _task_strides(input, batch)),
                **_stride_args("sgw", "oihw", grad_weight.stride()),
                BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_P=block_p, **common,
            )

    return grad_input.to(input.dtype), grad_weight.to(weight.dtype), grad_bias
