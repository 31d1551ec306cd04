"""Swin window attention, the specification: SwinIR's algorithm step by step.

roll the token map by -shift -> partition into ws x ws windows -> per head softmax(scale q k^T +
bias) v, where tokens of different shift regions never attend to each other -> reverse the
partition -> roll back by +shift. SwinIR adds -100 to the logits of such pairs; by default they
are excluded outright (probability exactly 0), which is what -100 approximates, and mask_value=-100
adds SwinIR's value instead. The bias is [heads, N, N] for the whole batch or [B, heads, N, N]
per image. Windows that `active` switches off give 0 at their tokens. Differentiable by autograd in qkv and rel_pos_bias.
"""

import torch


def shift_regions(size, window_size, shift_size, device):
    """Region label (0, 1, 2) of each coordinate along one axis of the rolled token map.

    The cyclic shift brings the last `shift` rows next to the first ones; SwinIR's slices
    (0, -ws), (-ws, -shift), (-shift, None) keep the pieces apart.
    """
    coordinate = torch.arange(size, device=device)
    return (coordinate >= size - window_size).long() + (coordinate >= size - shift_size).long()


def window_attention(
    qkv, num_heads, window_size, shift_size=0, rel_pos_bias=None, scale=None, active=None, mask_value=None
):
    batch, height, width, channels3 = qkv.shape
    channels = channels3 // 3
    head_dim = channels // num_heads
    ws, shift = window_size, shift_size
    rows, cols = height // ws, width // ws
    tokens = ws * ws
    if scale is None:
        scale = head_dim**-0.5

    x = torch.roll(qkv, (-shift, -shift), (1, 2)) if shift else qkv
    # [B, rows, ws, cols, ws, 3, heads, hd] -> [3, B, rows, cols, heads, N, hd]
    windows = x.reshape(batch, rows, ws, cols, ws, 3, num_heads, head_dim)
    q, k, v = windows.permute(5, 0, 1, 3, 6, 2, 4, 7).reshape(3, batch, rows, cols, num_heads, tokens, head_dim)

    logits = (q * scale) @ k.transpose(-2, -1)  # [B, rows, cols, heads, N, N]
    if rel_pos_bias is not None:
        # [heads, N, N] is shared by every window; [B, heads, N, N] by the windows of one image.
        logits = logits + (rel_pos_bias if rel_pos_bias.dim() == 3 else rel_pos_bias[:, None, None])
    if shift:
        region_y = shift_regions(height, ws, shift, qkv.device).reshape(rows, 1, ws, 1)
        region_x = shift_regions(width, ws, shift, qkv.device).reshape(1, cols, 1, ws)
        region = (3 * region_y + region_x).reshape(rows, cols, 1, tokens)  # per window, per token
        apart = region.unsqueeze(-1) != region.unsqueeze(-2)  # [rows, cols, 1, N, N]
        if mask_value is None:
            logits = logits.masked_fill(apart, float("-inf"))
        else:
            logits = torch.where(apart, logits + mask_value, logits)
    out = logits.softmax(-1) @ v  # [B, rows, cols, heads, N, hd]
    if active is not None:
        out = torch.where(active.reshape(batch, rows, cols, 1, 1, 1), out, 0)

    out = out.reshape(batch, rows, cols, num_heads, ws, ws, head_dim).permute(0, 1, 4, 2, 5, 3, 6)
    out = out.reshape(batch, height, width, channels)
    return torch.roll(out, (shift, shift), (1, 2)) if shift else out
