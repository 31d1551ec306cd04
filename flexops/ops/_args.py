"""Argument normalisation and validation shared by the flexops ops.

Every error names the argument and says what was expected, so a user sees the mistake in their own
terms instead of a failure deep inside a kernel. The errors are ArgumentError: code written for
torchvision's ops (`except RuntimeError`) and code written for flexops' first releases (`except
ValueError`) both catch them.
"""

import functools
import math
import numbers

import torch
import torch.fx


class ArgumentError(ValueError, RuntimeError):
    """A flexops op was called with an argument of the wrong shape, value, device or dtype."""


class ArgumentTypeError(ArgumentError, TypeError):
    """An argument that must be a tensor is not one (still caught as TypeError, as before)."""


def fx_leaf(op):
    """Makes `op` one call node under torch.fx.symbolic_trace, however it is reached.

    torch.fx.wrap patches one module's global name only; a user's `from flexops.ops import op` or a
    flexops layer would still call the original and reach the argument checks with FX proxies. This
    records the call on the tracer instead when an argument is a proxy; the graph then calls `op`
    with real tensors, checks included.
    """

    @functools.wraps(op)
    def leaf(*args, **kwargs):
        proxy = _first_proxy(args, kwargs)
        if proxy is not None:
            return _record(proxy, leaf, args, kwargs)
        return op(*args, **kwargs)

    return leaf


def fx_leaf_layer(forward):
    """Makes a layer one call_module node when torch.fx traces a module that holds it, as torch.nn's
    own layers are: torchvision's feature extractor, for one, then sees it as a single leaf. Traced
    as the root module itself, its forward is traced through (the ops in it are fx_leaf nodes).
    """

    @functools.wraps(forward)
    def leaf(self, *args, **kwargs):
        proxy = _first_proxy(args, kwargs)
        if proxy is None or proxy.tracer.root is self:
            return forward(self, *args, **kwargs)
        tracer = proxy.tracer
        return tracer.create_proxy("call_module", tracer.path_of_module(self), args, kwargs)

    return leaf


_Proxy = torch.fx.Proxy


def _first_proxy(args, kwargs):
    """The first torch.fx Proxy among the arguments, or None (the call is not being traced)."""
    for value in args:
        if isinstance(value, _Proxy):
            return value
    if kwargs:
        for value in kwargs.values():
            if isinstance(value, _Proxy):
                return value
    return None


def _record(proxy, op, args, kwargs):
    """The call op(*args, **kwargs) as a node of proxy's graph, as torch.fx.wrap records one."""
    result = proxy.tracer.create_proxy("call_function", op, args, kwargs)
    result.node.meta["is_wrapped"] = True
    return result


# Sizes, strides and paddings beyond this overflow the kernels' int64 index arithmetic.
INT64_MAX = 2**63 - 1


def integer(value):
    """Whether value is an int (numpy's too) and not a bool, which Python counts as one."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def positive_int(value, name):
    """value as an int, once it is an int of at least 1."""
    if not integer(value) or value < 1:
        raise ArgumentError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def pair(value, name, minimum):
    """An int or a pair of ints, as (h, w), each at least `minimum`."""
    if integer(value):
        value = (value, value)
    if not isinstance(value, (tuple, list)) or len(value) != 2 or not all(integer(v) for v in value):
        raise ArgumentError(f"{name} must be an int or a pair of ints (h, w), got {value!r}")
    value = (int(value[0]), int(value[1]))
    if min(value) < minimum:
        raise ArgumentError(f"{name} must be >= {minimum}, got {value!r}")
    if max(value) > INT64_MAX:
        raise ArgumentError(f"{name} must be below 2**63, got {value!r}")
    return value


def conv_params(stride, padding, dilation):
    """stride, padding and dilation as (h, w) pairs, validated."""
    return pair(stride, "stride", 1), pair(padding, "padding", 0), pair(dilation, "dilation", 1)


def check_tensor(name, tensor, dim, like=None):
    """A tensor of rank `dim` (None: any); with `like`, on its device and of its dtype."""
    if not isinstance(tensor, torch.Tensor):
        raise ArgumentTypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if dim is not None and tensor.dim() != dim:
        raise ArgumentError(f"{name} must have {dim} dimensions, got shape {tuple(tensor.shape)}")
    if like is not None:
        if tensor.device != like.device:
            raise ArgumentError(f"{name} is on {tensor.device} but input is on {like.device}")
        if tensor.dtype != like.dtype:
            raise ArgumentError(f"{name} has dtype {tensor.dtype} but input has dtype {like.dtype}")


def check_floating(name, tensor):
    if not tensor.is_floating_point():
        raise ArgumentError(f"{name} must be a floating-point tensor, got {tensor.dtype}")


def check_kernel(kernel):
    if min(kernel) < 1:
        raise ArgumentError(f"the kernel must be at least 1x1, got {tuple(kernel)} (weight's last two dimensions)")


def conv_output_size(size, kernel, stride, padding, dilation, name="input"):
    """Output (h, w) of a convolution; an error when the kernel does not fit or the sizes overflow."""
    check_kernel(kernel)
    out = []
    for n, k, s, p, d in zip(size, kernel, stride, padding, dilation):
        extent = d * (k - 1) + 1
        if n + 2 * p > INT64_MAX or extent > INT64_MAX:
            raise ArgumentError(
                f"padding {tuple(padding)} and dilation {tuple(dilation)} are too large: {name} of spatial size "
                f"{tuple(size)}, padded, and the dilated kernel {tuple(kernel)} must each span fewer than 2**63 pixels"
            )
        if n + 2 * p < extent:
            raise ArgumentError(
                f"{name} of spatial size {tuple(size)} with padding {tuple(padding)} is smaller "
                f"than the dilated kernel {tuple(kernel)} (dilation {tuple(dilation)})"
            )
        out.append((n + 2 * p - extent) // s + 1)
    return tuple(out)


def check_output_fits(shape):
    """An error when a tensor of `shape` (the output) would have 2**63 elements or more."""
    if math.prod(shape) > INT64_MAX:
        raise ArgumentError(
            f"the output would be {list(shape)}, {math.prod(shape):.3g} elements, more than a tensor can hold "
            "(2**63 - 1): check padding, dilation and the input size"
        )


def output_memory_format(input):
    """Mirror of csrc/common/layout.h: channels-last in gives channels-last out."""
    if input.is_contiguous(memory_format=torch.channels_last) and not input.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def new_output(input, shape):
    """An uninitialised tensor of `shape` like input, laid out by output_memory_format."""
    return torch.empty(shape, dtype=input.dtype, device=input.device, memory_format=output_memory_format(input))
