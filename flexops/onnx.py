"""ONNX export: the four flexops ops as standard ONNX operators, for ONNX Runtime and the like.

torch.onnx's exporter (dynamo=True) meets flexops' custom ops in the exported graph and needs a
translation for each. `translations()` gives them (pass it as `custom_translation_table`);
`export(model, args, ...)` calls torch.onnx.export with them and with dynamic batch, height and
width for the image inputs:

    program = flexops.onnx.export(model.eval(), (x,))
    program.save("model.onnx")   # then onnxruntime.InferenceSession("model.onnx").run(None, {...})

Each translation writes out the op's reference algorithm (flexops.reference) in ONNX operators; the
fused kernels' savings (skipped channels, skipped windows) are not reproduced, only their output:
- deform_conv2d: one `DeformConv` (opset 19), whose offsets, mask and groups are torchvision's.
- tunable_conv2d: alpha [p] blends the p kernels once, then one `Conv`. Per-sample alpha [B, p]
  convolves with all p kernels and blends the p outputs per sample (p times the work; a grouped
  convolution over the batch would need the batch size fixed in the graph).
- masked_conv2d: the masks select input channels before one `Conv` and output channels after it;
  a batch-1 input broadcasts over the M task rows as the op does.
- window_attention: roll, window partition, MatMul, shift mask and bias, Softmax, MatMul, window
  reverse, roll back; inactive windows give zeros.
Heights and widths stay symbolic: shapes are computed in the graph from the input's.
"""

import torch

try:
    from onnxscript import opset20 as op
except ImportError as error:
    raise ImportError(
        f"flexops.onnx needs onnxscript and onnx ({error}); install them with `pip install flexops[onnx]` "
        "(or `pip install onnx onnxscript onnxruntime`)"
    ) from None

from flexops.ops import _args

__all__ = ["default_dynamic_shapes", "export", "translations"]

_INT64_MAX = 2**63 - 1
_INT64 = 7  # onnx.TensorProto.INT64


def _ints(*values):
    """A constant int64 vector: ONNX shapes, axes and slice bounds."""
    return op.Constant(value_ints=list(values))


def _zero_like(x):
    return op.CastLike(op.Constant(value_float=0.0), x)


def _conv_attributes(stride, padding, dilation):
    (ph, pw) = padding
    return dict(strides=list(stride), pads=[ph, pw, ph, pw], dilations=list(dilation))


def _tunable_conv2d(input, weight, bias, alpha, stride, padding, dilation, groups):
    p, out_channels, group_channels, kh, kw = weight.shape
    conv = dict(group=groups, **_conv_attributes(stride, padding, dilation))
    if len(alpha.shape) == 1:
        # One blended kernel for the batch: [1, p] @ [p, Cout * Cin/g * kh * kw].
        rows = op.Reshape(alpha, _ints(1, p))
        kernel = op.Reshape(op.MatMul(rows, op.Reshape(weight, _ints(p, -1))), _ints(out_channels, group_channels, kh, kw))
        blended_bias = None if bias is None else op.Reshape(op.MatMul(rows, bias), _ints(out_channels))
        return op.Conv(input, kernel, blended_bias, **conv)
    # Per sample: the p kernels as p * Cout output channels, ordered group by group so that Conv's
    # groups still meet their input channels ([p, g, Cout/g, ...] -> [g, p, Cout/g, ...]), then the p
    # outputs blended by each sample's alpha.
    per_group = out_channels // groups
    stacked = op.Transpose(op.Reshape(weight, _ints(p, groups, per_group, group_channels, kh, kw)), perm=[1, 0, 2, 3, 4, 5])
    outputs = op.Conv(input, op.Reshape(stacked, _ints(p * out_channels, group_channels, kh, kw)), **conv)
    size = op.Shape(outputs, start=2)
    outputs = op.Reshape(outputs, _ints(0, groups, p, per_group, -1))
    blended = op.ReduceSum(op.Mul(outputs, op.Reshape(alpha, _ints(-1, 1, p, 1, 1))), _ints(2), keepdims=0)
    blended = op.Reshape(blended, op.Concat(_ints(0, out_channels), size, axis=0))  # [B, Cout, Ho, Wo]
    if bias is None:
        return blended
    return op.Add(blended, op.Reshape(op.MatMul(alpha, bias), _ints(-1, out_channels, 1, 1)))


def _masked_conv2d(input, weight, bias, in_mask, out_mask, stride, padding, dilation):
    in_channels, out_channels = weight.shape[1], weight.shape[0]
    # Selecting, not multiplying: inactive channels are 0 even where the input holds inf or NaN.
    input = op.Where(op.Reshape(in_mask, _ints(-1, in_channels, 1, 1)), input, _zero_like(input))
    output = op.Conv(input, weight, bias, **_conv_attributes(stride, padding, dilation))
    return op.Where(op.Reshape(out_mask, _ints(-1, out_channels, 1, 1)), output, _zero_like(output))


def _deform_conv2d(input, offset, weight, bias, mask, stride, padding, dilation):
    _, group_channels, kh, kw = weight.shape
    groups = input.shape[1] // group_channels
    offset_groups = offset.shape[1] // (2 * kh * kw)
    attributes = dict(
        kernel_shape=[kh, kw], group=groups, offset_group=offset_groups, **_conv_attributes(stride, padding, dilation)
    )
    return op.DeformConv(input, weight, offset, bias, mask, **attributes)


def _roll(x, shift):
    """x rolled by `shift` along axes 1 and 2 (torch.roll(x, (shift, shift), (1, 2)))."""
    for axis in (1, 2):
        axes = _ints(axis)
        head = op.Slice(x, _ints(-shift), _ints(_INT64_MAX), axes)
        x = op.Concat(head, op.Slice(x, _ints(0), _ints(-shift), axes), axis=axis)
    return x


def _shift_regions(size, window_size, shift_size):
    """Region label (0, 1, 2) of each coordinate along one axis of the rolled token map, as
    flexops.reference.window_attention.shift_regions; `size` is a 1-element int64 tensor."""
    coordinate = op.Range(op.Constant(value_int=0), op.Squeeze(size), op.Constant(value_int=1))
    past_window, past_shift = (
        op.Cast(op.GreaterOrEqual(coordinate, op.Squeeze(op.Sub(size, _ints(start)))), to=_INT64)
        for start in (window_size, shift_size)
    )
    return op.Add(past_window, past_shift)


def _window_attention(qkv, num_heads, window_size, shift_size, rel_pos_bias, scale, active, mask_value=None):
    channels = qkv.shape[3] // 3
    head_dim = channels // num_heads
    ws, shift, tokens = window_size, shift_size, window_size * window_size
    batch, height, width = (op.Shape(qkv, start=i, end=i + 1) for i in range(3))
    rows, cols = op.Div(height, _ints(ws)), op.Div(width, _ints(ws))

    x = _roll(qkv, -shift) if shift else qkv
    # [B, rows, ws, cols, ws, 3, heads, hd] -> [3, B, rows, cols, heads, N, hd]
    x = op.Reshape(x, op.Concat(batch, rows, _ints(ws), cols, _ints(ws, 3, num_heads, head_dim), axis=0))
    x = op.Reshape(op.Transpose(x, perm=[5, 0, 1, 3, 6, 2, 4, 7]), _ints(3, 0, 0, 0, num_heads, tokens, head_dim))
    q, k, v = op.Split(x, num_outputs=3, axis=0)
    q, k, v = (op.Squeeze(t, _ints(0)) for t in (q, k, v))

    logits = op.MatMul(op.Mul(q, op.CastLike(op.Constant(value_float=scale), q)), op.Transpose(k, perm=[0, 1, 2, 3, 5, 4]))
    if rel_pos_bias is not None:
        # [heads, N, N] is shared by every window; [B, heads, N, N] by the windows of one image.
        logits = op.Add(logits, rel_pos_bias if len(rel_pos_bias.shape) == 3 else op.Unsqueeze(rel_pos_bias, _ints(1, 2)))
    if shift:
        region_y = op.Reshape(_shift_regions(height, ws, shift), _ints(-1, 1, ws, 1))
        region_x = op.Reshape(_shift_regions(width, ws, shift), _ints(1, -1, 1, ws))
        region = op.Reshape(op.Add(op.Mul(region_y, op.Constant(value_int=3)), region_x), _ints(0, 0, 1, tokens))
        apart = op.Not(op.Equal(op.Unsqueeze(region, _ints(-1)), op.Unsqueeze(region, _ints(-2))))  # [rows, cols, 1, N, N]
        if mask_value is None:
            logits = op.Where(apart, op.CastLike(op.Constant(value_float=float("-inf")), logits), logits)
        else:
            shifted = op.Add(logits, op.CastLike(op.Constant(value_float=mask_value), logits))
            logits = op.Where(apart, shifted, logits)
    out = op.MatMul(op.Softmax(logits, axis=-1), v)  # [B, rows, cols, heads, N, hd]
    if active is not None:
        out = op.Where(op.Reshape(active, _ints(0, 0, 0, 1, 1, 1)), out, _zero_like(out))

    out = op.Reshape(out, _ints(0, 0, 0, num_heads, ws, ws, head_dim))
    out = op.Transpose(out, perm=[0, 1, 4, 2, 5, 3, 6])
    out = op.Reshape(out, op.Concat(op.Shape(qkv, start=0, end=3), _ints(channels), axis=0))
    return _roll(out, shift) if shift else out


def translations():
    """{flexops op overload: its ONNX translation}, for torch.onnx.export's custom_translation_table.

    Covers each op's compiled and Triton forms (which of them a network's graph holds depends on the
    backend chosen when it was exported; the reference backend exports as plain torch operators).
    """
    table = {}
    for name, function in (
        ("tunable_conv2d", _tunable_conv2d),
        ("masked_conv2d", _masked_conv2d),
        ("deform_conv2d", _deform_conv2d),
        ("window_attention", _window_attention),
    ):
        table[getattr(torch.ops.flexops, name).default] = function
        table[getattr(torch.ops.flexops, name + "_triton").default] = function
    return table


def default_dynamic_shapes(args):
    """dynamic_shapes for torch.onnx.export(model, args): the first dimension of every tensor (batch,
    number of tasks) and the height and width of every 4-D one (the images), left to torch.export to
    decide (Dim.AUTO: dynamic unless the network fixes them, e.g. omega's p or a batch of 1, as
    torch.export specialises sizes 0 and 1: export with a batch of 2 for a dynamic batch)."""
    auto = torch.export.Dim.AUTO
    shapes = []
    for arg in args:
        if not isinstance(arg, torch.Tensor) or arg.dim() == 0:
            shapes.append(None)
        else:
            shapes.append({0: auto, 2: auto, 3: auto} if arg.dim() == 4 else {0: auto})
    return tuple(shapes)


def export(model, args, f=None, *, dynamic_shapes=None, custom_translation_table=None, **kwargs):
    """torch.onnx.export(model, args, f, dynamo=True, ...) with flexops' translations.

    Args:
        model: the network (call .eval() first).
        args: tuple of the model's positional inputs (example values).
        f: path to save the ONNX file to, or None (save the returned program yourself).
        dynamic_shapes: as torch.onnx.export's; None: default_dynamic_shapes(args) (batch, height and
            width dynamic where the network allows).
        custom_translation_table: more translations, added to flexops'.
        **kwargs: other torch.onnx.export arguments (input_names, opset_version, ...).

    Returns:
        the torch.onnx.ONNXProgram (`.save(path)`, `.model_proto`).

    Example:
        >>> flexops.onnx.export(net.eval(), (torch.rand(2, 3, 64, 64),)).save("net.onnx")
    """
    if not isinstance(args, tuple):
        raise _args.ArgumentError(f"args must be a tuple of the model's inputs, got {type(args).__name__}")
    table = {**translations(), **(custom_translation_table or {})}
    if dynamic_shapes is None:
        dynamic_shapes = default_dynamic_shapes(args)
    return torch.onnx.export(
        model, args, f, dynamo=True, dynamic_shapes=dynamic_shapes, custom_translation_table=table, **kwargs
    )
