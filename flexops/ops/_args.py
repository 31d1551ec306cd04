"""Argument normalisation and validation shared by the flexops ops.

Every error names the argument and says what was expected, so a user sees the mistake in their own
terms instead of a failure deep inside a kernel.
"""

import torch


def pair(value, name, minimum):
    """An int or a pair of ints, as (h, w), each at least `minimum`."""
    if isinstance(value, int):
        value = (value, value)
    value = tuple(value)
    if len(value) != 2 or not all(isinstance(v, int) for v in value):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(value) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return value


def conv_params(stride, padding, dilation):
    """stride, padding and dilation as (h, w) pairs, validated."""
    return pair(stride, "stride", 1), pair(padding, "padding", 0), pair(dilation, "dilation", 1)


def check_tensor(name, tensor, dim, like=None):
    """A tensor of rank `dim` (None: any); with `like`, on its device and of its dtype."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if dim is not None and tensor.dim() != dim:
        raise ValueError(f"{name} must have {dim} dimensions, got shape {tuple(tensor.shape)}")
    if like is not None:
        if tensor.device != like.device:
            raise ValueError(f"{name} is on {tensor.device} but input is on {like.device}")
        if tensor.dtype != like.dtype:
            raise ValueError(f"{name} has dtype {tensor.dtype} but input has dtype {like.dtype}")


def check_floating(name, tensor):
    if not tensor.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {tensor.dtype}")


def conv_output_size(size, kernel, stride, padding, dilation, name="input"):
    """Output (h, w) of a convolution; an error when the kernel does not fit."""
    out = []
    for n, k, s, p, d in zip(size, kernel, stride, padding, dilation):
        extent = d * (k - 1) + 1
        if n + 2 * p < extent:
            raise ValueError(
                f"{name} of spatial size {tuple(size)} with padding {tuple(padding)} is smaller "
                f"than the dilated kernel {tuple(kernel)} (dilation {tuple(dilation)})"
            )
        out.append((n + 2 * p - extent) // s + 1)
    return tuple(out)


def output_memory_format(input):
    """Mirror of csrc/common/layout.h: channels-last in gives channels-last out."""
    if input.is_contiguous(memory_format=torch.channels_last) and not input.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def new_output(input, shape):
    """An uninitialised tensor of `shape` like input, laid out by output_memory_format."""
    return torch.empty(shape, dtype=input.dtype, device=input.device, memory_format=output_memory_format(input))
