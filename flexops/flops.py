"""FLOP counting for the flexops ops.

Two conventions, one formula per op:
- fvcore handles count multiply-accumulates (fvcore's convention: a conv's MACs, bias not counted);
  `count(model, *inputs)` runs fvcore's FlopCountAnalysis with them.
- torch.utils.flop_counter formulas count FLOPs (2 per MAC), so FlopCounterMode sees flexops ops.

masked_conv2d's cost depends on its masks' values and window_attention's on its active windows, not
only on shapes. FlopCounterMode hands the formula the tensors themselves; fvcore's traced graph holds
no values, so `count` records those arguments of every such call in one eager run first and the
handles take them in call order.
"""

import math
import warnings

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import register_flop_formula

# Ops whose cost depends on argument values: op family -> the positions of those arguments.
_VALUE_ARGS = {"masked_conv2d": (3, 4), "window_attention": (2, 6)}


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


def window_attention_macs(qkv_shape, window_size, active):
    """q k^T and P v of the computed windows: 2 N^2 C per window (C = all heads' channels); the
    softmax and the index arithmetic are not counted. active: bool [B, H/ws, W/ws] or None (all)."""
    batch, height, width, channels3 = qkv_shape
    windows = batch * (height // window_size) * (width // window_size) if active is None else int(active.sum())
    return windows * 2 * window_size**4 * (channels3 // 3)


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


# Per op family, the value arguments (_VALUE_ARGS) of each call of the run `count` is analysing.
_recorded = {family: [] for family in _VALUE_ARGS}


def _family(func):
    name = func.__name__.split(".")[0]
    return name.removesuffix("_triton") if func.namespace == "flexops" else None


class _RecordValues(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        family = _family(func)
        if family in _recorded:
            values = [args[i] for i in _VALUE_ARGS[family]]
            _recorded[family].append([v.clone() if isinstance(v, torch.Tensor) else v for v in values])
        return func(*args, **(kwargs or {}))


def _recorded_values(family):
    if not _recorded[family]:
        raise RuntimeError(
            f"flexops::{family}'s MACs depend on argument values, which fvcore's trace does not hold: "
            "count with flexops.flops.count(model, *inputs)"
        )
    return _recorded[family].pop(0)


def _masked_fvcore_handle(inputs, outputs):
    from fvcore.nn.jit_handles import get_shape

    in_mask, out_mask = _recorded_values("masked_conv2d")
    return masked_conv2d_macs(get_shape(inputs[1]), in_mask, out_mask, get_shape(outputs[0]))


def _window_fvcore_handle(inputs, outputs):
    from fvcore.nn.jit_handles import get_shape

    window_size, active = _recorded_values("window_attention")
    return window_attention_macs(get_shape(inputs[0]), window_size, active)


FVCORE_HANDLES = {f"flexops::{name}": _fvcore_handle(n, macs) for name, (n, macs) in _MACS.items()}
for _suffix in ("", "_triton"):
    FVCORE_HANDLES[f"flexops::masked_conv2d{_suffix}"] = _masked_fvcore_handle
    FVCORE_HANDLES[f"flexops::window_attention{_suffix}"] = _window_fvcore_handle


def count(model, *inputs):
    """Total MACs of model(*inputs) by fvcore, flexops ops included."""
    with torch.no_grad(), _RecordValues():
        model(*inputs)
    try:
        with warnings.catch_warnings():
            # fvcore scripts and traces with torch.jit (on import and per analysis), which torch now
            # calls deprecated: the warning is about fvcore's internals, not the caller's code.
            warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated", FutureWarning)
            from fvcore.nn import FlopCountAnalysis

            analysis = FlopCountAnalysis(model, inputs).set_op_handle(**FVCORE_HANDLES)
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            return analysis.total()
    finally:
        for calls in _recorded.values():
            calls.clear()


def _register_flop_counter_formulas():
    for name, (num_tensors, macs) in _MACS.items():

        def formula(*args, out_shape, _n=num_tensors, _macs=macs, **kwargs):
            return 2 * _macs(*args[:_n], out_shape)

        register_flop_formula(getattr(torch.ops.flexops, name))(formula)

    def masked_formula(input, weight, bias, in_mask, out_mask, *args, out_val, **kwargs):
        return 2 * masked_conv2d_macs(weight.shape, in_mask, out_mask, out_val.shape)

    def window_formula(qkv, num_heads, window_size, shift_size, rel_pos_bias, scale, active, *args, **kwargs):
        return 2 * window_attention_macs(qkv.shape, window_size, active)

    for suffix in ("", "_triton"):
        register_flop_formula(getattr(torch.ops.flexops, f"masked_conv2d{suffix}"), get_raw=True)(masked_formula)
        register_flop_formula(getattr(torch.ops.flexops, f"window_attention{suffix}"), get_raw=True)(window_formula)


_register_flop_counter_formulas()
