"""Tunable SwinIR (mindediting `TunableSwinIR`, the zoo's tunable.md 3.2) on the zoo's SwinIR.

The zoo's SwinIR (`flexops.models.swinir`, official names and outputs) with every convolution and
linear layer (conv_first, each block's attn.qkv, attn.proj, mlp.fc1, mlp.fc2, each RSTB's conv,
conv_after_body, the upsampler's convolutions, conv_last) and every block's relative position bias
table tunable; the LayerNorms (and the absolute position embedding, when ape=True) are not. With
per-sample omega each image blends its own bias table, and the fused window attention takes the
gathered biases as one [B, heads, N, N] tensor. `bake(omega)` returns a plain zoo SwinIR, so a
baked network loads into (and saves from) the official code.

The zoo's SwinIR keeps the official constructor, so it is not built from `Layers`: TunableSwinIR
builds it and swaps its layers for tunable ones of the same hyper-parameters. SwinIR's code already
calls every layer as `run_layer(layer, x, alphas)` and reads every bias table as `value(table,
alphas)`, so SwinIR's own `run(x, alphas)` runs the tunable network, the `Alphas` of omega going from
`TunableNetwork.forward` through `run`, each RSTB and Swin block to the layers (see
`flexops.models.swinir.SwinTransformerBlock`).

>>> net = TunableSwinIR()                  # colour denoising SwinIR-M: 22,982,820 parameters, 189 tunable layers
>>> y = net(torch.rand(2, 3, 64, 64), torch.tensor([[1.0, 0.0], [0.3, 0.7]]))   # one omega per image
>>> tuned = TunableSwinIR.from_swinir(trained_swinir, 2)   # any omega on the simplex gives trained_swinir
"""

import functools

import torch
from torch import nn

from flexops.models.registry import register
from flexops.models.swinir import SwinIR
from flexops.models.tunable.core import TUNABLE, Layers, TunableNetwork, copy_unsaved_buffers
from flexops.nn.tunable import TunableConv2d, TunableParameter
from flexops.nn.window_attention import WindowAttention

# SwinIR-M for colour denoising (Table 2a; official 005_colorDN_DFWB_s128w8_SwinIR-M).
COLOR_DN = dict(img_size=128, window_size=8, depths=[6] * 6, embed_dim=180, num_heads=[6] * 6, mlp_ratio=2,
                upsampler="", resi_connection="1conv", upscale=1)


def _make_tunable(network, layers):
    """Replaces every nn.Conv2d and nn.Linear of `network` by a tunable layer of the same
    hyper-parameters, and every WindowAttention's bias table by a TunableParameter. Each of the p
    kernels is initialised as the official SwinIR initialises its one (convolutions: PyTorch's
    default; linears: truncated normal, std 0.02, biases 0; bias tables: truncated normal, std 0.02)."""
    trunc_normal = functools.partial(nn.init.trunc_normal_, std=0.02)
    for parent in list(network.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                setattr(parent, name, TunableConv2d(
                    child.in_channels, child.out_channels, child.kernel_size, layers.num_params, stride=child.stride,
                    padding=child.padding, dilation=child.dilation, groups=child.groups, bias=child.bias is not None,
                    mode=layers.mode))
            elif isinstance(child, nn.Linear):
                linear = layers.linear(child.in_features, child.out_features, bias=child.bias is not None)
                trunc_normal(linear.weight)
                if linear.bias is not None:
                    nn.init.zeros_(linear.bias)
                setattr(parent, name, linear)
        if isinstance(parent, WindowAttention):
            shape = tuple(parent.relative_position_bias_table.shape)
            del parent.relative_position_bias_table
            parent.relative_position_bias_table = layers.param(shape, init=trunc_normal)


@register("tunable_swinir")
class TunableSwinIR(TunableNetwork, SwinIR):
    """Tunable SwinIR: convolutions, linears and bias tables tunable, LayerNorms not. forward(x, omega).

    Args:
        num_params: p, the length of omega (2 in the paper's experiments).
        mode: "mlp" (alpha = Linear(p, p)(omega) per layer, the paper's) or "linear" (alpha = omega).
        **swinir_kwargs: `flexops.models.swinir.SwinIR`'s arguments; the defaults are the colour
            denoising SwinIR-M (`COLOR_DN`), any of them overrides (e.g. the x4 SR SwinIR-M:
            upscale=4, img_size=48, upsampler="pixelshuffle", in SwinIR's own defaults otherwise).

    forward(x [B, in_chans, H, W], omega [p] or [B, p]) -> [B, in_chans, H * s, W * s] (s = upscale,
    1 for denoising); any H, W (reflect-padded to the window, cropped back, as SwinIR).
    22,982,820 parameters at the defaults and p = 2 (11,504,163 for the plain SwinIR), 189 tunable layers.

    >>> net = TunableSwinIR.from_swinir(trained_swinir, num_params=2)   # any omega reproduces it
    >>> y = net(noisy, torch.tensor([0.2, 0.8]))
    """

    def __init__(self, num_params=2, mode="mlp", **swinir_kwargs):
        layers = Layers(num_params, mode)
        super().__init__(**{**COLOR_DN, **swinir_kwargs})
        _make_tunable(self, layers)
        self._collect_tunable(num_params, mode)

    def plain(self):
        """A fresh zoo SwinIR of the same settings."""
        return SwinIR(**self.config)

    @classmethod
    def from_swinir(cls, swinir, num_params=2):
        """The tunable SwinIR (mode "linear") whose p kernels of every tunable tensor are all the
        trained `swinir`'s: any omega on the simplex (sum 1) gives swinir's outputs, and fine-tuning
        with the parametric multi-loss starts from it. On swinir's device and dtype, in its mode."""
        if not isinstance(swinir, SwinIR) or isinstance(swinir, TunableNetwork):
            raise ValueError(f"swinir must be a flexops.models.swinir.SwinIR, got {type(swinir).__name__}")
        with torch.device("meta"):
            net = cls(num_params, "linear", **swinir.config)
        state = swinir.state_dict()
        for name, module in net.named_modules():
            if isinstance(module, TunableParameter):
                keys = {f"{name}.weight": name}
            elif isinstance(module, TUNABLE):
                keys = {f"{name}.{t}": f"{name}.{t}" for t in ("weight", "bias") if getattr(module, t) is not None}
            else:
                continue
            for key, plain_key in keys.items():
                tensor = state.pop(plain_key)
                state[key] = tensor.expand(num_params, *tensor.shape).clone()
        copy_unsaved_buffers(net, swinir)
        net.load_state_dict(state, assign=True)
        return net.train(swinir.training)
