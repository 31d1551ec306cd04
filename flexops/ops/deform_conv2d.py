"""deform_conv2d: modulated deformable convolution (DCNv2; DCNv1 when mask is None).

Exactly torchvision.ops.deform_conv2d's signature, layouts and numerics: offset [B, 2*og*kh*kw, Ho, Wo]
holds (dy, dx) pairs per offset group and kernel point, mask [B, og*kh*kw, Ho, Wo] scales each
sample, sampling is bilinear with zeros outside the image, groups come from weight's shape.
"""

import torch

from flexops import reference
from flexops.ops import _args, _register


@_args.fx_leaf
def deform_conv2d(input, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None):
    """Deformable 2-D convolution.

    Args:
        input: [B, Cin, H, W].
        offset: [B, 2 * offset_groups * kh * kw, Ho, Wo], (dy, dx) per offset group and kernel point.
        weight: [Cout, Cin / groups, kh, kw].
        bias: [Cout] or None.
        stride, padding, dilation: int or (h, w) pair.
        mask: [B, offset_groups * kh * kw, Ho, Wo] or None (DCNv1).

    Returns:
        [B, Cout, Ho, Wo].

    >>> y = deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)   # as torchvision.ops.deform_conv2d
    """
    stride, padding, dilation = _args.conv_params(stride, padding, dilation)
    input, offset, weight, bias, mask = _register.autocast(input, offset, weight, bias, mask)
    _check(input, offset, weight, bias, mask, stride, padding, dilation)
    _, kernel = _OP.choose(input)
    return kernel(input, offset, weight, bias, mask, stride, padding, dilation)


def _check(input, offset, weight, bias, mask, stride, padding, dilation):
    # torchvision's order, so both report the same first error: ranks, then groups and channels,
    # then shapes, then dtypes (torchvision finds those last, in its kernel), then bias. Devices
    # come first, as torchvision's CUDA kernel checks them before anything else.
    _args.check_tensor("input", input, None)
    for name, tensor in (("offset", offset), ("mask", mask), ("weight", weight), ("bias", bias)):
        if tensor is not None or name in ("offset", "weight"):  # mask and bias are optional
            _args.check_tensor(name, tensor, None)
            if tensor.device != input.device:
                raise _args.ArgumentError(f"{name} is on {tensor.device} but input is on {input.device}")
    for name, tensor in (("input", input), ("offset", offset), ("mask", mask), ("weight", weight)):
        if tensor is not None:
            _args.check_tensor(name, tensor, 4)
    batch, in_channels = input.shape[:2]
    out_channels, cin_per_group, kh, kw = weight.shape
    if cin_per_group == 0 or in_channels % cin_per_group:
        raise _args.ArgumentError(
            f"weight's second dimension ({cin_per_group}) must divide input channels ({in_channels}): "
            "weight is [Cout, Cin / groups, kh, kw]"
        )
    groups = in_channels // cin_per_group
    if out_channels % groups:
        raise _args.ArgumentError(f"output channels ({out_channels}) must be divisible by groups ({groups})")
    _args.check_kernel((kh, kw))
    # The first two messages carry torchvision's phrases ("the shape of the offset", "mask.shape[1] is
    # not valid"), which code and tests written for torchvision.ops.deform_conv2d match.
    points = kh * kw
    if offset.shape[1] % (2 * points) or offset.shape[1] == 0:
        raise _args.ArgumentError(
            f"the shape of the offset is not valid: offset.shape[1] must be 2 * offset_groups * kh * kw, "
            f"a nonzero multiple of {2 * points} (kernel {kh}x{kw}); got offset of shape {list(offset.shape)}"
        )
    offset_groups = offset.shape[1] // (2 * points)
    if in_channels % offset_groups:
        raise _args.ArgumentError(f"offset groups ({offset_groups}) must divide input channels ({in_channels})")
    out_size = _args.conv_output_size(input.shape[2:], (kh, kw), stride, padding, dilation)
    _args.check_output_fits((batch, out_channels, *out_size))
    expected = (batch, 2 * offset_groups * points, *out_size)
    if tuple(offset.shape) != expected:
        raise _args.ArgumentError(
            f"offset must be [B, 2*og*kh*kw, Ho, Wo] = {list(expected)}; got {list(offset.shape)}"
        )
    expected = (batch, offset_groups * points, *out_size)
    if mask is not None and tuple(mask.shape) != expected:
        channels = "" if mask.shape[1] == expected[1] else "mask.shape[1] is not valid: "
        raise _args.ArgumentError(
            f"{channels}mask must be [B, og*kh*kw, Ho, Wo] = {list(expected)} (og = {offset_groups} offset groups, "
            f"from offset); got {list(mask.shape)}"
        )
    _args.check_floating("input", input)
    for name, tensor in (("weight", weight), ("offset", offset), ("mask", mask), ("bias", bias)):
        if tensor is not None:
            _args.check_tensor(name, tensor, None, like=input)
    if bias is not None and tuple(bias.shape) != (out_channels,):
        raise _args.ArgumentError(f"bias must be [Cout] = [{out_channels}]; got {list(bias.shape)}")


def _contiguous_like(t):
    return torch.empty_like(t, memory_format=torch.contiguous_format)


def _fake(input, offset, weight, bias, mask, stride, padding, dilation):
    return _args.new_output(input, (input.shape[0], weight.shape[0], *offset.shape[2:]))


def _fake_backward(grad_output, input, offset, weight, mask, stride, padding, dilation):
    grad_mask = input.new_empty(0) if mask is None else _contiguous_like(mask)
    return _args.new_output(input, input.shape), _contiguous_like(offset), _contiguous_like(weight), grad_mask


def _setup_context(ctx, inputs, output):
    input, offset, weight, bias, mask, stride, padding, dilation = inputs
    ctx.save_for_backward(input, offset, weight, mask)
    ctx.has_bias = bias is not None
    ctx.conv = (stride, padding, dilation)


def _backward(ctx, grad_output, backward_op):
    input, offset, weight, mask = ctx.saved_tensors
    grad_input, grad_offset, grad_weight, grad_mask = backward_op(grad_output, input, offset, weight, mask, *ctx.conv)
    grad_bias = grad_output.sum((0, 2, 3)) if ctx.has_bias else None
    return grad_input, grad_offset, grad_weight, grad_bias, None if mask is None else grad_mask, None, None, None


def _reference(input, offset, weight, bias, mask, stride, padding, dilation):
    """The reference, given the schema's argument order (mask after bias)."""
    return reference.deform_conv2d(input, offset, weight, bias, stride, padding, dilation, mask)


_OP = _register.Op(
    "deform_conv2d",
    _reference,
    _fake,
    _fake_backward,
    _setup_context,
    _backward,
    "deform_conv2d_forward",
    "deform_conv2d_backward",
)
