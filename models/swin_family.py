"""SwinIR-family blocks of other networks (SwinIR, DRCT, HAT's hybrid attention block and its overlapping
cross-attention block, Swin2SR's Swin V2 block, as spandrel and the official repositories write them) run
as the zoo's Swin block (flexops.models.swinir.SwinTransformerBlock) on their own layers:
flexops.accelerate's fused blocks.

A block is recognised by what it holds and how it is called (forward(x, x_size) or HAT's forward(x,
x_size, rpi_sa, attn_mask), x [B, H*W, C]), not by its class name. The fused block keeps the block's
layers and buffers under their own names (no weight is copied, the state_dict keys do not change),
runs the zoo block's forward, and supplies the parts whose math differs: the attention through
flexops.ops.window_attention with SwinIR's -100 shift mask, HAT's channel-attention branch, Swin V2's
cosine attention with its residual post-norm, HAT's overlapping windows (through PyTorch's fused
scaled_dot_product_attention: flexops' op attends square windows only).
"""

import inspect

import torch
import torch.nn.functional as F
from torch import nn

from flexops.models.swinir import Mlp, SwinTransformerBlock, _pair
from flexops.nn.kept_linear import KeptLinear
from flexops.nn.window_attention import relative_position_index
from flexops.ops.window_attention import window_attention

# SwinIR adds this to the logits of token pairs from different shift regions (so do HAT, DRCT, Swin2SR).
SWIN_MASK_VALUE = -100.0
# Swin2SR clamps logit_scale at log(1 / 0.01), computed in float32.
MAX_LOGIT_SCALE = float(torch.log(torch.tensor(1.0 / 0.01)))
BLOCK_CALLS = (("x", "x_size"), ("x", "x_size", "rpi_sa", "attn_mask"))


def _cosine(attn):
    return all(hasattr(attn, name) for name in ("logit_scale", "cpb_mlp", "relative_coords_table"))


def _plain(attn):
    return hasattr(attn, "relative_position_bias_table") and hasattr(attn, "scale")


def is_swin_block(module):
    """Whether `module` is a SwinIR-family block this file can fuse."""
    attn = getattr(module, "attn", None)
    if not all(hasattr(module, name) for name in ("norm1", "norm2", "mlp", "window_size", "shift_size")):
        return False
    if attn is None or not all(hasattr(attn, name) for name in ("qkv", "proj", "num_heads")):
        return False
    if not (_plain(attn) or _cosine(attn)):
        return False
    return tuple(inspect.signature(module.forward).parameters) in BLOCK_CALLS


def is_overlap_block(module):
    """Whether `module` is HAT's overlapping cross-attention block (OCAB) as this file can fuse it: its
    keys and values come from windows grown by the same margin on every side, cut by an nn.Unfold."""
    names = ("norm1", "qkv", "proj", "norm2", "mlp", "relative_position_bias_table", "num_heads", "scale",
             "window_size", "overlap_win_size", "unfold")
    if not all(hasattr(module, name) for name in names) or not isinstance(module.unfold, nn.Unfold):
        return False
    ws, ows = module.window_size, module.overlap_win_size
    unfold = module.unfold
    cut = tuple(map(_pair, (unfold.kernel_size, unfold.stride, unfold.padding, unfold.dilation)))
    margin = (ows - ws) // 2
    if (ows - ws) % 2 or cut != ((ows, ows), (ws, ws), (margin, margin), (1, 1)):
        return False
    return tuple(inspect.signature(module.forward).parameters) == ("x", "x_size", "rpi")


def overlap_position_index(window_size, overlap_size):
    """[ws^2, ows^2] index into HAT's overlapping bias table [(ws + ows - 1)^2, heads] for query i of a
    window and key j of its grown window, as HAT computes it: (dy + ws - ows + 1) * (ws + ows - 1) +
    (dx + ws - ows + 1), with (dy, dx) = j's position in the grown window minus i's in the window. The
    values run from negative to positive; indexing wraps the negative ones, as in HAT."""
    qy, qx = torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")
    ky, kx = torch.meshgrid(torch.arange(overlap_size), torch.arange(overlap_size), indexing="ij")
    origin = window_size - overlap_size + 1
    dy = ky.flatten()[None, :] - qy.flatten()[:, None] + origin
    dx = kx.flatten()[None, :] - qx.flatten()[:, None] + origin
    return dy * (window_size + overlap_size - 1) + dx


def _gathered_bias(table, index):
    """A bias table [entries, heads] gathered by the relative position index [N, M] -> [heads, N, M]."""
    return table[index.reshape(-1)].view(*index.shape, -1).permute(2, 0, 1).contiguous()


def _keep_outputs(attn, mlp):
    """The plain nn.Linear layers of the attention and the MLP become KeptLinear on their Parameters
    (their large inference outputs then come from memory flexops keeps between calls); an MLP's
    nn.GELU joins fc1, which applies it in place, and becomes nn.Identity (it has no state)."""
    for module, name in ((attn, "qkv"), (attn, "proj"), (mlp, "fc2")):
        if type(getattr(module, name)) is nn.Linear:
            setattr(module, name, KeptLinear(getattr(module, name)))
    if type(mlp.fc1) is nn.Linear:
        gelu = type(mlp.act) is nn.GELU
        mlp.fc1 = KeptLinear(mlp.fc1, mlp.act.approximate if gelu else None)
        if gelu:
            mlp.act = nn.Identity()


class FusedSwinBlock(SwinTransformerBlock):
    """A SwinIR-family block as the zoo's Swin block (flexops.models.swinir.SwinTransformerBlock),
    on the block's own layers: the zoo block's forward, its parts where the math is SwinIR's, and
    flexops.ops.window_attention on the token map with SwinIR's -100 mask.

    forward(x [B, H*W, C], x_size (H, W), rpi_sa=None, attn_mask=None): the block's own call. HAT's
    `rpi_sa` must be SwinIR's relative position index for the window (HAT computes it so); a passed
    or stored attn_mask is SwinIR's shift mask, which the op applies itself.
    """

    kind = "window attention"
    LAYERS = ("norm1", "attn", "norm2")  # the block's layers held as they are (the MLP's are regrouped)

    def __init__(self, block):
        # The block's own layers under their own names (the state_dict keeps its keys and the weights
        # are not copied), so the zoo constructor's layers are not built.
        nn.Module.__init__(self)
        self.training = block.training  # an accelerated network in eval mode stays in eval mode
        for name in self.LAYERS:
            setattr(self, name, getattr(block, name))
        mlp = block.mlp  # its layers in the zoo's Mlp, under the same names
        self.mlp = Mlp(mlp.fc1.in_features, mlp.fc1.out_features)
        self.mlp.fc1, self.mlp.act, self.mlp.fc2, self.mlp.drop = mlp.fc1, mlp.act, mlp.fc2, mlp.drop
        _keep_outputs(self.attn, self.mlp)
        self.drop_path = getattr(block, "drop_path", nn.Identity())
        self.proj_drop = getattr(self.attn, "proj_drop", nn.Identity())
        self.window_size, self.shift_size = block.window_size, getattr(block, "shift_size", 0)
        for name, buffer in block.named_buffers(recurse=False):  # attn_mask: the state_dict keeps its keys
            self.register_buffer(name, buffer, persistent=name not in block._non_persistent_buffers_set)
        if not hasattr(self.attn, "relative_position_index"):  # HAT's: the network passes it as rpi_sa
            self.register_buffer("relative_position_index", self.computed_index(block), persistent=False)

    def forward(self, x, x_size, rpi_sa=None, attn_mask=None):
        batch, length, channels = x.shape
        if rpi_sa is not None and not torch.equal(rpi_sa, self.index):
            raise ValueError(f"the relative position index passed (HAT's rpi_sa, or OCAB's rpi) is not the one "
                             f"{type(self).__name__}.computed_index gives, which flexops.accelerate's block applies")
        # SwinIR-family networks hand the first block of a group the patch embedding's transposed view
        # (channels strided): one copy here, not one per LayerNorm, and the residual sums (which take
        # their first input's layout) come out contiguous for the blocks after.
        tokens = x.contiguous().view(batch, *x_size, channels)
        return super().forward(tokens).view(batch, length, channels)

    @staticmethod
    def computed_index(block):
        """The relative position index of a block whose network passes it in (HAT)."""
        return relative_position_index(block.window_size)

    @property
    def index(self):
        """The relative position index the bias table is read with: the attention's own, or (HAT) the
        block's."""
        attn_index = getattr(self.attn, "relative_position_index", None)
        return self.relative_position_index if attn_index is None else attn_index

    def attend(self, qkv, active, alphas):
        bias, scale = self.bias_and_scale()
        return window_attention(qkv, self.attn.num_heads, self.window_size, self.shift_size, bias, scale, active,
                                SWIN_MASK_VALUE)

    def bias_and_scale(self):
        """The attention's bias [heads, N, N] and the logits' scale."""
        return _gathered_bias(self.attn.relative_position_bias_table, self.index), self.attn.scale


class FusedHybridBlock(FusedSwinBlock):
    """HAT's hybrid attention block: SwinIR's, plus a channel-attention branch on the normed tokens,
    scaled by conv_scale, beside the attention's."""

    kind = "window attention + channel-attention branch"

    def __init__(self, block):
        super().__init__(block)
        self.conv_block, self.conv_scale = block.conv_block, block.conv_scale

    def residuals(self, tokens, attended, alphas):
        conv = self.conv_block(self.norm1(tokens).view(attended.shape).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return super().residuals(tokens + (conv * self.conv_scale).view_as(tokens), attended, alphas)


class FusedSwinV2Block(FusedSwinBlock):
    """Swin V2's block as Swin2SR writes it: cosine attention with a per-head logit scale and a
    continuous position bias, and each branch normed after it (residual post-norm)."""

    kind = "cosine window attention, residual post-norm"

    def project_qkv(self, tokens, alphas):
        """Cosine attention as the op's dot product: q and k normalised per head, the head's logit scale
        folded into q (the op's scale is one number)."""
        attn = self.attn
        qkv_bias = None
        if attn.q_bias is not None:
            qkv_bias = torch.cat((attn.q_bias, torch.zeros_like(attn.v_bias), attn.v_bias))
        q, k, v = F.linear(tokens, attn.qkv.weight, qkv_bias).unflatten(-1, (3, attn.num_heads, -1)).unbind(-3)
        logit_scale = attn.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp().view(attn.num_heads, 1)
        return torch.stack((F.normalize(q, dim=-1) * logit_scale, F.normalize(k, dim=-1), v), -3).flatten(-3)

    def bias_and_scale(self):
        """16 sigmoid(continuous position bias), and scale 1 (folded into q)."""
        attn = self.attn
        table = attn.cpb_mlp(attn.relative_coords_table).view(-1, attn.num_heads)
        return 16 * torch.sigmoid(_gathered_bias(table, self.index)), 1.0

    def residuals(self, tokens, attended, alphas):
        tokens = tokens + self.drop_path(self.norm1(self.proj_drop(self.attn.proj(attended)))).view_as(tokens)
        return tokens + self.drop_path(self.norm2(self.mlp(tokens)))


class FusedOverlapBlock(FusedSwinBlock):
    """HAT's overlapping cross-attention block (OCAB): the queries of each window attend the keys and
    values of that window grown by (overlap_win_size - window_size) / 2 on every side, zeros beyond
    the map (HAT cuts them with a zero-padded nn.Unfold), with a bias table of its own and no shift.
    OCAB holds its attention's layers (qkv, proj, the table) itself; the rest is SwinIR's block.

    forward(x [B, H*W, C], x_size (H, W), rpi): OCAB's own call; `rpi` must be HAT's overlapping index
    (overlap_position_index), which the block holds.
    """

    kind = "overlapping window attention"
    LAYERS = ("norm1", "qkv", "proj", "relative_position_bias_table", "norm2")

    def __init__(self, block):
        super().__init__(block)
        self.num_heads, self.scale, self.overlap_size = block.num_heads, block.scale, block.overlap_win_size

    @property
    def attn(self):
        """The block itself: where SwinIR's block reads its attention's layers, OCAB holds them."""
        return self

    @staticmethod
    def computed_index(block):
        return overlap_position_index(block.window_size, block.overlap_win_size)

    def attend(self, qkv, active, alphas):
        """The map qkv [B, H, W, 3C] -> [B, H, W, C]: one scaled_dot_product_attention over every window,
        its keys and values cut from the zero-padded map as strided views and copied once."""
        bias, scale = self.bias_and_scale()
        batch, height, width, channels = *qkv.shape[:3], qkv.shape[3] // 3
        ws, ows, heads = self.window_size, self.overlap_size, self.num_heads
        head_dim, margin = channels // heads, (ows - ws) // 2
        q, kv = qkv.split((channels, 2 * channels), -1)
        grown = F.pad(kv, (0, 0, margin, margin, margin, margin)).unfold(1, ows, ws).unfold(2, ows, ws)
        k, v = (grown.permute(0, 1, 2, 4, 5, 3).reshape(-1, ows * ows, 2, heads, head_dim)  # [B * windows, ows^2, ...]
                .permute(2, 0, 3, 1, 4))  # [2, B * windows, heads, ows^2, head_dim]
        rows, cols = height // ws, width // ws
        q = (q.reshape(batch, rows, ws, cols, ws, heads, head_dim).permute(0, 1, 3, 5, 2, 4, 6)
             .reshape(-1, heads, ws * ws, head_dim))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)  # [B * windows, heads, ws^2, hd]
        out = out.view(batch, rows, cols, heads, ws, ws, head_dim).permute(0, 1, 4, 2, 5, 3, 6)
        return out.reshape(batch, height, width, channels)


def why_not_fused(block):
    """None when `block` can be fused, else why not."""
    attn_drop = getattr(getattr(block, "attn", None), "attn_drop", None)  # OCAB has no attention dropout
    if isinstance(attn_drop, nn.Dropout) and attn_drop.p > 0:
        return f"attention dropout p={attn_drop.p}: the fused op has none"
    return None


def fused_block(block):
    """The fused block for a block `is_swin_block` or `is_overlap_block` accepts and `why_not_fused`
    does not refuse."""
    if is_overlap_block(block):
        return FusedOverlapBlock(block)
    if _cosine(block.attn):
        return FusedSwinV2Block(block)
    return FusedHybridBlock(block) if getattr(block, "conv_block", None) is not None else FusedSwinBlock(block)


def is_window_attention(module):
    """Whether `module` looks like a window attention (a relative position table, or Swin V2's)."""
    return _plain(module) or _cosine(module)
