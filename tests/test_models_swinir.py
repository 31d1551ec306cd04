"""The zoo's SwinIR against the independent official-style SwinIR (flexops.models.swinir_reference:
roll, window partition copies, additive -100 mask, softmax, reverse, per-block PatchEmbed/UnEmbed on
[B, L, C] tokens), in float64 for every upsampler and window/shift case; strict loading both ways;
load_official; tiling; errors."""

import pytest
import torch

from flexops.models import create, swinir
from flexops.models.swinir import SwinIR, load_official
from flexops.models.swinir_reference import ReferenceSwinIR
from flexops.ops import ArgumentError

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
    ref = ReferenceSwinIR(**config).double().eval()
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
    other = ReferenceSwinIR(img_size=32, embed_dim=12, depths=(2, 2), num_heads=(2, 3), window_size=4, mlp_ratio=2.0,
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
