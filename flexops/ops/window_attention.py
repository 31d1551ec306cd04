"""window_attention: Swin (shifted-)window multi-head self-attention, fused, with early exit.

SwinIR computes it as roll -> window partition copy -> q k^T + relative position bias + shift mask
-> softmax -> @ v -> window reverse copy -> roll back. This op reads the qkv token map in place and
writes the output in token order: shift, partition and shift mask are index arithmetic inside the
kernel. `active` switches windows off (FlexIR's adaptive early exit): they are not computed and
their tokens get 0, so the cost follows the active fraction.

SwinIR adds -100 to the logits of pairs of tokens from different shift regions; by default this op
excludes such pairs exactly (probability 0). The two agree while logits are small, not once trained
weights make them reach tens, so `mask_value=-100` reproduces SwinIR where its outputs must match.
"""

import math
import numbers
import os

import torch

from flexops import reference
from flexops.ops import _args, _register


@_args.fx_leaf
def window_attention(
    qkv, num_heads, window_size, shift_size=0, rel_pos_bias=None, scale=None, active=None, mask_value=None
):
    """Window attention over a token map.

    Args:
        qkv: [B, H, W, 3*C], laid out as SwinIR's qkv Linear output: (q, k, v) x heads x head_dim.
        num_heads: heads; C must be a multiple of it.
        window_size: ws; H and W must be multiples of it. N = ws * ws tokens per window.
        shift_size: cyclic shift of the window grid, 0 <= shift_size < ws (SwinIR uses 0 and ws // 2).
            Tokens of different shift regions never attend to each other.
        rel_pos_bias: [num_heads, N, N] added to the logits (SwinIR's gathered bias table), shared by
            the batch; or [B, num_heads, N, N], one per image (a tunable SwinIR with per-sample omega);
            or None.
        scale: logit scale; None is head_dim ** -0.5.
        active: bool (or 0/1) [B, H/ws, W/ws] over the shifted window grid, or None (all windows).
        mask_value: None (default) excludes pairs of tokens from different shift regions exactly;
            a number (SwinIR: -100.0) is added to their logits instead. Only matters when shift_size > 0.

    Returns:
        [B, H, W, C] in token order; the tokens of inactive windows are 0. qkv and rel_pos_bias get
        gradients (a per-image bias one per image).

    Example:
        >>> qkv = torch.randn(1, 16, 16, 3 * 32)
        >>> window_attention(qkv, 4, 8, shift_size=4, mask_value=-100.0).shape
        torch.Size([1, 16, 16, 32])
    """
    qkv, rel_pos_bias = _register.autocast(qkv, rel_pos_bias)
    num_heads, window_size, shift_size, scale, active, mask_value = _check(
        qkv, num_heads, window_size, shift_size, rel_pos_bias, scale, active, mask_value
    )
    backend, kernel = _OP.choose(qkv)
    _check_working_memory(qkv, num_heads, window_size, rel_pos_bias, backend)
    return kernel(qkv, num_heads, window_size, shift_size, rel_pos_bias, scale, active, mask_value)


def _check(qkv, num_heads, window_size, shift_size, rel_pos_bias, scale, active, mask_value):
    """Validates the arguments; returns (num_heads, window_size, shift_size, scale, active as bool,
    mask_value as float or None)."""
    _args.check_tensor("qkv", qkv, 4)
    _args.check_floating("qkv", qkv)
    num_heads = _args.positive_int(num_heads, "num_heads")
    window_size = _args.positive_int(window_size, "window_size")
    if not _args.integer(shift_size) or not 0 <= shift_size < window_size:
        raise _args.ArgumentError(f"shift_size must be an int in [0, window_size = {window_size}), got {shift_size!r}")
    shift_size = int(shift_size)
    batch, height, width, channels3 = qkv.shape
    if channels3 % (3 * num_heads) or channels3 == 0:
        raise _args.ArgumentError(
            f"qkv's last dimension must be 3 * C with C a multiple of num_heads = {num_heads}, C > 0; "
            f"got qkv of shape {list(qkv.shape)}"
        )
    if height % window_size or width % window_size:
        raise _args.ArgumentError(
            f"qkv's H and W must be multiples of window_size = {window_size}; got H = {height}, W = {width} "
            "(pad the token map first)"
        )
    tokens = window_size * window_size
    if rel_pos_bias is not None:
        _args.check_tensor("rel_pos_bias", rel_pos_bias, None, like=qkv)
        if tuple(rel_pos_bias.shape) not in ((num_heads, tokens, tokens), (batch, num_heads, tokens, tokens)):
            raise _args.ArgumentError(
                f"rel_pos_bias must be [num_heads, N, N] = [{num_heads}, {tokens}, {tokens}] or, one per image, "
                f"[B, num_heads, N, N] = [{batch}, {num_heads}, {tokens}, {tokens}] (N = window_size^2); "
                f"got {list(rel_pos_bias.shape)}"
            )
    if scale is None:
        scale = (channels3 // (3 * num_heads)) ** -0.5
    elif not isinstance(scale, numbers.Real) or isinstance(scale, bool) or not math.isfinite(scale):
        raise _args.ArgumentError(f"scale must be a real number, finite, or None (head_dim ** -0.5), got {scale!r}")
    if active is not None:
        grid = [batch, height // window_size, width // window_size]
        _args.check_tensor("active", active, 3)
        if active.device != qkv.device:
            raise _args.ArgumentError(f"active is on {active.device} but qkv is on {qkv.device}")
        if list(active.shape) != grid:
            raise _args.ArgumentError(f"active must be [B, H/ws, W/ws] = {grid}; got {list(active.shape)}")
        active = active.detach() != 0
    if mask_value is not None:
        if (
            not isinstance(mask_value, numbers.Real)
            or isinstance(mask_value, bool)
            or math.isnan(mask_value)
            or mask_value == math.inf
        ):
            raise _args.ArgumentError(f"mask_value must be None or a real number below +inf (SwinIR: -100.0), got {mask_value!r}")
        mask_value = float(mask_value)
    return num_heads, window_size, shift_size, float(scale), active, mask_value


# This machine's memory. A CPU call's working memory may take half of it: a window far too large is
# refused with its size instead of the process being killed for memory.
_MACHINE_BYTES = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _check_working_memory(qkv, num_heads, window_size, rel_pos_bias, backend):
    """Refuses a call whose N x N attention matrices (N = window_size^2) would not fit in memory.

    Each (window, head) works on N x N matrices: the CPU kernel keeps one per thread in the forward
    and four in the backward, with a thread per (window, head) up to torch.get_num_threads(); the
    reference holds those of every window and head at once (logits and probabilities, and their
    gradients in the backward). GPU memory is not estimated here.
    """
    if qkv.device.type != "cpu":
        return
    tokens = window_size * window_size
    square = tokens * tokens * qkv.element_size()
    grad = torch.is_grad_enabled() and (qkv.requires_grad or (rel_pos_bias is not None and rel_pos_bias.requires_grad))
    tasks = qkv.shape[0] * (qkv.shape[1] // window_size) * (qkv.shape[2] // window_size) * num_heads
    if backend == "reference":
        per_task, running, who = 4 if grad else 2, tasks, f"the reference backend's {tasks} (window, head) pairs"
    else:
        # torch.compile cannot trace get_num_threads: a compiled call is checked for one thread.
        threads = 1 if torch.compiler.is_compiling() else torch.get_num_threads()
        per_task, running = 4 if grad else 1, min(tasks, threads)
        who = f"{running} thread{'s' if running > 1 else ''} at once"
    need = per_task * square * running
    if need > _MACHINE_BYTES // 2:
        raise _args.ArgumentError(
            f"window_size = {window_size} is too large: with N = {tokens} tokens a window's N x N "
            f"{str(qkv.dtype).removeprefix('torch.')} attention matrix takes {square / 1e9:.3g} GB, and this call "
            f"would hold {per_task} of them{' (with gradients)' if grad else ''} for each of {who}: "
            f"{need / 1e9:.3g} GB, more than half of this machine's {_MACHINE_BYTES / 1e9:.3g} GB; "
            "use a smaller window_size"
        )


def _fake(qkv, num_heads, window_size, shift_size, rel_pos_bias, scale, active, mask_value=None):
    return qkv.new_empty((*qkv.shape[:3], qkv.shape[3] // 3))


def _fake_backward(grad_output, qkv, num_heads, window_size, shift_size, rel_pos_bias, scale, active, mask_value=None):
    grad_bias = qkv.new_empty(0) if rel_pos_bias is None else qkv.new_empty(rel_pos_bias.shape)
    return qkv.new_empty(qkv.shape), grad_bias


def _setup_context(ctx, inputs, output):
    qkv, num_heads, window_size, shift_size, rel_pos_bias, scale, active, mask_value = inputs
    ctx.save_for_backward(qkv, rel_pos_bias, active)
    ctx.attention = (num_heads, window_size, shift_size)
    ctx.scale, ctx.mask_value = scale, mask_value


def _backward(ctx, grad_output, backward_op):
    qkv, rel_pos_bias, active = ctx.saved_tensors
    grad_qkv, grad_bias = backward_op(grad_output, qkv, *ctx.attention, rel_pos_bias, ctx.scale, active, ctx.mask_value)
    return grad_qkv, None, None, None, None if rel_pos_bias is None else grad_bias, None, None, None


_OP = _register.Op(
    "window_attention",
    reference.window_attention,
    _fake,
    _fake_backward,
    _setup_context,
    _backward,
    "window_attention",
    "window_attention_backward",
)
