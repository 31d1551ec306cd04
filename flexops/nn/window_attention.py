"""WindowAttention: SwinIR's window attention layer on flexops.ops.window_attention, and the helpers
that turn FlexIR's per-token or per-region early exit into the op's window mask and back."""

import torch
from torch import nn

from flexops.nn.dense import Linear
from flexops.ops._args import ArgumentError, fx_leaf, fx_leaf_layer
from flexops.ops.window_attention import window_attention


def relative_position_index(window_size):
    """[N, N] index into SwinIR's bias table [(2 ws - 1)^2, heads] for tokens i, j of a window:
    (dy + ws - 1) * (2 ws - 1) + (dx + ws - 1), with (dy, dx) = position of i minus position of j."""
    y, x = torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")
    y, x = y.flatten(), x.flatten()
    dy = y[:, None] - y[None, :] + window_size - 1
    dx = x[:, None] - x[None, :] + window_size - 1
    return dy * (2 * window_size - 1) + dx


def active_windows(running, window_size, shift_size=0, size=None):
    """The op's `active` mask [B, H/ws, W/ws] from an early-exit mask.

    Args:
        running: bool [B, h, w], True where a token (or region) still runs, False where it has
            exited. With size=None it is per token (h, w = H, W); with size=(H, W) each entry covers
            an (H/h) x (W/w) region of the token map.
        window_size, shift_size: the attention's (the op's grid is shifted by shift_size).

    A window of the (shifted) grid is active when any of its tokens still runs.

    >>> running = torch.zeros(1, 128, 128, dtype=torch.bool)
    >>> running[:, 64:] = True                        # the top half has exited
    >>> active = active_windows(running, 8, shift_size=4)   # [1, 16, 16], 56% of the windows
    """
    if running.dim() != 3:
        raise ValueError(f"running must be [B, h, w], got shape {tuple(running.shape)}")
    if size is not None:
        height, width = size
        if height % running.shape[1] or width % running.shape[2]:
            raise ValueError(f"size {tuple(size)} must be a multiple of the region grid {tuple(running.shape[1:])}")
        running = running.repeat_interleave(height // running.shape[1], 1)
        running = running.repeat_interleave(width // running.shape[2], 2)
    batch, height, width = running.shape
    if height % window_size or width % window_size:
        raise ValueError(f"the token map {height}x{width} must be a multiple of window_size = {window_size}")
    if shift_size:  # the op's grid is laid on the map rolled by -shift
        running = torch.roll(running, (-shift_size, -shift_size), (1, 2))
    windows = running.reshape(batch, height // window_size, window_size, width // window_size, window_size)
    return windows.any(4).any(2)


def window_tokens(active, window_size, shift_size=0):
    """The inverse view: bool [B, H, W], True at the tokens of active windows."""
    tokens = active.repeat_interleave(window_size, 1).repeat_interleave(window_size, 2)
    return torch.roll(tokens, (shift_size, shift_size), (1, 2)) if shift_size else tokens


@fx_leaf
def _chosen_table(own, table, entries, heads):
    """The layer's own table when `table` is None, else `table` once it is [entries, heads] or
    [B, entries, heads]. One node under torch.fx, where whether a table was given is not known."""
    if table is None:
        return own
    if table.dim() not in (2, 3) or tuple(table.shape[-2:]) != (entries, heads):
        raise ArgumentError(
            f"the bias table must be [(2 ws - 1)^2, heads] = [{entries}, {heads}] or, one per image, "
            f"[B, {entries}, {heads}]; got {list(table.shape)}"
        )
    return table


@fx_leaf
def _token_map(x, dim):
    """x itself once it is a token map [B, H, W, dim], channels last. One node under torch.fx."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[-1] != dim:
        shape = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        hint = " (a channels-first image: pass x.permute(0, 2, 3, 1))" if shape[1:2] == [dim] else ""
        raise ArgumentError(f"x must be a token map [B, H, W, C = dim = {dim}], channels last; got {shape}{hint}")
    return x


@fx_leaf
def _zero_inactive(out, window_size, shift_size, active):
    """WindowAttention.zero_inactive. One node under torch.fx, where whether `active` is None and
    the shift are not known."""
    if active is None:
        return out
    return torch.where(window_tokens(active != 0, window_size, shift_size).unsqueeze(-1), out, 0)


class WindowAttention(nn.Module):
    """Window multi-head self-attention with relative position bias, as SwinIR's WindowAttention.

    Parameters carry SwinIR's names (qkv, proj, relative_position_bias_table), so its checkpoints
    load. relative_position_index is a non-persistent buffer (it follows from window_size); a
    checkpoint that stores it still loads, after the stored copy is checked against it.

    forward(x [B, H, W, C], shift_size=0, active=None, bias_table=None) -> [B, H, W, C]: where SwinIR's
    block rolls, partitions, attends and reverses, this one op does all of it on the token map.
    `active` [B, H/ws, W/ws] (see active_windows) skips windows; their tokens come out as 0.
    `bias_table` replaces the layer's own table: [(2 ws - 1)^2, heads], or [B, (2 ws - 1)^2, heads]
    with one table per image (a tunable SwinIR with per-sample omega blends one per image).

    Args:
        dim: token channels C. window_size: ws (square windows of N = ws^2 tokens). num_heads: heads.
        qkv_bias, qk_scale: as SwinIR (qk_scale None: head_dim^-0.5).
        mask_value: None (default) excludes pairs of tokens from different shift regions exactly;
            -100.0 adds SwinIR's value to their logits, which official SwinIR weights need (they
            differ once logits reach tens).

    >>> attn = WindowAttention(180, window_size=8, num_heads=6, mask_value=-100.0)
    >>> y = attn(torch.randn(1, 128, 128, 180), shift_size=4)
    """

    def __init__(self, dim, window_size, num_heads, qkv_bias=True, qk_scale=None, mask_value=None):
        super().__init__()
        if isinstance(window_size, (tuple, list)):
            if len(set(window_size)) != 1:
                raise ValueError(f"window_size must be square, got {window_size!r}")
            window_size = window_size[0]
        if dim % num_heads:
            raise ValueError(f"dim = {dim} must be a multiple of num_heads = {num_heads}")
        self.dim, self.window_size, self.num_heads, self.mask_value = dim, window_size, num_heads, mask_value
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window_size), persistent=False)
        self.qkv = Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def relative_position_bias(self, table=None):
        """The table gathered by the index: [heads, N, N] from the layer's own table (table None) or a
        given [(2 ws - 1)^2, heads] one; [B, heads, N, N] from per-image tables [B, (2 ws - 1)^2, heads]."""
        table = _chosen_table(self.relative_position_bias_table, table, (2 * self.window_size - 1) ** 2, self.num_heads)
        tokens = self.window_size**2
        bias = table[..., self.relative_position_index.reshape(-1), :]
        return bias.unflatten(-2, (tokens, tokens)).movedim(-1, -3)

    def attend(self, qkv, shift_size=0, active=None, bias_table=None):
        """The attention between the two projections: qkv [B, H, W, 3C] -> [B, H, W, C], with the
        layer's bias table or `bias_table` (see forward)."""
        bias = self.relative_position_bias(bias_table)
        return window_attention(
            qkv, self.num_heads, self.window_size, shift_size, bias, self.scale, active, self.mask_value
        )

    @fx_leaf_layer
    def forward(self, x, shift_size=0, active=None, bias_table=None):
        out = self.proj(self.attend(self.qkv(_token_map(x, self.dim)), shift_size, active, bias_table))
        return self.zero_inactive(out, shift_size, active)

    def zero_inactive(self, out, shift_size=0, active=None):
        """The projected attention `out` [B, H, W, C] with the tokens of inactive windows zero again:
        proj's bias would make them nonzero. `out` itself when every window is active (None)."""
        return _zero_inactive(out, self.window_size, shift_size, active)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        stored = state_dict.pop(prefix + "relative_position_index", None)
        if stored is not None and not torch.equal(stored.to(self.relative_position_index), self.relative_position_index):
            raise ValueError(
                f"{prefix}relative_position_index in the checkpoint is not SwinIR's index for window_size = "
                f"{self.window_size}"
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self):
        extra = "" if self.mask_value is None else f", mask_value={self.mask_value}"
        return f"dim={self.dim}, window_size={self.window_size}, num_heads={self.num_heads}{extra}"
