"""The zoo's SwinIR against an independent official-style SwinIR written here (roll, window partition
copies, additive -100 mask, softmax, reverse, per-block PatchEmbed/UnEmbed on [B, L, C] tokens), in
float64 for every upsampler and window/shift case; strict loading both ways; load_official; tiling;
errors."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flexops.models import create, swinir
from flexops.models.swinir import SwinIR, load_official
from flexops.ops import ArgumentError

# ---------------------------------------------------------------------------------------------------
# Official-style SwinIR: the structure and names of network_swinir.py, written independently.


def partition(x, ws):
    b, h, w, c = x.shape
    return x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, c)


def reverse(windows, ws, h, w):
    c = windows.shape[-1]
    b = windows.shape[0] // (h * w // ws // ws)
    return windows.view(b, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


def shift_mask(h, w, ws, shift):
    img = torch.zeros(1, h, w, 1)
    count = 0
    for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
        for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            img[:, hs, wsl, :] = count
            count += 1
    windows = partition(img, ws).squeeze(-1)
    diff = windows.unsqueeze(1) - windows.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


class RefAttention(nn.Module):
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


class RefMlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class RefBlock(nn.Module):
    def __init__(self, dim, res, heads, ws, shift, mlp_ratio):
        super().__init__()
        if min(res) <= ws:
            shift, ws = 0, min(res)
        self.res, self.ws, self.shift = res, ws, shift
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = RefAttention(dim, ws, heads)
        self.mlp = RefMlp(dim, int(dim * mlp_ratio))
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


def ref_resi(dim, kind):
    if kind == "1conv":
        return nn.Conv2d(dim, dim, 3, 1, 1)
    return nn.Sequential(nn.Conv2d(dim, dim // 4, 3, 1, 1), nn.LeakyReLU(0.2), nn.Conv2d(dim // 4, dim // 4, 1),
                         nn.LeakyReLU(0.2), nn.Conv2d(dim // 4, dim, 3, 1, 1))


class RefRSTB(nn.Module):
    def __init__(self, dim, res, depth, heads, ws, mlp_ratio, resi):
        super().__init__()
        self.residual_group = nn.Module()
        self.residual_group.blocks = nn.ModuleList(
            [RefBlock(dim, res, heads, ws, 0 if i % 2 == 0 else ws // 2, mlp_ratio) for i in range(depth)])
        self.conv = ref_resi(dim, resi)

    def forward(self, x, size):
        y = x
        for block in self.residual_group.blocks:
            y = block(y, size)
        b, _, c = x.shape
        y = self.conv(y.transpose(1, 2).view(b, c, *size))
        return y.flatten(2).transpose(1, 2) + x


class RefSwinIR(nn.Module):
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
        self.layers = nn.ModuleList([RefRSTB(embed_dim, res, d, h, window_size, mlp_ratio, resi_connection)
                                     for d, h in zip(depths, num_heads)])
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = ref_resi(embed_dim, resi_connection)
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


# ---------------------------------------------------------------------------------------------------

CONFIGS = [
    # (kwargs, input size): every upsampler; sizes off the window; a 3conv/gray/255 JPEG-style model.
    (dict(upsampler="", upscale=1), (13, 18)),
    (dict(upsampler="", upscale=1, in_chans=1, img_range=255.0, resi_connection="3conv", window_size=3,
          img_size=12), (10, 12)),
    (dict(upsampler="pixelshuffle", upscale=2), (8, 12)),
    (dict(upsampler="pixelshuffle", upscale=3), (8, 8)),
    (dict(upsampler="pixelshuffledirect", upscale=2), (9, 8)),
    (dict(upsampler="nearest+conv", upscale=4), (8, 8)),
    (dict(upsampler="", upscale=1, ape=True), (16, 16)),
]


def pair(kwargs, img_size=16, seed=0):
    """(zoo SwinIR, official-style SwinIR) in float64 with the same random weights."""
    config = dict(img_size=img_size, embed_dim=12, depths=(2, 2), num_heads=(2, 3), window_size=4, mlp_ratio=2.0)
    config.update(kwargs)
    torch.manual_seed(seed)
    net = SwinIR(drop_path_rate=0.0, **config).double().eval()
    with torch.no_grad():  # large, varied weights: logits of tens, where -100 and exact exclusion differ
        for name, p in net.named_parameters():
            p.copy_(torch.randn_like(p) * (0.5 if "bias" in name else 0.6))
    ref = RefSwinIR(**config).double().eval()
    ref.load_state_dict(net.state_dict(), strict=True)
    return net, ref


@pytest.mark.parametrize("kwargs, size", CONFIGS, ids=lambda v: str(v))
def test_matches_official_style(kwargs, size):
    net, ref = pair(kwargs)
    channels = kwargs.get("in_chans", 3)
    x = torch.rand(2, channels, *size, dtype=torch.float64)
    with torch.no_grad():
        out, expected = net(x), ref(x)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9 * kwargs.get("img_range", 1.0))


def test_single_window_input_keeps_the_shift():
    """Built for 16 x 16, a 4 x 4 input is one window: the official blocks still shift and mask it."""
    net, ref = pair(dict(upsampler="", upscale=1))
    x = torch.rand(1, 3, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(net(x), ref(x), rtol=1e-9, atol=1e-9)


def test_small_img_size_drops_the_shift():
    net, ref = pair(dict(upsampler="", upscale=1), img_size=4)
    assert all(b.shift_size == 0 for layer in net.layers for b in layer.residual_group.blocks)
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(net(x), ref(x), rtol=1e-9, atol=1e-9)


def test_strict_loading_both_ways_and_load_official(tmp_path):
    net, ref = pair(dict(upsampler="", upscale=1))
    official = ref.state_dict()
    assert set(net.state_dict()) == set(official)  # attn_mask and relative_position_index written on save
    for key, value in net.state_dict().items():
        assert torch.equal(value, official[key]), key
    fresh = SwinIR(img_size=16, embed_dim=12, depths=(2, 2), num_heads=(2, 3), window_size=4, mlp_ratio=2.0,
                   upscale=1).double()
    for wrapped in ({"params": official}, {"params_ema": official, "params": {}}, official):
        torch.save(wrapped, tmp_path / "ckpt.pth")
        load_official(fresh, tmp_path / "ckpt.pth")
        x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
        with torch.no_grad():
            torch.testing.assert_close(fresh.eval()(x), ref(x), rtol=1e-9, atol=1e-9)
    # A checkpoint trained at another img_size (its mask has more windows) still loads.
    other = RefSwinIR(img_size=32, embed_dim=12, depths=(2, 2), num_heads=(2, 3), window_size=4, mlp_ratio=2.0,
                      upscale=1)
    load_official(fresh, other.state_dict())
    bad = dict(official)
    bad["layers.0.residual_group.blocks.1.attn_mask"] = torch.zeros_like(bad["layers.0.residual_group.blocks.1.attn_mask"])
    with pytest.raises(ValueError, match="attn_mask"):
        load_official(fresh, bad)
    with pytest.raises(ValueError, match="relative_position_index"):
        load_official(fresh, dict(official, **{"layers.0.residual_group.blocks.0.attn.relative_position_index":
                                               torch.zeros(16, 16, dtype=torch.long)}))
    with pytest.raises(RuntimeError, match="Missing key"):
        load_official(fresh, {k: v for k, v in official.items() if "conv_last" not in k})


def test_tiles_average_overlaps_and_refuses_what_will_not_fit():
    net, _ = pair(dict(upsampler="", upscale=1))
    net = net.float()
    x = torch.rand(1, 3, 8, 16)
    with torch.no_grad():
        tiled = net(x, tile=8, tile_overlap=4)  # tiles at columns 0, 4, 8
        first, second = net(x[..., 0:8]), net(x[..., 4:12])
        torch.testing.assert_close(tiled[..., :4], first[..., :4])  # one tile only
        torch.testing.assert_close(tiled[..., 4:8], (first[..., 4:] + second[..., :4]) / 2)
        square = x[..., :8]  # a tile larger than the image shrinks to it: one tile, the untiled result
        torch.testing.assert_close(net(square, tile=64), net(square))
    with pytest.raises(ValueError, match=r"pass tile=\d+"):
        net(x, max_memory=2**14)
    with pytest.raises(ValueError, match="tile must be a multiple of window_size = 4"):
        net(x, tile=6, tile_overlap=2)
    with pytest.raises(ValueError, match="tile_overlap an int in"):
        net(x, tile=16, tile_overlap=16)


def test_full_size_counts_on_meta():
    with torch.device("meta"):
        net = create("swinir", img_size=128, window_size=8, depths=[6] * 6, embed_dim=180, num_heads=[6] * 6,
                     mlp_ratio=2, upsampler="", upscale=1)
    tables = sum(p.numel() for n, p in net.named_parameters() if "relative_position_bias_table" in n)
    assert sum(p.numel() for p in net.parameters()) == 11_504_163
    assert tables == 48_600


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(upsampler="bicubic"), "upsampler must be one of"),
        (dict(resi_connection="2conv"), "resi_connection must be one of"),
        (dict(depths=(2, 2), num_heads=(2,)), "depths and num_heads"),
        (dict(embed_dim=10, num_heads=(3,), depths=(2,)), "multiple of every num_heads"),
        (dict(upsampler="nearest+conv", upscale=2), "supports upscale = 4 only"),
        (dict(upsampler="pixelshuffle", upscale=5), "power of 2 or 3"),
        (dict(attn_drop_rate=0.1), "attn_drop_rate must be 0"),
    ],
)
def test_bad_config(kwargs, message):
    config = dict(img_size=16, embed_dim=12, depths=(2,), num_heads=(2,), window_size=4)
    config.update(kwargs)
    with pytest.raises(ValueError, match=message):
        SwinIR(**config)


def test_bad_input():
    net = SwinIR(img_size=16, embed_dim=12, depths=(2,), num_heads=(2,), window_size=4, upscale=1)
    with pytest.raises(ArgumentError, match=r"x must be \[B, 3, H, W\] \(an image batch\); got \[1, 1, 8, 8\]"):
        net(torch.rand(1, 1, 8, 8))
    with pytest.raises(ArgumentError, match=r"image batch"):
        net(torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="params"):
        swinir.load_official(net, [1, 2])
