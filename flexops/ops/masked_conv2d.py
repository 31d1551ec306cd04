"""masked_conv2d: per-task channel-masked convolution (TASNet's task-specific layers).

Each task convolves only its active input channels into its active output channels; the others cost
nothing. Kim et al., "Searching for Controllable Image Restoration Networks", ICCV 2021: the
task-agnostic layers run once per image and M task vectors share their feature map, so an input of
batch 1 with M mask rows gives M outputs.
"""

import torch

from flexops import reference
from flexops.ops import _args, _register


@_args.fx_leaf
def masked_conv2d(input, weight, bias=None, in_mask=None, out_mask=None, stride=1, padding=0, dilation=1):
    """Channel-masked 2-D convolution.

    Args:
        input: [B, Cin, H, W].
        weight: [Cout, Cin, kh, kw].
        bias: [Cout] or None.
        in_mask: [Cin] or [M, Cin], bool or 0/1 (nonzero is active), or None (all active). Inactive
            input channels count as zero whatever the input holds.
        out_mask: [Cout] or [M, Cout], likewise. Inactive output channels are exactly zero.
        stride, padding, dilation: int or (h, w) pair, as torch.nn.functional.conv2d.

    With M mask rows the input batch is 1 (one feature map shared by the M tasks) or M (one sample
    per task). Masks get no gradient.

    Returns:
        [max(B, M), Cout, Ho, Wo].

    >>> y = masked_conv2d(x, weight, bias, in_mask, out_mask, padding=1)   # x [1, 64, H, W], masks [27, 64]
    """
    stride, padding, dilation = _args.conv_params(stride, padding, dilation)
    input, weight, bias = _register.autocast(input, weight, bias)
    in_mask, out_mask = _check(input, weight, bias, in_mask, out_mask, stride, padding, dilation)
    _, kernel = _OP.choose(input)
    return kernel(input, weight, bias, in_mask, out_mask, stride, padding, dilation)


def _mask(mask, name, channels, input):
    """The mask as bool [rows, channels], detached: masks select work, they are not learned here."""
    if mask is None:
        return torch.ones(1, channels, dtype=torch.bool, device=input.device)
    _args.check_tensor(name, mask, None)
    if mask.device != input.device:
        raise _args.ArgumentError(f"{name} is on {mask.device} but input is on {input.device}")
    if mask.dim() not in (1, 2) or mask.shape[-1] != channels:
        raise _args.ArgumentError(f"{name} must be [{channels}] or [M, {channels}]; got {list(mask.shape)}")
    return mask.detach().reshape(-1, channels) != 0


def _check(input, weight, bias, in_mask, out_mask, stride, padding, dilation):
    """Validates the arguments; returns the masks as bool [rows, C]."""
    _args.check_tensor("input", input, 4)
    _args.check_floating("input", input)
    _args.check_tensor("weight", weight, 4, like=input)
    batch, in_channels = input.shape[:2]
    out_channels, _, kh, kw = weight.shape
    if weight.shape[1] != in_channels:
        raise _args.ArgumentError(
            f"weight must be [Cout, Cin, kh, kw] = [{out_channels}, {in_channels}, kh, kw] for input of "
            f"{in_channels} channels; got {list(weight.shape)}"
        )
    if bias is not None:
        _args.check_tensor("bias", bias, 1, like=input)
        if bias.shape[0] != out_channels:
            raise _args.ArgumentError(f"bias must be [Cout] = [{out_channels}]; got {list(bias.shape)}")
    in_mask = _mask(in_mask, "in_mask", in_channels, input)
    out_mask = _mask(out_mask, "out_mask", out_channels, input)
    tasks = max(in_mask.shape[0], out_mask.shape[0])
    if in_mask.shape[0] not in (1, tasks) or out_mask.shape[0] not in (1, tasks):
        raise _args.ArgumentError(
            f"in_mask and out_mask must have the same number of task rows M (or one of them a single row); "
            f"got in_mask {in_mask.shape[0]} and out_mask {out_mask.shape[0]} rows"
        )
    if tasks > 1 and batch not in (1, tasks):
        raise _args.ArgumentError(
            f"input batch must be 1 (shared by the M = {tasks} tasks) or M = {tasks} (one sample per task); "
            f"got input of shape {list(input.shape)}"
        )
    out_size = _args.conv_output_size(input.shape[2:], (kh, kw), stride, padding, dilation)
    _args.check_output_fits((tasks if tasks > 1 else batch, out_channels, *out_size))
    return in_mask, out_mask


def _fake(input, weight, bias, in_mask, out_mask, stride, padding, dilation):
    tasks = max(in_mask.shape[0], out_mask.shape[0])
    size = _args.conv_output_size(input.shape[2:], weight.shape[2:], stride, padding, dilation)
    return _args.new_output(input, (tasks if tasks > 1 else input.shape[0], weight.shape[0], *size))


def _fake_backward(grad_output, input, weight, bias, in_mask, out_mask, stride, padding, dilation):
    grad_bias = weight.new_empty(0) if bias is None else torch.empty_like(bias, memory_format=torch.contiguous_format)
    return (
        _args.new_output(input, input.shape),
        torch.empty_like(weight, memory_format=torch.contiguous_format),
        grad_bias,
    )


def _setup_context(ctx, inputs, output):
    input, weight, bias, in_mask, out_mask, stride, padding, dilation = inputs
    ctx.save_for_backward(input, weight, bias, in_mask, out_mask)
    ctx.conv = (stride, padding, dilation)


def _backward(ctx, grad_output, backward_op):
    input, weight, bias, in_mask, out_mask = ctx.saved_tensors
    grad_input, grad_weight, grad_bias = backward_op(grad_output, input, weight, bias, in_mask, out_mask, *ctx.conv)
    return grad_input, grad_weight, None if bias is None else grad_bias, None, None, None, None, None


# Each forward gets the backward of its own backend: the compiled one (CPU: per-task compact
# convolutions; CUDA: one launch per gradient), or the Triton kernels driven by the same channel
# lists as the Triton forward.
_OP = _register.Op(
    "masked_conv2d",
    reference.masked_conv2d,
    _fake,
    _fake_backward,
    _setup_context,
    _backward,
    "masked_conv2d",
    "masked_conv2d_backward",
)
