"""accelerate: swap, in place in any network, the modules whose math flexops fuses.

- Swin blocks of the SwinIR family as spandrel and the official repositories write them (SwinIR, DRCT,
  HAT's hybrid attention block, Swin2SR's block with cosine attention): where they roll, partition,
  attend with the shift mask, reverse and roll back, `FusedSwinBlock` calls
  flexops.ops.window_attention on the token map with SwinIR's -100 mask. It keeps the block's own
  layers (norm1, attn, norm2, mlp, HAB's conv_block) and buffers: no weight is copied and the
  network's state_dict keys do not change.
- torchvision.ops.DeformConv2d -> flexops.nn.DeformConv2d holding the same weight and bias Parameters.

A block is recognised by what it holds and how it is called (forward(x, x_size) or HAT's forward(x,
x_size, rpi_sa, attn_mask), x [B, H*W, C]), not by its class name. Swin V2's cosine attention
(logit_scale, cpb_mlp) comes with its residual post-norm, as in Swin2SR. What looks like attention but
has no fused equivalent here (HAT's overlapping cross-attention, a block with attention dropout) is
left as it is and listed in the report. The attention of a block that was not fused (a module with a
relative position table) is listed there too.

>>> report = flexops.accelerate(net)      # net: e.g. spandrel's HAT, in eval mode
>>> print(report)                          # what was replaced and what was left, one line each
"""

import dataclasses
import inspect
import sys

import torch
import torch.nn.functional as F
from torch import nn

from flexops.nn.deform_conv import DeformConv2d
from flexops.ops.window_attention import window_attention

# SwinIR adds this to the logits of token pairs from different shift regions (so do HAT, DRCT, Swin2SR).
SWIN_MASK_VALUE = -100.0
# Swin2SR clamps logit_scale at log(1 / 0.01), computed in float32.
MAX_LOGIT_SCALE = float(torch.log(torch.tensor(1.0 / 0.01)))
BLOCK_CALLS = (("x", "x_size"), ("x", "x_size", "rpi_sa", "attn_mask"))


@dataclasses.dataclass
class AccelerationReport:
    """What `accelerate` did: `replaced` and `left` hold (module name, what / why) pairs."""

    replaced: list = dataclasses.field(default_factory=list)
    left: list = dataclasses.field(default_factory=list)

    def __str__(self):
        lines = [f"replaced {len(self.replaced)} module(s), left {len(self.left)}"]
        lines += [f"  replaced {name}: {what}" for name, what in self.replaced]
        lines += [f"  left {name}: {why}" for name, why in self.left]
        return "\n".join(lines)


def _cosine(attn):
    return all(hasattr(attn, name) for name in ("logit_scale", "cpb_mlp", "relative_coords_table"))


def _plain(attn):
    return hasattr(attn, "relative_position_bias_table") and hasattr(attn, "scale")


def _swin_block(module):
    """Whether `module` is a SwinIR-family block this file can fuse."""
    attn = getattr(module, "attn", None)
    if not all(hasattr(module, name) for name in ("norm1", "norm2", "mlp", "window_size", "shift_size")):
        return False
    if attn is None or not all(hasattr(attn, name) for name in ("qkv", "proj", "num_heads")):
        return False
    if not (_plain(attn) or _cosine(attn)):
        return False
    return tuple(inspect.signature(module.forward).parameters) in BLOCK_CALLS


def _gathered_bias(table, index, tokens):
    """A bias table [entries, heads] gathered by the relative position index -> [heads, N, N]."""
    return table[index.reshape(-1)].view(tokens, tokens, -1).permute(2, 0, 1).contiguous()


class FusedSwinBlock(nn.Module):
    """A SwinIR-family block computed with flexops.ops.window_attention, on the block's own layers.

    forward(x [B, H*W, C], x_size (H, W), rpi_sa=None, attn_mask=None): the block's call. HAT's
    `rpi_sa` indexes the bias table (the other blocks keep their index in attn); a passed or stored
    attn_mask is SwinIR's shift mask, which the op applies itself.
    """

    def __init__(self, block):
        super().__init__()
        self.norm1, self.attn, self.norm2, self.mlp = block.norm1, block.attn, block.norm2, block.mlp
        self.drop_path = getattr(block, "drop_path", nn.Identity())
        self.conv_block = getattr(block, "conv_block", None)  # HAT's channel-attention branch
        self.conv_scale = getattr(block, "conv_scale", None)
        self.window_size, self.shift_size = block.window_size, block.shift_size
        self.cosine = _cosine(block.attn)  # Swin V2: cosine attention and residual post-norm
        for name, buffer in block.named_buffers(recurse=False):  # attn_mask: the state_dict keeps its keys
            self.register_buffer(name, buffer, persistent=name not in block._non_persistent_buffers_set)

    def forward(self, x, x_size, rpi_sa=None, attn_mask=None):
        batch, length, channels = x.shape
        tokens = (x if self.cosine else self.norm1(x)).view(batch, *x_size, channels)
        qkv, bias, scale = self._cosine_qkv(tokens) if self.cosine else self._plain_qkv(tokens, rpi_sa)
        attended = window_attention(qkv, self.attn.num_heads, self.window_size, self.shift_size, bias, scale,
                                    mask_value=SWIN_MASK_VALUE)
        attended = self.attn.proj_drop(self.attn.proj(attended)).view(batch, length, channels)
        if self.cosine:
            x = x + self.drop_path(self.norm1(attended))
            return x + self.drop_path(self.norm2(self.mlp(x)))
        x = x + self.drop_path(attended)
        if self.conv_block is not None:
            conv = self.conv_block(tokens.permute(0, 3, 1, 2)).permute(0, 2, 3, 1).reshape(batch, length, channels)
            x = x + conv * self.conv_scale
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def _plain_qkv(self, tokens, rpi_sa):
        attn = self.attn
        index = attn.relative_position_index if rpi_sa is None else rpi_sa
        bias = _gathered_bias(attn.relative_position_bias_table, index, self.window_size**2)
        return attn.qkv(tokens), bias, attn.scale

    def _cosine_qkv(self, tokens):
        """Cosine attention as the op's dot product: q and k normalised per head, the head's logit scale
        folded into q (the op's scale is one number), 16 sigmoid(continuous position bias) the bias."""
        attn = self.attn
        qkv_bias = None
        if attn.q_bias is not None:
            qkv_bias = torch.cat((attn.q_bias, torch.zeros_like(attn.v_bias), attn.v_bias))
        q, k, v = F.linear(tokens, attn.qkv.weight, qkv_bias).unflatten(-1, (3, attn.num_heads, -1)).unbind(-3)
        logit_scale = attn.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp().view(attn.num_heads, 1)
        q = F.normalize(q, dim=-1) * logit_scale
        qkv = torch.stack((q, F.normalize(k, dim=-1), v), -3).flatten(-3)
        table = attn.cpb_mlp(attn.relative_coords_table).view(-1, attn.num_heads)
        bias = 16 * torch.sigmoid(_gathered_bias(table, attn.relative_position_index, self.window_size**2))
        return qkv, bias, 1.0


def _why_not_fused(block):
    """None when `block` can be fused, else why not."""
    attn_drop = getattr(block.attn, "attn_drop", None)
    if isinstance(attn_drop, nn.Dropout) and attn_drop.p > 0:
        return f"attention dropout p={attn_drop.p}: the fused op has none"
    return None


def _fused_deform_conv(conv):
    fused = DeformConv2d(conv.in_channels, conv.out_channels, conv.weight.shape[-2:], conv.stride, conv.padding,
                         conv.dilation, conv.groups, bias=conv.bias is not None)
    fused.weight, fused.bias = conv.weight, conv.bias  # the same Parameters, not copies
    return fused


def _replacement(module):
    """(new module, what it is) for a module flexops fuses, (None, why not) for attention left as it
    is, None for anything else."""
    if type(module).__module__.startswith("flexops."):
        return None
    if _swin_block(module):
        why = _why_not_fused(module)
        kind = "cosine window attention, residual post-norm" if _cosine(module.attn) else "window attention"
        if getattr(module, "conv_block", None) is not None:
            kind += " + channel-attention branch"
        return (FusedSwinBlock(module), f"{type(module).__name__} -> FusedSwinBlock ({kind})") if why is None else (
            None, why)
    tv_ops = sys.modules.get("torchvision.ops")  # a torchvision layer in the network means it is imported
    if tv_ops is not None and type(module) is tv_ops.DeformConv2d:
        return _fused_deform_conv(module), "torchvision DeformConv2d -> flexops.nn.DeformConv2d"
    if _plain(module) or _cosine(module):  # a window attention outside a block fused here, e.g. HAT's OCAB
        return None, f"{type(module).__name__}: window attention of a kind flexops does not fuse"
    return None


def accelerate(model):
    """Replaces, in place, the modules of `model` whose math flexops fuses (see the module docstring)
    by fused ones on the same weights; returns an AccelerationReport of what it replaced and left.
    Outputs stay those of the original modules (to rounding: 1e-10 in float64, 1e-5 in float32)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    report = AccelerationReport()
    _swap(model, "", report)
    return report


def _swap(module, prefix, report):
    for name, child in list(module.named_children()):
        path = prefix + name
        found = _replacement(child)
        if found is None:
            _swap(child, path + ".", report)
            continue
        new, text = found
        if new is None:
            report.left.append((path, text))
            continue
        setattr(module, name, new)
        report.replaced.append((path, text))
        if isinstance(new, FusedSwinBlock) and new.conv_block is not None:
            _swap(new.conv_block, path + ".conv_block.", report)
