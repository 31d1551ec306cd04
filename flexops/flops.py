"""FLOP counting for the flexops ops.

Two conventions, one formula per op:
- fvcore handles count multiply-accumulates (fvcore's convention: a conv's MACs, bias not counted);
  `count(model, *inputs)` runs fvcore's FlopCountAnalysis with them.
- torch.utils.flop_counter formulas count FLOPs (2 per MAC), so FlopCounterMode sees flexops ops.
"""

import math

import torch
from torch.utils.flop_counter import register_flop_formula


def tunable_conv2d_macs(input_shape, weight_shape, bias_shape, alpha_shape, out_shape):
    """The convolution with the blended kernel, plus blending the p kernels once per alpha row."""
    p = weight_shape[0]
    kernel_numel = math.prod(weight_shape[1:])
    per_output = math.prod(weight_shape[2:])  # Cin/groups * kh * kw
    rows = 1 if len(alpha_shape) == 1 else alpha_shape[0]
    return math.prod(out_shape) * per_output + rows * p * kernel_numel


def deform_conv2d_macs(input_shape, offset_shape, weight_shape, bias_shape, mask_shape, out_shape):
    """The convolution over sampled columns, plus building them: 4 MACs per bilinear sample (one
    per corner) and 1 more when a mask scales it."""
    batch, in_channels = input_shape[:2]
    points = math.prod(weight_shape[2:])
    samples = batch * in_channels * points * math.prod(out_shape[2:])
    return math.prod(out_shape) * math.prod(weight_shape[1:]) + samples * (4 + (mask_shape is not None))


# op name -> (number of leading tensor arguments the formula takes, MAC formula)
_MACS = {
    "tunable_conv2d": (4, tunable_conv2d_macs),
    "tunable_conv2d_triton": (4, tunable_conv2d_macs),
    "deform_conv2d": (5, deform_conv2d_macs),
    "deform_conv2d_triton": (5, deform_conv2d_macs),
}


def _fvcore_handle(num_tensors, macs):
    def handle(inputs, outputs):
        from fvcore.nn.jit_handles import get_shape

        shapes = [get_shape(v) for v in inputs[:num_tensors]]
        return macs(*shapes, get_shape(outputs[0]))

    return handle


FVCORE_HANDLES = {f"flexops::{name}": _fvcore_handle(n, macs) for name, (n, macs) in _MACS.items()}


def count(model, *inputs):
    """Total MACs of model(*inputs) by fvcore, flexops ops included."""
    from fvcore.nn import FlopCountAnalysis

    analysis = FlopCountAnalysis(model, inputs).set_op_handle(**FVCORE_HANDLES)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return analysis.total()


def _register_flop_counter_formulas():
    for name, (num_tensors, macs) in _MACS.items():

        def formula(*args, out_shape, _n=num_tensors, _macs=macs, **kwargs):
            return 2 * _macs(*args[:_n], out_shape)

        register_flop_formula(getattr(torch.ops.flexops, name))(formula)


_register_flop_counter_formulas()
