"""SwinIR (Liang et al., ICCVW 2021) on flexops' fused window attention.

The official architecture (JingyunLiang/SwinIR, `models/network_swinir.py`): the same constructor, the
same state_dict names, the same outputs. Official checkpoints load with `load_official` (strict,
including the `{"params": ...}` / `{"params_ema": ...}` wrappers of the release files), and a
state_dict of this SwinIR loads with strict=True into the official code: `attn_mask` and
`relative_position_index`, which the fused op does not need, are written on save and checked, then
dropped, on load.

Where the official block rolls, partitions, attends, reverses and rolls back, this one keeps the
tokens as one [B, H, W, C] map and calls `flexops.ops.window_attention` with SwinIR's -100 shift mask
(`mask_value=-100`), so trained weights give the official outputs even at large logits. The RSTB
convolutions read that map through a channels-last view, so the token layout is never copied.

The Swin block and the residual group are also FlexIR's and the tunable SwinIR's: they take a
tunable SwinIR's alphas and FlexIR's early-exit state (`forward(x, alphas, running)`); docs/design.md
says which parts of this module those methods build on.

>>> net = SwinIR(img_size=128, window_size=8, depths=[6] * 6, embed_dim=180, num_heads=[6] * 6,
...              mlp_ratio=2, upsampler="", resi_connection="1conv", upscale=1)   # colour denoising
>>> y = net(torch.rand(1, 3, 100, 120))   # any size: reflect-padded to the window, cropped back
"""

import math
import os

import torch
import torch.nn.functional as F
from torch import nn

from flexops.models import checks
from flexops.models.registry import register
from flexops.models.train import read_torch_file
from flexops.nn.dense import Conv2d, Linear
from flexops.nn.tunable import run_layer, value
from flexops.nn.window_attention import WindowAttention, relative_position_index
from flexops.reference.window_attention import shift_regions

RGB_MEAN = (0.4488, 0.4371, 0.4040)
# SwinIR adds this to the logits of token pairs from different shift regions (it does not exclude them).
SWINIR_MASK_VALUE = -100.0
UPSAMPLERS = ("", "pixelshuffle", "pixelshuffledirect", "nearest+conv")
RESI_CONNECTIONS = ("1conv", "3conv")


def swinir_attn_mask(height, width, window_size, shift_size):
    """SwinIR's `attn_mask` buffer [windows, N, N] (0 within a shift region, -100 across) for an
    height x width token map; only written to state_dicts for the official code, never computed with."""
    rows = shift_regions(height, window_size, shift_size, "cpu")
    cols = shift_regions(width, window_size, shift_size, "cpu")
    labels = (3 * rows[:, None] + cols[None, :]).reshape(height // window_size, window_size, width // window_size,
                                                          window_size)
    windows = labels.permute(0, 2, 1, 3).reshape(-1, window_size * window_size)
    apart = windows.unsqueeze(1) != windows.unsqueeze(2)
    return torch.zeros(apart.shape).masked_fill(apart, SWINIR_MASK_VALUE)


def _pair(value):
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


class DropPath(nn.Module):
    """Stochastic depth: in training, zeroes a sample's residual branch with probability p and scales
    the kept ones by 1 / (1 - p)."""

    def __init__(self, p=0.0):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class Mlp(nn.Module):
    """fc1 -> GELU -> dropout -> fc2 -> dropout (SwinIR's Mlp, names fc1 / fc2). forward(x, alphas=None):
    `alphas` go to fc1 and fc2 through run_layer (a tunable SwinIR's; None for plain layers)."""

    def __init__(self, in_features, hidden_features, drop=0.0):
        super().__init__()
        self.fc1 = Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = Linear(hidden_features, in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x, alphas=None):
        return self.drop(run_layer(self.fc2, self.drop(self.act(run_layer(self.fc1, x, alphas))), alphas))


class AllTokens:
    """Which tokens a Swin block and a residual group update, when all of them do (the default): every
    token runs, every window is attended.

    This is the early-exit state's interface; FlexIR's mask mode hands the blocks another one
    (`flexops.models.flexir.inference.RunningRegions`) that updates the running regions only:
    - active(window_size, shift_size): the op's `active` window mask for that grid (None: all);
    - in_windows(function, x, window_size, shift_size): function on the tokens of the active windows
      of the map x [B, H, W, C] (or of its sequence [B, H*W, C]), of x's shape with C' channels (zero
      at the other tokens);
    - update(function, x, *maps): x with its running tokens replaced by function(x's, maps' of them);
    - residual(function, y, x): x + function(y) at the running tokens (function a convolution on
      the token map), x elsewhere.
    """

    def active(self, window_size, shift_size):
        return None

    def in_windows(self, function, x, window_size, shift_size):
        return function(x)

    def update(self, function, x, *maps):
        return function(x, *maps)

    def residual(self, function, y, x):
        return function(y) + x


ALL_TOKENS = AllTokens()


class SwinTransformerBlock(nn.Module):
    """x + W-MSA(LN(x)), then + MLP(LN(x)), on a token map [B, H, W, C].

    As the official block, one built for an input_resolution no larger than the window uses that
    resolution as its window and no shift. The constructor is the official one; other networks' Swin
    blocks run as subclasses on their own layers (flexops.models.swin_family).

    forward(x [B, H, W, C], alphas=None, running=ALL_TOKENS) -> [B, H, W, C]:
    - alphas: a tunable SwinIR's `Alphas`, handed to each layer through `run_layer` (which calls a
      plain layer with x alone) and to the bias table (`value`); None for plain layers.
    - running: which tokens run (the early-exit state, see `AllTokens`): qkv is computed for the
      tokens of its active windows, the op attends those windows only, and proj, the MLP and the
      residuals update its running tokens; the others come out unchanged.
    """

    def __init__(self, dim, input_resolution, num_heads, window_size=7, shift_size=0, mlp_ratio=4.0, qkv_bias=True,
                 qk_scale=None, drop=0.0, drop_path=0.0, norm_layer=nn.LayerNorm):
        super().__init__()
        self.input_resolution = tuple(input_resolution)
        if min(self.input_resolution) <= window_size:
            shift_size, window_size = 0, min(self.input_resolution)
        self.window_size, self.shift_size = window_size, shift_size
        self.norm1 = norm_layer(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias, qk_scale, mask_value=SWINIR_MASK_VALUE)
        self.proj_drop = nn.Dropout(drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        self.register_state_dict_post_hook(_save_official_buffers)
        self.register_load_state_dict_pre_hook(_drop_official_mask)

    def forward(self, x, alphas=None, running=ALL_TOKENS):
        window, shift = self.window_size, self.shift_size
        sequence = as_sequence(x)  # both branches read this one view of the map (see as_sequence)
        qkv = running.in_windows(lambda tokens: self.project_qkv(tokens, alphas), sequence, window, shift)
        attention = self.attend(qkv.view(x.shape[:-1] + (-1,)), running.active(window, shift), alphas)
        update = running.update(lambda tokens, attended: self.residuals(tokens, attended, alphas), sequence, attention)
        return update.view(x.shape)

    # The block's three parts, which a block of another SwinIR-family network overrides where its math
    # differs (flexops.accelerate's FusedSwinBlock: HAT's extra branch, Swin V2's cosine attention).

    def project_qkv(self, tokens, alphas):
        """q, k and v of tokens [..., C] -> [..., 3C]: the LayerNorm, then the qkv projection."""
        return run_layer(self.attn.qkv, self.norm1(tokens), alphas)

    def attend(self, qkv, active, alphas):
        """The window attention of the map qkv [B, H, W, 3C] over the active windows -> [B, H, W, C]."""
        return self.attn.attend(qkv, self.shift_size, active, value(self.attn.relative_position_bias_table, alphas))

    def residuals(self, tokens, attended, alphas):
        """tokens [..., C] after the attention's branch (proj of attended, the attention's output for
        the same tokens, as a map [B, H, W, C] or as tokens' rows) and the MLP's.

        In inference (no autograd, eval mode: dropout and drop path return their input) each sum is
        added into its branch's output, a tensor the branch has just made (y + x is x + y exactly),
        instead of into a new map: zoo SwinIR-M x2 at 64x64 took 904 ms a call instead of 950."""
        in_place = not torch.is_grad_enabled() and not self.training
        branch = self.drop_path(self.proj_drop(run_layer(self.attn.proj, attended, alphas))).view_as(tokens)
        tokens = branch.add_(tokens) if in_place else tokens + branch
        branch = self.drop_path(self.mlp(self.norm2(tokens), alphas))
        return branch.add_(tokens) if in_place else tokens + branch


def _save_official_buffers(block, state_dict, prefix, local_metadata):
    """The official block stores the attention's index and, when shifted, its mask: write them so
    that a state_dict of this SwinIR loads strictly into the official code."""
    state_dict[prefix + "attn.relative_position_index"] = relative_position_index(block.window_size)
    if block.shift_size:
        state_dict[prefix + "attn_mask"] = swinir_attn_mask(*block.input_resolution, block.window_size,
                                                            block.shift_size)


def _drop_official_mask(block, state_dict, prefix, *args):
    """Checks a stored attn_mask against SwinIR's mask for its resolution (the block's own, or the
    square one its window count implies: checkpoints of another img_size load too), then drops it."""
    stored = state_dict.pop(prefix + "attn_mask", None)
    if stored is None:
        return
    ws, tokens = block.window_size, block.window_size**2
    height, width = block.input_resolution
    if stored.shape[0] != (height // ws) * (width // ws):
        height = width = math.isqrt(stored.shape[0]) * ws
    valid = block.shift_size and stored.shape[1:] == (tokens, tokens) and stored.shape[0] == (height // ws) * (width // ws)
    if not valid or not torch.equal(stored.float().cpu(), swinir_attn_mask(height, width, ws, block.shift_size)):
        raise ValueError(f"{prefix}attn_mask in the checkpoint is not SwinIR's shift mask for window_size = {ws}, "
                         f"shift_size = {block.shift_size}")


class BasicLayer(nn.Module):
    """`depth` Swin blocks, shift 0 and window_size // 2 alternating (names `blocks.j`)."""

    def __init__(self, dim, input_resolution, depth, num_heads, window_size, mlp_ratio=4.0, qkv_bias=True,
                 qk_scale=None, drop=0.0, drop_path=0.0, norm_layer=nn.LayerNorm):
        super().__init__()
        self.blocks = nn.ModuleList([
            SwinTransformerBlock(dim, input_resolution, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2,
                                 mlp_ratio, qkv_bias, qk_scale, drop,
                                 drop_path[i] if isinstance(drop_path, (list, tuple)) else drop_path, norm_layer)
            for i in range(depth)
        ])

    def forward(self, x, alphas=None, running=ALL_TOKENS):
        """The blocks in turn, each with the alphas and the running tokens (see SwinTransformerBlock)."""
        for block in self.blocks:
            x = block(x, alphas, running)
        return x


def _residual_conv(dim, resi_connection):
    if resi_connection == "1conv":
        return Conv2d(dim, dim, 3, 1, 1)
    return nn.Sequential(Conv2d(dim, dim // 4, 3, 1, 1), nn.LeakyReLU(0.2, inplace=True),
                         Conv2d(dim // 4, dim // 4, 1, 1, 0), nn.LeakyReLU(0.2, inplace=True),
                         Conv2d(dim // 4, dim, 3, 1, 1))


def as_image(tokens):
    """[B, H, W, C] token map -> [B, C, H, W] view (channels-last memory, no copy)."""
    return tokens.permute(0, 3, 1, 2)


def as_sequence(tokens):
    """tokens [B, ..., C] -> [B, L, C] (a view of a contiguous map), for the LayerNorms, projections
    and residual sums of the Swin blocks.

    Why: torch.compile's CPU layout optimisation gives channels-last strides to a 4-D tensor that
    leads to a convolution and is read by more than one op; for a token map [B, H, W, C] that puts H
    innermost, and every LayerNorm and residual sum then reads C with a stride (zoo SwinIR compiled
    ran at 0.8x of eager). So a block or RSTB reads its input map once, as this sequence, and each
    use gets a view of its own: 3-D tensors, and 4-D ones read once, keep their token-major order.
    """
    return tokens.reshape(tokens.shape[0], -1, tokens.shape[-1])


def as_tokens(image):
    """[B, C, H, W] -> [B, H, W, C] (a view when the image is channels-last)."""
    return image.permute(0, 2, 3, 1)


class RSTB(nn.Module):
    """Residual Swin Transformer block: x + conv(blocks(x)), the conv on the image view of the tokens."""

    def __init__(self, dim, input_resolution, depth, num_heads, window_size, mlp_ratio=4.0, qkv_bias=True,
                 qk_scale=None, drop=0.0, drop_path=0.0, norm_layer=nn.LayerNorm, resi_connection="1conv"):
        super().__init__()
        self.residual_group = BasicLayer(dim, input_resolution, depth, num_heads, window_size, mlp_ratio, qkv_bias,
                                         qk_scale, drop, drop_path, norm_layer)
        self.conv = _residual_conv(dim, resi_connection)

    def forward(self, x, alphas=None, running=ALL_TOKENS):
        """x + conv(blocks(x)) [B, H, W, C], updated at the running tokens only (alphas and running:
        see SwinTransformerBlock)."""
        sequence = as_sequence(x)  # each use below gets a view of its own (see as_sequence)
        blocks = self.residual_group(sequence.view(x.shape), alphas, running)
        return running.residual(lambda tokens: as_tokens(run_layer(self.conv, as_image(tokens), alphas)), blocks,
                                sequence.view(x.shape))


class Upsample(nn.Sequential):
    """(Conv 3x3 to 4 F, PixelShuffle(2)) per factor 2, or Conv to 9 F + PixelShuffle(3)."""

    def __init__(self, scale, num_feat):
        layers = []
        if scale & (scale - 1) == 0:
            for _ in range(int(math.log2(scale))):
                layers += [Conv2d(num_feat, 4 * num_feat, 3, 1, 1), nn.PixelShuffle(2)]
        elif scale == 3:
            layers += [Conv2d(num_feat, 9 * num_feat, 3, 1, 1), nn.PixelShuffle(3)]
        else:
            raise ValueError(f"upscale must be a power of 2 or 3 for upsampler 'pixelshuffle', got {scale}")
        super().__init__(*layers)


class UpsampleOneStep(nn.Sequential):
    """Conv 3x3 to scale^2 * out channels, PixelShuffle(scale) (the lightweight SR tail)."""

    def __init__(self, scale, num_feat, num_out_ch):
        super().__init__(Conv2d(num_feat, scale**2 * num_out_ch, 3, 1, 1), nn.PixelShuffle(scale))


class Reconstruction:
    """SwinIR's tail, shared by SwinIR (at its top level, official names) and FlexIR's exit branches:
    norm, conv_after_body, and the modules of the upsampler."""

    def build_tail(self, embed_dim, num_out_ch, upscale, upsampler, resi_connection, norm_layer, num_feat=64):
        self.upsampler, self.upscale = upsampler, upscale
        self.norm = norm_layer(embed_dim)
        self.conv_after_body = _residual_conv(embed_dim, resi_connection)
        if upsampler == "pixelshuffle":
            self.conv_before_upsample = nn.Sequential(Conv2d(embed_dim, num_feat, 3, 1, 1), nn.LeakyReLU(inplace=True))
            self.upsample = Upsample(upscale, num_feat)
            self.conv_last = Conv2d(num_feat, num_out_ch, 3, 1, 1)
        elif upsampler == "pixelshuffledirect":
            self.upsample = UpsampleOneStep(upscale, embed_dim, num_out_ch)
        elif upsampler == "nearest+conv":
            self.conv_before_upsample = nn.Sequential(Conv2d(embed_dim, num_feat, 3, 1, 1), nn.LeakyReLU(inplace=True))
            self.conv_up1 = Conv2d(num_feat, num_feat, 3, 1, 1)
            self.conv_up2 = Conv2d(num_feat, num_feat, 3, 1, 1)
            self.conv_hr = Conv2d(num_feat, num_feat, 3, 1, 1)
            self.conv_last = Conv2d(num_feat, num_out_ch, 3, 1, 1)
            self.lrelu = nn.LeakyReLU(0.2, inplace=True)
        else:
            self.conv_last = Conv2d(embed_dim, num_out_ch, 3, 1, 1)

    def reconstruct(self, tokens, x_first, x, alphas=None):
        """Deep features [B, H, W, C], shallow features x_first [B, C, H, W] and the normalised input x
        -> the output before de-normalisation; `alphas` (a tunable SwinIR's) go to every convolution."""
        res = run_layer(self.conv_after_body, as_image(self.norm(tokens)), alphas) + x_first
        if self.upsampler == "pixelshuffle":
            up = run_layer(self.upsample, run_layer(self.conv_before_upsample, res, alphas), alphas)
            return run_layer(self.conv_last, up, alphas)
        if self.upsampler == "pixelshuffledirect":
            return run_layer(self.upsample, res, alphas)
        if self.upsampler == "nearest+conv":
            up = run_layer(self.conv_before_upsample, res, alphas)
            up = self.lrelu(run_layer(self.conv_up1, F.interpolate(up, scale_factor=2, mode="nearest"), alphas))
            up = self.lrelu(run_layer(self.conv_up2, F.interpolate(up, scale_factor=2, mode="nearest"), alphas))
            return run_layer(self.conv_last, self.lrelu(run_layer(self.conv_hr, up, alphas)), alphas)
        return x + run_layer(self.conv_last, res, alphas)

    @property
    def scale(self):
        """The factor the output size has over the input's."""
        return self.upscale if self.upsampler else 1


def check_config(in_chans, embed_dim, depths, num_heads, window_size, upscale, img_range, upsampler,
                 resi_connection, attn_drop_rate):
    """ValueErrors for arguments the official constructor would fail on (or silently misuse)."""
    if upsampler not in UPSAMPLERS:
        raise ValueError(f"upsampler must be one of {UPSAMPLERS}, got {upsampler!r}")
    if resi_connection not in RESI_CONNECTIONS:
        raise ValueError(f"resi_connection must be one of {RESI_CONNECTIONS}, got {resi_connection!r}")
    if len(depths) != len(num_heads) or not depths:
        raise ValueError(f"depths and num_heads must be non-empty and of equal length, got {depths} and {num_heads}")
    for heads in num_heads:
        if embed_dim % heads:
            raise ValueError(f"embed_dim = {embed_dim} must be a multiple of every num_heads entry, got {heads}")
    if not isinstance(window_size, int) or window_size < 1:
        raise ValueError(f"window_size must be a positive int, got {window_size!r}")
    if not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f"in_chans must be a positive int, got {in_chans!r}")
    if upsampler == "nearest+conv" and upscale != 4:
        raise ValueError(f"upsampler 'nearest+conv' supports upscale = 4 only (as the official code), got {upscale}")
    if upsampler and (not isinstance(upscale, int) or upscale < 1):
        raise ValueError(f"upscale must be a positive int, got {upscale!r}")
    if not img_range > 0:
        raise ValueError(f"img_range must be positive, got {img_range!r}")
    if attn_drop_rate:
        raise ValueError("attn_drop_rate must be 0: the fused window attention has no dropout on its probabilities")


def pad_to_window(x, window_size):
    """Reflect-pads bottom and right to multiples of window_size (the official check_image_size)."""
    height, width = x.shape[-2:]
    pad_h, pad_w = (-height) % window_size, (-width) % window_size
    if checks.traced(x) or pad_h or pad_w:  # traced: the sizes are known only when the graph runs
        return F.pad(x, (0, pad_w, 0, pad_h), "reflect")
    return x


def activation_bytes(shape, embed_dim, mlp_ratio, scale, element_size):
    """Peak activation memory of an inference forward, estimated: per token the block's working set
    (input, LN, qkv 3C, attention out, MLP hidden) plus the shallow features and the output."""
    batch, channels, height, width = shape
    tokens = batch * height * width
    per_token = (6 + 3 + mlp_ratio) * embed_dim
    return (tokens * per_token + 2 * batch * channels * height * width * scale**2) * element_size


def run_tiled(network, x, tile, tile_overlap, window_size, scale):
    """The official test script's --tile: tile x tile crops at stride tile - tile_overlap (the last one
    flush with the border), each restored on its own, overlaps averaged."""
    batch, channels, height, width = x.shape
    if not isinstance(tile, int) or tile < 1 or not isinstance(tile_overlap, int) or not 0 <= tile_overlap < tile:
        raise ValueError(f"tile must be a positive int and tile_overlap an int in [0, tile), got {tile!r} and "
                         f"{tile_overlap!r}")
    tile = min(tile, height, width)
    if tile % window_size:
        raise ValueError(f"tile must be a multiple of window_size = {window_size} (after min with the image size), "
                         f"got {tile}")
    # An image smaller than the tile shrinks it; the overlap shrinks with it (the official script
    # would step backwards and leave a gap).
    stride = tile - min(tile_overlap, tile - 1)
    rows = list(range(0, height - tile, stride)) + [height - tile]
    cols = list(range(0, width - tile, stride)) + [width - tile]
    total = x.new_zeros(batch, channels, height * scale, width * scale)
    weight = torch.zeros_like(total)
    for top in rows:
        for left in cols:
            out = network(x[..., top:top + tile, left:left + tile])
            region = (..., slice(top * scale, (top + tile) * scale), slice(left * scale, (left + tile) * scale))
            total[region] += out
            weight[region] += 1
    return total / weight


@register("swinir")
class SwinIR(Reconstruction, nn.Module):
    """SwinIR with the official constructor, state_dict names and outputs.

    Args (as `network_swinir.SwinIR`):
        img_size: training patch size (int or (H, W)); sets the stored attn_mask's size and, as the
            official code, turns the shift off in blocks whose resolution is no larger than the window.
        patch_size: 1 (the official code only uses it for the resolution).
        in_chans: image channels (3: the RGB mean is subtracted; otherwise none).
        embed_dim, depths, num_heads, window_size, mlp_ratio, qkv_bias, qk_scale: the transformer.
        drop_rate, attn_drop_rate (must be 0: the fused op has no attention dropout), drop_path_rate.
        norm_layer: LayerNorm class. ape: absolute position embedding (needs inputs of img_size).
        patch_norm: LayerNorm after the patch embedding. upscale: SR factor (ignored for upsampler "").
        img_range: 1.0, or 255.0 (JPEG models). upsampler: "" (denoising / JPEG), "pixelshuffle",
            "pixelshuffledirect", "nearest+conv" (x4 only). resi_connection: "1conv" or "3conv".

    forward(x [B, in_chans, H, W], tile=None, tile_overlap=32, max_memory=4 GiB) -> [B, in_chans,
    H * s, W * s] (s = upscale, 1 for ""). Any H, W: reflect-padded to the window as the official
    forward does, cropped back. `tile`: restore in overlapping tiles as the official test script
    (bounded memory for large photos); without it an input whose estimated activations exceed
    max_memory bytes is refused with a tile size that fits.

    >>> net = SwinIR(img_size=128, window_size=8, depths=[6] * 6, embed_dim=180, num_heads=[6] * 6,
    ...              mlp_ratio=2, upscale=1, upsampler="")          # colour denoising
    >>> load_official(net, "005_colorDN_DFWB_s128w8_SwinIR-M_noise25.pth")   # the official release file
    >>> y = net(noisy, tile=256)                                     # bounded memory on a large photo
    """

    def __init__(self, img_size=64, patch_size=1, in_chans=3, embed_dim=96, depths=(6, 6, 6, 6), num_heads=(6, 6, 6, 6),
                 window_size=7, mlp_ratio=4.0, qkv_bias=True, qk_scale=None, drop_rate=0.0, attn_drop_rate=0.0,
                 drop_path_rate=0.1, norm_layer=nn.LayerNorm, ape=False, patch_norm=True, upscale=2, img_range=1.0,
                 upsampler="", resi_connection="1conv", num_feat=64):
        super().__init__()
        depths, num_heads = list(depths), list(num_heads)
        # The constructor arguments (FlexIR.from_swinir and the cost counter rebuild the network from them).
        self.config = dict(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim, depths=depths,
                           num_heads=num_heads, window_size=window_size, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                           qk_scale=qk_scale, drop_rate=drop_rate, attn_drop_rate=attn_drop_rate,
                           drop_path_rate=drop_path_rate, norm_layer=norm_layer, ape=ape, patch_norm=patch_norm,
                           upscale=upscale, img_range=img_range, upsampler=upsampler, resi_connection=resi_connection,
                           num_feat=num_feat)
        check_config(in_chans, embed_dim, depths, num_heads, window_size, upscale, img_range, upsampler,
                     resi_connection, attn_drop_rate)
        self.in_chans, self.embed_dim, self.window_size, self.img_range = in_chans, embed_dim, window_size, img_range
        self.mlp_ratio, self.ape, self.patch_norm = mlp_ratio, ape, patch_norm
        self.register_buffer("mean", torch.tensor(RGB_MEAN).view(1, 3, 1, 1) if in_chans == 3 else torch.zeros(1, 1, 1, 1),
                             persistent=False)
        self.patches_resolution = tuple(s // patch_size for s in _pair(img_size))
        self.conv_first = Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.patch_embed = nn.Module()  # the official PatchEmbed only flattens; its one parameter holder
        self.patch_embed.norm = norm_layer(embed_dim) if patch_norm else nn.Identity()
        if ape:
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, math.prod(self.patches_resolution), embed_dim))
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(drop_rate)
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.layers = nn.ModuleList([
            RSTB(embed_dim, self.patches_resolution, depth, heads, window_size, mlp_ratio, qkv_bias, qk_scale, drop_rate,
                 rates[sum(depths[:i]):sum(depths[:i + 1])], norm_layer, resi_connection)
            for i, (depth, heads) in enumerate(zip(depths, num_heads))
        ])
        self.build_tail(embed_dim, in_chans, upscale, upsampler, resi_connection, norm_layer, num_feat)
        self.apply(_init_weights)

    def head(self, x, alphas=None):
        """Image -> (normalised padded input, shallow features x_first [B, C, H, W], tokens [B, H, W, C]);
        `alphas` (a tunable SwinIR's) go to conv_first."""
        x = (pad_to_window(x, self.window_size) - self.mean.to(x.dtype)) * self.img_range
        x_first = run_layer(self.conv_first, x.contiguous(memory_format=torch.channels_last), alphas)
        tokens = self.patch_embed.norm(as_tokens(x_first))
        if self.ape:
            if tuple(tokens.shape[1:3]) != self.patches_resolution:
                raise ValueError(f"with ape=True the padded input must be img_size {self.patches_resolution}, got "
                                 f"{tuple(tokens.shape[1:3])}")
            tokens = tokens + self.absolute_pos_embed.view(1, *self.patches_resolution, -1)
        return x, x_first, self.pos_drop(tokens)

    def finish(self, out, height, width):
        """De-normalises and crops the padding off."""
        out = out / self.img_range + self.mean.to(out.dtype)
        return out[..., :height * self.scale, :width * self.scale].contiguous()

    def forward(self, x, tile=None, tile_overlap=32, max_memory=4 * 2**30):
        checks.image_batch(x, self.in_chans)
        if tile is not None:
            return run_tiled(self, x, tile, tile_overlap, self.window_size, self.scale)
        self.check_memory(x, max_memory)
        return self.run(x)

    def run(self, x, alphas=None):
        """The untiled forward of a checked image; `alphas` (a tunable SwinIR's `Alphas`, None for the
        plain network) go to every layer, each called through `run_layer`."""
        height, width = x.shape[-2:]
        x, x_first, tokens = self.head(x, alphas)
        for layer in self.layers:
            tokens = layer(tokens, alphas)
        return self.finish(self.reconstruct(tokens, x_first, x, alphas), height, width)

    def check_memory(self, x, max_memory):
        """Refuses an untiled input whose estimated activations exceed max_memory, naming a tile that fits."""
        if checks.traced(x):
            return
        padded = (*x.shape[:2], x.shape[2] + (-x.shape[2]) % self.window_size, x.shape[3] + (-x.shape[3]) % self.window_size)
        need = activation_bytes(padded, self.embed_dim, self.mlp_ratio, self.scale, x.element_size())
        if need <= max_memory:
            return
        tile = self.window_size
        while activation_bytes((x.shape[0], x.shape[1], 2 * tile, 2 * tile), self.embed_dim, self.mlp_ratio, self.scale,
                               x.element_size()) <= max_memory:
            tile *= 2
        raise ValueError(f"an untiled {tuple(x.shape)} input needs about {need / 2**30:.1f} GiB of activations, more "
                         f"than max_memory = {max_memory / 2**30:.1f} GiB; pass tile={tile} (and tile_overlap, e.g. 32)")


def _init_weights(module):
    """The official initialisation: Linear weights truncated normal (std 0.02), biases 0; LayerNorm 1, 0."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def official_state_dict(checkpoint):
    """The state_dict in an official release file or dict: `params_ema` if present, else `params`,
    else the dict itself."""
    if isinstance(checkpoint, dict):
        for key in ("params_ema", "params"):
            if key in checkpoint:
                return checkpoint[key]
    if not isinstance(checkpoint, dict):
        raise ValueError(f"the checkpoint must be a state_dict or a dict with 'params' / 'params_ema', got "
                         f"{type(checkpoint).__name__}")
    return checkpoint


def load_official(model, path_or_dict):
    """Loads an official SwinIR checkpoint (a path, or what torch.load gives) into `model` with
    strict=True; `attn_mask` and `relative_position_index` are checked against SwinIR's, then dropped.

    Returns the model. Example:
        >>> net = SwinIR(img_size=128, window_size=8, depths=[6] * 6, embed_dim=180, num_heads=[6] * 6,
        ...              mlp_ratio=2, upsampler="", resi_connection="1conv", upscale=1)
        >>> load_official(net, "005_colorDN_DFWB_s128w8_SwinIR-M_noise25.pth")
    """
    checkpoint = path_or_dict
    if isinstance(checkpoint, (str, os.PathLike)):
        checkpoint = read_torch_file(path_or_dict, "SwinIR checkpoint")
    model.load_state_dict(dict(official_state_dict(checkpoint)), strict=True)
    return model
