"""FLOP counting for the flexops ops.

Two conventions, one formula per op:
- fvcore handles count multiply-accumulates (fvcore's convention: a conv's MACs, bias not counted);
  `count(model, *inputs)` runs fvcore's FlopCountAnalysis with them.
- torch.utils.flop_counter formulas count FLOPs (2 per MAC), so FlopCounterMode sees flexops ops.

masked_conv2d's cost depends on its masks' values, not only on shapes. FlopCounterMode hands the
formula the tensors themselves; fvcore's traced graph holds no values, so `count` records the masks
of every masked_conv2d call in one eager run first and the handle takes them in call order.
"""

import math

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import register_flop_formula

_MASKED_OPS = ("masked_conv2d", "masked_conv2d_triton")


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


def masked_conv2d_macs(weight_shape, in_mask, out_mask, out_shape):
    """Only active input x active output channel pairs, per task (bias not counted).

    in_mask, out_mask: bool [rows, C] as the op receives them; a single row applies to every task.
    """
    pairs = in_mask.sum(1, dtype=torch.int64) * out_mask.sum(1, dtype=torch.int64)  # per mask row
    tasks_per_row = out_shape[0] if pairs.numel() == 1 else 1
    return int(pairs.sum()) * tasks_per_row * math.prod(weight_shape[2:]) * math.prod(out_shape[2:])


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


# (in_mask, out_mask) of the masked_conv2d calls of the run `count` is analysing, in call order.
_recorded_masks = []


class _RecordMasks(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "flexops" and func.__name__.split(".")[0] in _MASKED_OPS:
            _recorded_masks.append((args[3].clone(), args[4].clone()))
        return func(*args, **(kwargs or {}))


def _masked_fvcore_handle(inputs, outputs):
    from fvcore.nn.jit_handles import get_shape

    if not _recorded_masks:
        raise RuntimeError(
            "flexops::masked_conv2d's MACs depend on its masks, which fvcore's trace does not hold: "
            "count with flexops.flops.count(model, *inputs)"
        )
    in_mask, out_mask = _recorded_masks.pop(0)
    return masked_conv2d_macs(get_shape(inputs[1]), in_mask, out_mask, get_shape(outputs[0]))


FVCORE_HANDLES = {f"flexops::{name}": _fvcore_handle(n, macs) for name, (n, macs) in _MACS.items()}
FVCORE_HANDLES.update({f"flexops::{name}": _masked_fvcore_handle for name in _MASKED_OPS})


def count(model, *inputs):
    """Total MACs of model(*inputs) by fvcore, flexops ops included."""
    from fvcore.nn import FlopCountAnalysis

    with torch.no_grad(), _RecordMasks():
        model(*inputs)
    try:
        analysis = FlopCountAnalysis(model, inputs).set_op_handle(**FVCORE_HANDLES)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        return analysis.total()
    finally:
        _recorded_masks.clear()


def _register_flop_counter_formulas():
    for name, (num_tensors, macs) in _MACS.items():

        def formula(*args, out_shape, _n=num_tensors, _macs=macs, **kwargs):
            return 2 * _macs(*args[:_n], out_shape)

        register_flop_formula(getattr(torch.ops.flexops, name))(formula)

    def masked_formula(input, weight, bias, in_mask, out_mask, *args, out_val, **kwargs):
        return 2 * masked_conv2d_macs(weight.shape, in_mask, out_mask, out_val.shape)

    for name in _MASKED_OPS:
        register_flop_formula(getattr(torch.ops.flexops, name), get_raw=True)(masked_formula)


_register_flop_counter_formulas()
