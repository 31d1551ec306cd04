"""tunable_conv2d: p kernels blended by alpha, then one convolution.

y_b = conv2d(x_b, sum_i alpha_bi W_i) + sum_i alpha_bi b_i (Maggioni et al., "Tunable Convolutions
with Parametric Multi-Loss Optimization", CVPR 2023).
"""

import torch

from flexops import reference
from flexops.ops import _args, _register


@_args.fx_leaf
def tunable_conv2d(input, weight, bias, alpha, stride=1, padding=0, dilation=1, groups=1):
    """Tunable 2-D convolution.

    Args:
        input: [B, Cin, H, W].
        weight: [p, Cout, Cin / groups, kh, kw], the p kernels.
        bias: [p, Cout] or None.
        alpha: [p] shared by the batch, or [B, p] one row per sample.
        stride, padding, dilation: int or (h, w) pair, as torch.nn.functional.conv2d.
        groups: int, as torch.nn.functional.conv2d.

    Returns:
        [B, Cout, Ho, Wo].

    >>> y = tunable_conv2d(x, weight, bias, torch.tensor([0.3, 0.7]), padding=1)   # weight [2, Cout, Cin, 3, 3]
    """
    stride, padding, dilation = _args.conv_params(stride, padding, dilation)
    input, weight, bias, alpha = _register.autocast(input, weight, bias, alpha)
    groups = _check(input, weight, bias, alpha, stride, padding, dilation, groups)
    return _run(input, weight, bias, alpha, stride, padding, dilation, groups)


def tunable_conv2d_unchecked(input, weight, bias, alpha, stride, padding, dilation, groups):
    """tunable_conv2d on arguments that are already known to be valid, stride, padding and dilation
    given as (h, w) pairs: the backend's kernel without the argument checks.

    For layers inside a network that validated its input and omega once (`flexops.nn.tunable.Alphas`):
    the checks cost more than a small layer's convolution. A shape error still surfaces, as the
    platform convolution's RuntimeError. Under autocast the arguments are cast as the checked op's are.
    """
    input, weight, bias, alpha = _register.autocast(input, weight, bias, alpha)
    return _run(input, weight, bias, alpha, stride, padding, dilation, groups)


def _run(input, weight, bias, alpha, stride, padding, dilation, groups):
    """The chosen backend's kernel on arguments already cast for autocast."""
    _, kernel = _OP.choose(input)
    return kernel(input, weight, bias, alpha, stride, padding, dilation, groups)


def _check(input, weight, bias, alpha, stride, padding, dilation, groups):
    """Validates the arguments; returns groups as an int."""
    _args.check_tensor("input", input, 4)
    _args.check_floating("input", input)
    _args.check_tensor("weight", weight, 5, like=input)
    _args.check_tensor("alpha", alpha, None, like=input)
    p, cout, cin_per_group, kh, kw = weight.shape
    groups = _args.positive_int(groups, "groups")
    if input.shape[1] % groups or cout % groups:
        raise _args.ArgumentError(
            f"groups={groups} must divide input channels ({input.shape[1]}) and output channels ({cout})"
        )
    if cin_per_group * groups != input.shape[1]:
        raise _args.ArgumentError(
            f"weight must be [p, Cout, Cin/groups, kh, kw] = [p, {cout}, {input.shape[1] // groups}, kh, kw] "
            f"for input of {input.shape[1]} channels and groups={groups}; got {tuple(weight.shape)}"
        )
    if p < 1:
        raise _args.ArgumentError("weight must hold at least one kernel (p >= 1)")
    if alpha.shape not in ((p,), (input.shape[0], p)):
        raise _args.ArgumentError(
            f"alpha must be [p] = [{p}] or [B, p] = [{input.shape[0]}, {p}]; got {tuple(alpha.shape)}"
        )
    if bias is not None:
        _args.check_tensor("bias", bias, 2, like=input)
        if bias.shape != (p, cout):
            raise _args.ArgumentError(f"bias must be [p, Cout] = [{p}, {cout}] or None; got {tuple(bias.shape)}")
    out_size = _args.conv_output_size(input.shape[2:], (kh, kw), stride, padding, dilation)
    _args.check_output_fits((input.shape[0], cout, *out_size))
    return groups


def _output_like(input, weight, alpha, stride, padding, dilation):
    size = _args.conv_output_size(input.shape[2:], weight.shape[3:], stride, padding, dilation)
    return _args.new_output(input, (input.shape[0], weight.shape[1], *size))


def _fake(input, weight, bias, alpha, stride, padding, dilation, groups):
    return _output_like(input, weight, alpha, stride, padding, dilation)


def _fake_backward(grad_output, input, weight, bias, alpha, stride, padding, dilation, groups):
    grad_input = _args.new_output(input, input.shape)
    grad_bias = weight.new_empty(0) if bias is None else torch.empty_like(bias, memory_format=torch.contiguous_format)
    return (
        grad_input,
        torch.empty_like(weight, memory_format=torch.contiguous_format),
        grad_bias,
        torch.empty_like(alpha, memory_format=torch.contiguous_format),
    )


def _setup_context(ctx, inputs, output):
    input, weight, bias, alpha, stride, padding, dilation, groups = inputs
    ctx.save_for_backward(input, weight, bias, alpha)
    ctx.conv = (stride, padding, dilation, groups)


def _backward(ctx, grad_output, backward_op):
    input, weight, bias, alpha = ctx.saved_tensors
    grad_input, grad_weight, grad_bias, grad_alpha = backward_op(grad_output, input, weight, bias, alpha, *ctx.conv)
    return grad_input, grad_weight, None if bias is None else grad_bias, grad_alpha, None, None, None, None


# The Triton forward kernel shares the compiled backward: gradients of the blended kernel through
# cuDNN / oneDNN convolution backward, projected onto the p kernels and alpha.
_OP = _register.Op(
    "tunable_conv2d", reference.tunable_conv2d, _fake, _fake_backward, _setup_context, _backward, "tunable_conv2d"
)
