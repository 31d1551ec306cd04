"""SwinIR as the official code computes it (JingyunLiang/SwinIR `network_swinir.py`), written
independently of the zoo's SwinIR: tokens [B, L, C] unembedded to an image around each RSTB's
convolution, a roll by -shift, window partition copies, q k^T + the relative position bias + the
additive -100 shift mask, softmax, @ v, window reverse copies, a roll back.

It is the specification the zoo's fused SwinIR (flexops.models.swinir) is tested against (the same
state_dict names: one loads the other's strictly, then both compute the same in float64) and the
baseline the FlexIR benchmark times it against. It has no drop-out and no drop-path (evaluation).

>>> ref = ReferenceSwinIR(img_size=16, embed_dim=12, depths=(2,), num_heads=(2,), window_size=4, upscale=1)
>>> ref.load_state_dict(SwinIR(img_size=16, embed_dim=12, depths=(2,), num_heads=(2,), window_size=4,
...                            upscale=1).state_dict())
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


def partition(x, ws):
    """[B, H, W, C] -> the ws x ws windows [B * windows, ws * ws, C], row-major (a copy)."""
    b, h, w, c = x.shape
    return x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, c)


def reverse(windows, ws, h, w):
    """partition's inverse: [B * windows, ws * ws, C] -> [B, h, w, C]."""
    c = windows.shape[-1]
    b = windows.shape[0] // (h * w // ws // ws)
    return windows.view(b, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


def shift_mask(h, w, ws, shift):
    """SwinIR's attn_mask [windows, N, N] for an h x w map rolled by -shift: 0 between tokens of one
    shift region (the slices (0, -ws), (-ws, -shift), (-shift, None) of each axis), -100 across."""
    img = torch.zeros(1, h, w, 1)
    count = 0
    for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
        for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            img[:, hs, wsl, :] = count
            count += 1
    windows = partition(img, ws).squeeze(-1)
    diff = windows.unsqueeze(1) - windows.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


class _Attention(nn.Module):
    """Window attention on partitioned windows [B * windows, N, C], the mask added to the logits."""

    def __init__(self, dim, ws, heads):
        super().__init__()
        self.ws, self.heads, self.scale = ws, heads, (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * ws - 1) ** 2, heads))
        coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + ws - 1
        self.register_buffer("relative_position_index", rel[..., 0] * (2 * ws - 1) + rel[..., 1])
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, mask):
        bn, n, c = x.shape
        q, k, v = self.qkv(x).reshape(bn, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
        attn = attn + bias.permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = (attn.view(bn // nw, nw, self.heads, n, n) + mask.unsqueeze(1).unsqueeze(0)).view(-1, self.heads, n, n)
        return self.proj((attn.softmax(-1) @ v).transpose(1, 2).reshape(bn, n, c))


class _Mlp(nn.Module):
    """fc1 -> GELU -> fc2."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class _Block(nn.Module):
    """One Swin block on tokens [B, L, C] of an image of `size`; the official window and shift rule
    (a resolution no larger than the window: that window, no shift), the mask kept for `res`."""

    def __init__(self, dim, res, heads, ws, shift, mlp_ratio):
        super().__init__()
        if min(res) <= ws:
            shift, ws = 0, min(res)
        self.res, self.ws, self.shift = res, ws, shift
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = _Attention(dim, ws, heads)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio))
        if shift:
            self.register_buffer("attn_mask", shift_mask(*res, ws, shift))

    def forward(self, x, size):
        h, w = size
        b, _, c = x.shape
        y = self.norm1(x).view(b, h, w, c)
        if self.shift:
            y = torch.roll(y, (-self.shift, -self.shift), (1, 2))
        mask = None
        if self.shift:
            mask = self.attn_mask if tuple(size) == tuple(self.res) else shift_mask(h, w, self.ws, self.shift).to(x)
        y = reverse(self.attn(partition(y, self.ws), mask), self.ws, h, w)
        if self.shift:
            y = torch.roll(y, (self.shift, self.shift), (1, 2))
        x = x + y.reshape(b, h * w, c)
        return x + self.mlp(self.norm2(x))


def _residual_conv(dim, kind):
    """The RSTB's and the body's convolution: "1conv" or "3conv"."""
    if kind == "1conv":
        return nn.Conv2d(dim, dim, 3, 1, 1)
    return nn.Sequential(nn.Conv2d(dim, dim // 4, 3, 1, 1), nn.LeakyReLU(0.2), nn.Conv2d(dim // 4, dim // 4, 1),
                         nn.LeakyReLU(0.2), nn.Conv2d(dim // 4, dim, 3, 1, 1))


class _RSTB(nn.Module):
    """x + conv(blocks(x)), the tokens unembedded to an image for the convolution."""

    def __init__(self, dim, res, depth, heads, ws, mlp_ratio, resi):
        super().__init__()
        self.residual_group = nn.Module()
        self.residual_group.blocks = nn.ModuleList(
            [_Block(dim, res, heads, ws, 0 if i % 2 == 0 else ws // 2, mlp_ratio) for i in range(depth)])
        self.conv = _residual_conv(dim, resi)

    def forward(self, x, size):
        y = x
        for block in self.residual_group.blocks:
            y = block(y, size)
        b, _, c = x.shape
        y = self.conv(y.transpose(1, 2).view(b, c, *size))
        return y.flatten(2).transpose(1, 2) + x


class ReferenceSwinIR(nn.Module):
    """SwinIR with the official forward and state_dict names (the zoo's SwinIR loads its state_dict).

    Args: as flexops.models.swinir.SwinIR (img_size an int; no drop rates, patch_norm always on).
    forward(x [B, in_chans, H, W]) -> [B, in_chans, H * s, W * s]: reflect-padded to the window,
    cropped back.
    """

    def __init__(self, img_size=64, in_chans=3, embed_dim=96, depths=(6,), num_heads=(6,), window_size=7, mlp_ratio=4.0,
                 upscale=2, img_range=1.0, upsampler="", resi_connection="1conv", ape=False):
        super().__init__()
        self.ws, self.img_range, self.upscale, self.upsampler, self.ape = window_size, img_range, upscale, upsampler, ape
        self.mean = torch.tensor([0.4488, 0.4371, 0.4040]).view(1, 3, 1, 1) if in_chans == 3 else torch.zeros(1, 1, 1, 1)
        res = (img_size, img_size)
        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.patch_embed = nn.Module()
        self.patch_embed.norm = nn.LayerNorm(embed_dim)
        if ape:
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, img_size * img_size, embed_dim))
        self.layers = nn.ModuleList([_RSTB(embed_dim, res, d, h, window_size, mlp_ratio, resi_connection)
                                     for d, h in zip(depths, num_heads)])
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = _residual_conv(embed_dim, resi_connection)
        feat = 64
        if upsampler == "pixelshuffle":
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, feat, 3, 1, 1), nn.LeakyReLU())
            ups = []
            if upscale == 3:
                ups = [nn.Conv2d(feat, 9 * feat, 3, 1, 1), nn.PixelShuffle(3)]
            else:
                for _ in range(int(math.log2(upscale))):
                    ups += [nn.Conv2d(feat, 4 * feat, 3, 1, 1), nn.PixelShuffle(2)]
            self.upsample = nn.Sequential(*ups)
            self.conv_last = nn.Conv2d(feat, in_chans, 3, 1, 1)
        elif upsampler == "pixelshuffledirect":
            self.upsample = nn.Sequential(nn.Conv2d(embed_dim, upscale**2 * in_chans, 3, 1, 1), nn.PixelShuffle(upscale))
        elif upsampler == "nearest+conv":
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, feat, 3, 1, 1), nn.LeakyReLU())
            self.conv_up1, self.conv_up2, self.conv_hr = (nn.Conv2d(feat, feat, 3, 1, 1) for _ in range(3))
            self.conv_last = nn.Conv2d(feat, in_chans, 3, 1, 1)
        else:
            self.conv_last = nn.Conv2d(embed_dim, in_chans, 3, 1, 1)

    def features(self, x):
        size = x.shape[2:]
        x = self.patch_embed.norm(x.flatten(2).transpose(1, 2))
        if self.ape:
            x = x + self.absolute_pos_embed
        for layer in self.layers:
            x = layer(x, size)
        return self.norm(x).transpose(1, 2).view(x.shape[0], -1, *size)

    def forward(self, x):
        h, w = x.shape[2:]
        x = F.pad(x, (0, (-w) % self.ws, 0, (-h) % self.ws), "reflect")
        mean = self.mean.to(x)
        x = (x - mean) * self.img_range
        if self.upsampler == "":
            first = self.conv_first(x)
            x = x + self.conv_last(self.conv_after_body(self.features(first)) + first)
        else:
            x = self.conv_first(x)
            x = self.conv_after_body(self.features(x)) + x
            if self.upsampler == "pixelshuffle":
                x = self.conv_last(self.upsample(self.conv_before_upsample(x)))
            elif self.upsampler == "pixelshuffledirect":
                x = self.upsample(x)
            else:
                x = self.conv_before_upsample(x)
                x = F.leaky_relu(self.conv_up1(F.interpolate(x, scale_factor=2, mode="nearest")), 0.2)
                x = F.leaky_relu(self.conv_up2(F.interpolate(x, scale_factor=2, mode="nearest")), 0.2)
                x = self.conv_last(F.leaky_relu(self.conv_hr(x), 0.2))
        x = x / self.img_range + mean
        return x[:, :, :h * self.upscale, :w * self.upscale]
